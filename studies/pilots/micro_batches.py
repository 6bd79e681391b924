"""Pilot (not a feature): the step's losses on two independent half batches (their mean: the same loss
values), so that TensorFlow's inter-op pool could run the halves on the two cores at once.

    for s in 64 128; do for i in 1 0; do INTRA=$i K=2 TF_CPP_MIN_LOG_LEVEL=3 \\
        python studies/pilots/micro_batches.py $s; done; done

Times the unsplit and the split step (:class:`cbigan.bench.train.StepTimer`, paper preset, batch 32)
and the yardstick in one process, 3 alternations of 4 d_iter cycles; ``INTRA``: intra-op threads (0:
TensorFlow's default). Result: results/benchmarks.md ("Two half batches"), log
results/benchmark_logs/micro_batches.txt.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    import tensorflow as tf

    intra = int(os.environ.get("INTRA", "1"))
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    from cbigan.bench.train import REFERENCE_STEP, StepTimer, _load_reference, reference_images_per_second
    from cbigan.model import CBiGAN

    k = int(os.environ.get("K", "2"))

    def mean_parts(parts):
        return {name: tf.add_n([p[name] for p in parts]) / len(parts) for name in parts[0]}

    critic_losses, eg_losses = CBiGAN.critic_losses, CBiGAN.eg_losses

    def split_critic(self, x, z, eps):
        return mean_parts([critic_losses(self, *t) for t in zip(tf.split(x, k), tf.split(z, k), tf.split(eps, k))])

    def split_eg(self, x, z):
        return mean_parts([eg_losses(self, *t) for t in zip(tf.split(x, k), tf.split(z, k))])

    size = int(sys.argv[1])
    plain = StepTimer(size, 32)
    CBiGAN.critic_losses, CBiGAN.eg_losses = split_critic, split_eg
    try:
        split = StepTimer(size, 32)  # traced now, with the split losses
    finally:
        CBiGAN.critic_losses, CBiGAN.eg_losses = critic_losses, eg_losses
    ref = _load_reference(REFERENCE_STEP)
    rows = {"plain": [], "split": [], "yardstick": []}
    for _ in range(3):
        rows["plain"].append(plain.images_per_second(4))
        rows["split"].append(split.images_per_second(4))
        rows["yardstick"].append(reference_images_per_second(ref, size, 32, 4 * 6))
    print(json.dumps({"size": size, "intra": intra, "K": k, **{n: [round(v, 1) for v in vs] for n, vs in rows.items()}}))


if __name__ == "__main__":
    main()
