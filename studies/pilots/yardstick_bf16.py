"""Pilot (not a feature): the yardstick step under Keras's ``mixed_bfloat16`` policy.

    for i in 1 2; do for bf in 1 0; do BF16=$bf TF_NUM_INTRAOP_THREADS=1 \\
        python studies/pilots/yardstick_bf16.py --size 64 --steps 72; done; done

Runs ``../shared/bench/reference_step.py`` (the original's step structure, issue 18's yardstick) unchanged
but for two things when ``BF16=1``: the global policy ``mixed_bfloat16`` (bfloat16 convolutions on a CPU
with AVX512_BF16, float32 variables) and float32 output layers (the tanh image, the code, the critic's
score), so the losses are float32 as in the original. Prints the yardstick's JSON line with ``bf16``
added. Result: results/benchmarks.md ("bfloat16").
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.bench.train import REFERENCE_STEP as YARDSTICK  # noqa: E402  (the bench's own yardstick path)


def main():
    src = YARDSTICK.read_text()
    bf16 = os.environ.get("BF16", "0") == "1"
    if bf16:
        for old, new in [("L.Conv2D(3, 1, activation='tanh')(x)", "L.Conv2D(3, 1, activation='tanh', dtype='float32')(x)"),
                         ("L.Dense(latent)(h)", "L.Dense(latent, dtype='float32')(h)"),
                         ("L.Dense(1)(h)", "L.Dense(1, dtype='float32')(h)")]:
            if old not in src:
                raise SystemExit(f"{YARDSTICK} changed: {old!r} not found")
            src = src.replace(old, new)
        src = src.replace("def main():", "def main():\n    keras.mixed_precision.set_global_policy('mixed_bfloat16')", 1)
    src = src.replace("print(json.dumps({", f"print(json.dumps({{'bf16': {bf16}, ", 1)
    sys.argv[0] = str(YARDSTICK)
    exec(compile(src, str(YARDSTICK), "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
