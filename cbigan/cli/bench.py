"""``python -m cbigan.bench {train,ops,loop,score,serve,metrics} [options]``: the benchmarks (:mod:`cbigan.bench`).

The benchmark modules are imported only for the one that runs (``train``, ``score`` and ``serve``
import TensorFlow).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cbigan.bench import BENCHMARKS
from cbigan.core.config import PRECISIONS
from cbigan.cli import parser as new_parser


def _csv(cast):
    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m cbigan.bench",
                        "Benchmarks (not tests): each measures side by side in one process and prints its "
                        "figures.", epilog="Figures measured on the development machine: results/benchmarks.md")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")

    def add(name: str, text: str):
        return sub.add_parser(name, help=text, description=text, formatter_class=parser.formatter_class,
                              prog=f"python -m cbigan.bench {name}")

    p = add("train", "training throughput: our compiled train step (timed per step on one long-lived "
                     "iterator, median of repeats) vs the yardstick ../shared/bench/reference_step.py (the "
                     "original's step structure) in the same process, per thread setting and input size")
    p.add_argument("--batch-size", type=int, default=32, help="batch per step")
    p.add_argument("--cycles", type=int, default=6, help="timed d_iter cycles (6 steps each) per measurement")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds: each thread setting once per round, in turn (median kept)")
    p.add_argument("--sizes", type=_csv(int), default="64,128", metavar="S,S", help="input sides in pixels")
    p.add_argument("--threads", type=_csv(int), default="0,1", metavar="N,N",
                   help="intra-op thread counts, each in its own process (0: TensorFlow's default)")
    p.add_argument("--previous", action="store_true",
                   help="also time the step before the gradient penalty got its own critic call (one call "
                        "on real, fake and interpolated pairs together)")
    p.add_argument("--reference", default=None,
                   help="the yardstick script (default: ../shared/bench/reference_step.py beside the "
                        "repository; skipped when missing)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="our step's training precision, as train.py's flag (the yardstick stays float32)")

    p = add("ops", "where the train step's time goes: kernel time per op type of our step and of the "
                   "yardstick (TensorFlow's profiler, same process, same thread settings)")
    p.add_argument("--size", type=int, default=64, help="input side in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="batch per step")
    p.add_argument("--steps", type=int, default=12, help="profiled steps (whole d_iter cycles of 6)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0: TensorFlow's default)")
    p.add_argument("--top", type=int, default=25, help="op types listed (the most time first)")
    p.add_argument("--reference", default=None,
                   help="the yardstick script (default: ../shared/bench/reference_step.py beside the "
                        "repository; skipped when missing)")

    p = add("loop", "share of a real training run's wall time spent outside the train step (fast preset, "
                    "real data): tracing, input pipeline, evaluation and selection, backups, previews, logs")
    p.add_argument("--data", default=None,
                   help="MVTec-layout folder (default: ../shared/data/mvtec_ad beside the repository)")
    p.add_argument("--categories", type=_csv(str), default="bottle", metavar="C,C", help="categories to run")
    p.add_argument("--steps", type=int, default=300, help="train steps per run")
    p.add_argument("--preset", default="fast", help="training preset")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="TensorFlow intra-op threads, as train.py's flag (0: every core; default: "
                        "train.py's measured choice by input size and cores)")

    p = add("score", "test-time scoring: batched (Scorer) vs a per-patch loop like the original's")
    p.add_argument("--texture-images", type=int, default=4, help="512x512 texture images scored batched")
    p.add_argument("--texture-loop-images", type=int, default=1, help="of which scored by the per-patch loop")
    p.add_argument("--object-images", type=int, default=16, help="128x128 object images scored batched")
    p.add_argument("--object-loop-images", type=int, default=8, help="of which scored one per call")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is kept)")

    p = add("serve", "images/s of the exported SavedModel vs the in-process Python path")
    p.add_argument("--batches", type=_csv(int), default="1,32", metavar="B,B", help="comma-separated batch sizes")
    p.add_argument("--kinds", type=_csv(str), default="object64,object128,texture512", metavar="M,M",
                   help="models: object64, object128, texture512, tiles_strip (500x1250 on 1024 px), tiles640 "
                        "(640x480; tiles batches at most 4) (object / texture / tiles: all of that kind)")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per figure")
    p.add_argument("--min-calls", type=int, default=2, help="minimum timed calls per figure")

    p = add("metrics", "pixel-metric (pixel auROC, AUPRO) computation time on synthetic maps")
    p.add_argument("--maps", dest="n_maps", type=int, default=100, metavar="N", help="number of anomaly maps")
    p.add_argument("--size", type=int, default=256, help="side of every map in pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the slower scikit-learn / MVTec-recipe timings (default: off; they are timed)")
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("verbose", None)  # read by cbigan.cli.quiet_tensorflow
    module = importlib.import_module(f"cbigan.bench.{args.pop('benchmark')}")
    return int(module.run(**args) or 0)


if __name__ == "__main__":
    sys.exit(main())
