"""Reproduce the paper's comparison: ``python -m cbigan.reproduce --data-dir DIR --categories ...``.

Trains and evaluates CBiGAN (the paper's alpha), EGBAD (alpha 0) and the double autoencoder (alpha 1)
on each category, then writes Tables II/III with the published rows beside ours (``results/`` by
default). Defaults are the paper's setting on the full MVTec AD (all 15 categories, the authors'
1,200,000 steps: a GPU job). ``--budget-minutes`` splits a wall-clock budget evenly over the runs
instead, for CPU users (with ``--preset fast``); ``--steps`` sets a step count. Runs are named
``reproduce-<preset>-<method>`` so the same command resumes what an interrupted one left.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .config import CATEGORIES, PRESETS, Config, apply_preset

METHODS = {"cbigan": None, "egbad": 0.0, "autoencoder": 1.0}  # None: the paper's alpha (Config default)


def plan(categories, methods, steps: int | None, budget_minutes: float | None, base: Config) -> list[Config]:
    """One Config per (category, method); a budget is split evenly over the runs."""
    runs = [(c, m) for c in categories for m in methods]
    minutes = budget_minutes / len(runs) if budget_minutes else None
    out = []
    for category, method in runs:
        alpha = METHODS[method]
        cfg = dataclasses.replace(base, category=category, run_name=f"reproduce-{base.preset}-{method}",
                                  alpha=base.alpha if alpha is None else alpha, minutes=minutes,
                                  steps=steps if steps else (10**9 if minutes else base.steps))
        out.append(cfg.resolved())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbigan.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=Config.data_dir)
    p.add_argument("--categories", default="all", help="comma-separated, or 'all' (the 15 MVTec AD ones)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: the authors' 1,200,000)")
    p.add_argument("--budget-minutes", type=float, default=None, help="total wall-clock budget, split evenly")
    p.add_argument("--output-dir", default="runs/reproduce")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="training preset of every run ('fast' for CPU budgets; EGBAD / autoencoder keep "
                        "its settings with alpha 0 / 1)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    categories = list(CATEGORIES) if args.categories == "all" else args.categories.split(",")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2

    from .data import DataError
    from .evaluation import evaluate_run
    from .tables import write_tables
    from .training import train

    base = apply_preset(Config(data_dir=args.data_dir, output_dir=args.output_dir, seed=args.seed), args.preset)
    failed = []
    for cfg in plan(categories, methods, args.steps, args.budget_minutes, base):
        t = time.monotonic()
        print(f"== {cfg.category} alpha={cfg.alpha:g} ({cfg.run_name})", flush=True)
        try:
            run = train(cfg, verbose=0 if args.quiet else 1)
            evaluate_run(run)
        except DataError as e:
            print(f"error: {cfg.category}/{cfg.run_name}: {e}", file=sys.stderr)
            failed.append(f"{cfg.category}/{cfg.run_name}")
            continue
        print(f"   {cfg.category}/{cfg.run_name}: {(time.monotonic() - t) / 60:.1f} min", flush=True)
    write_tables([Path(args.output_dir)], args.results_dir)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
