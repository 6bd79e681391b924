"""``python -m cbigan.reproduce``: the paper's comparison, CBiGAN vs EGBAD vs autoencoder (:mod:`cbigan.reproduce`)."""

from __future__ import annotations

import argparse
import sys

from cbigan.core.config import CATEGORIES, PRESETS, Config, apply_preset
from cbigan.reproduce import METHODS
from cbigan.cli import parser


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = parser("python -m cbigan.reproduce",
               "Reproduce the paper's comparison: train and evaluate CBiGAN, EGBAD (alpha 0) and the "
               "autoencoder (alpha 1) on each category, then write Tables II/III beside the published rows.")
    p.add_argument("--data-dir", default=d.data_dir, help="folder holding <category>/train/good, test/...")
    p.add_argument("--categories", default="all",
                   help=f"comma-separated, or 'all' (the {len(CATEGORIES)} MVTec AD ones)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=None,
                   help=f"steps per run (default: {d.steps}, the authors'; with --budget-minutes: until the "
                        "budget is spent)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="total wall-clock budget, split evenly over the runs (default: no time limit)")
    p.add_argument("--output-dir", default="runs/reproduce", help="runs go to OUTPUT_DIR/<category>/<run>")
    p.add_argument("--results-dir", default="results", help="where the tables are written")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every run")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS),
                   help="training preset of every run ('fast' for CPU budgets; EGBAD / autoencoder keep "
                        "its settings with alpha 0 / 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    categories = list(CATEGORIES) if args.categories == "all" else args.categories.split(",")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    from cbigan.reproduce import reproduce

    base = apply_preset(Config(data_dir=args.data_dir, output_dir=args.output_dir, seed=args.seed), args.preset)
    failed = reproduce(categories, methods, base, steps=args.steps, budget_minutes=args.budget_minutes,
                       results_dir=args.results_dir, verbose=0 if args.quiet else 1)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
