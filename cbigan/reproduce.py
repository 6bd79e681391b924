"""Reproduce the paper's comparison: ``python -m cbigan.reproduce --data-dir DIR --categories ...``.

Trains and evaluates CBiGAN (the paper's alpha), EGBAD (alpha 0) and the double autoencoder (alpha 1)
on each category, then writes Tables II/III with the published rows beside ours (``results/`` by
default). Defaults are the paper's setting on the full MVTec AD (all 15 categories, the authors'
1,200,000 steps: a GPU job). ``--budget-minutes`` splits a wall-clock budget evenly over the runs
instead, for CPU users (with ``--preset fast``); ``--steps`` sets a step count. Runs are named
``reproduce-<preset>-<method>`` so the same command resumes what an interrupted one left.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from cbigan.core.config import Config, resolve_config

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
        out.append(resolve_config(cfg))
    return out


def reproduce(categories, methods, base: Config, *, steps: int | None = None,
              budget_minutes: float | None = None, results_dir: str | Path = "results",
              verbose: int = 1) -> list[str]:
    """Train and evaluate every run of :func:`plan` (into ``base.output_dir``), then write Tables II/III
    of all runs there to ``results_dir``. A run whose data cannot be read is reported and skipped;
    returns those runs as ``category/run_name``."""
    from cbigan.data.pipeline import DataError
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.reporting.tables import write_tables
    from cbigan.training.run import train

    failed = []
    for cfg in plan(categories, methods, steps, budget_minutes, base):
        t = time.monotonic()
        print(f"== {cfg.category} alpha={cfg.alpha:g} ({cfg.run_name})", flush=True)
        try:
            run = train(cfg, verbose=verbose)
            evaluate_run(run)
        except DataError as e:
            print(f"error: {cfg.category}/{cfg.run_name}: {e}", file=sys.stderr)
            failed.append(f"{cfg.category}/{cfg.run_name}")
            continue
        print(f"   {cfg.category}/{cfg.run_name}: {(time.monotonic() - t) / 60:.1f} min", flush=True)
    write_tables([Path(base.output_dir)], results_dir)
    return failed


if __name__ == "__main__":  # python -m cbigan.reproduce ...: run the command line, cbigan/cli/reproduce.py
    import runpy  # by name, not an import: the library does not depend on its command line

    runpy.run_module("cbigan.cli.reproduce", run_name="__main__", alter_sys=True)
