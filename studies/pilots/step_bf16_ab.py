"""Pilot: our train step in float32 vs ``--precision mixed_bfloat16``, side by side in one process.

    for s in 64 128; do TF_CPP_MIN_LOG_LEVEL=3 python studies/pilots/step_bf16_ab.py $s; done

Both are :class:`cbigan.bench.train.StepTimer` (the compiled ``train_function`` of the paper preset,
batch 32, timed per step), one intra-op thread (``INTRA`` to change it), 5 alternations of 4 d_iter
cycles each; prints img/s per alternation and the median of the per-alternation ratios bf16 / float32.
Result: results/benchmarks.md ("bfloat16 in our step"), log results/benchmark_logs/step_bf16_ab.txt.
"""
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("INTRA", "1")))
    from cbigan.bench.train import StepTimer

    size = int(sys.argv[1])
    a, b = StepTimer(size, 32), StepTimer(size, 32, precision="mixed_bfloat16")
    ra, rb = [], []
    for _ in range(5):
        ra.append(a.images_per_second(4))
        rb.append(b.images_per_second(4))
    print(json.dumps({"size": size, "float32": [round(v) for v in ra], "bf16": [round(v) for v in rb],
                      "ratio_median": round(statistics.median(y / x for x, y in zip(ra, rb)), 3)}))


if __name__ == "__main__":
    main()
