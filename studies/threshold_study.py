"""Threshold study (issue 34, item 4): the verdict at the calibrated threshold (the 99th percentile of the
held-out normal images' scores) against a label-free alternative, the threshold that best separates the
held-out images from synthetic-defect copies of them (:func:`balanced_threshold`).

    python studies/threshold_study.py RUN_DIR [RUN_DIR ...] --results results/threshold

Each run folder (evaluated: ``scores.csv`` holds its test scores by its own rule) is calibrated again on
its held-out images (the same seeded split, the same model; nothing is written to the run) with the
synthetic copies scored; no test label chooses anything. Writes ``runs.csv``: one row per run with, for
the run's own rule, each threshold and its recall (defective test images flagged) and false-alarm rate
(``test/good`` images flagged), and the same at the 95th percentile (the trade a user can make with
``--threshold-percentile``). A run already in ``runs.csv`` is skipped, so the study resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def verdict(scores: pd.DataFrame, threshold: float | None) -> tuple[float | None, float | None]:
    """(recall, false-alarm rate) of ``score > threshold`` on the test scores."""
    if threshold is None:
        return None, None
    flagged = scores["score"].to_numpy() > threshold
    bad = scores["label"].to_numpy() == 1
    return round(float(flagged[bad].mean()), 4), round(float(flagged[~bad].mean()), 4)


def balanced_threshold(clean, defective) -> float | None:
    """The threshold maximizing (share of ``clean`` at or below it + share of ``defective`` above it) / 2,
    among the scores themselves; of equal ones the highest. None when either is empty."""
    c, d = np.sort(np.asarray(clean, np.float64)), np.sort(np.asarray(defective, np.float64))
    if not len(c) or not len(d):
        return None
    candidates = np.unique(np.concatenate([c, d]))
    balanced = (np.searchsorted(c, candidates, side="right") / len(c)
                + 1.0 - np.searchsorted(d, candidates, side="right") / len(d))
    return float(candidates[np.flatnonzero(balanced == balanced.max())[-1]])


def synthetic_threshold(model, cfg, info: dict, val_images, regions) -> float | None:
    """:func:`balanced_threshold` of the run's rule between the held-out images and their synthetic-defect
    copies (:func:`cbigan.scoring.threshold.synthetic_results`, as the calibration makes them)."""
    from cbigan.scoring.localization import Localizer, map_settings
    from cbigan.scoring.threshold import synthetic_results

    sigma, stride = map_settings(cfg)
    clean = Localizer(model, cfg, sigma=sigma, stride=stride).run(val_images, progress=False, regions=regions)
    clean = replace(clean, regions=regions, global_weight=info.get("global_weight", 1.0), fusion=info.get("fusion"))
    bad = synthetic_results(model, cfg, clean, val_images)
    if bad is None:
        return None
    score = lambda r: r.image_scores(cfg.score_lambda, cfg.image_score, cfg.score_topk, margin=cfg.score_margin)
    return balanced_threshold(score(clean), score(bad))


def run_row(run_dir: Path) -> dict:
    from cbigan.core.runfolder import read_config
    from cbigan.data.pipeline import load_train_set
    from cbigan.model.gan import load_trained
    from cbigan.scoring.threshold import calibrate_threshold

    cfg = read_config(run_dir)
    _, model = load_trained(run_dir)
    train = load_train_set(cfg)
    info = calibrate_threshold(model, cfg, train.val_images, progress=False, n_images=train.n_images,
                               regions=train.val_regions, synthetic=False)
    scores = pd.read_csv(run_dir / "scores.csv")
    own = cfg.image_score
    regions = None if train.val_regions is None else np.asarray(train.val_regions, np.int32).reshape(-1, 2)
    synthetic = synthetic_threshold(model, cfg, info, np.asarray(train.val_images), regions)
    summary = json.loads((run_dir / "summary.json").read_text())
    p95 = calibrate_threshold(model, replace(cfg, threshold_percentile=95.0), train.val_images, progress=False,
                              n_images=train.n_images, regions=train.val_regions, synthetic=False)["threshold"]
    row = {"category": cfg.category, "seed": cfg.seed, "run": str(run_dir), "steps": summary["steps"],
           "rule": own, "n_val": info["n_val"], "n_test": len(scores),
           "threshold_p99": info["threshold"], "threshold_p95": p95, "threshold_synthetic": synthetic}
    for name in ("p99", "p95", "synthetic"):
        row[f"recall_{name}"], row[f"false_alarms_{name}"] = verdict(scores, row[f"threshold_{name}"])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--results", type=Path, default=Path("results/threshold"))
    args = p.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "runs.csv"
    done = set(pd.read_csv(out)["run"]) if out.is_file() else set()
    for run in args.runs:
        if str(run) in done:
            continue
        row = run_row(run)
        print(row, flush=True)
        pd.DataFrame([row]).to_csv(out, mode="a", header=not out.is_file(), index=False)
    runs = pd.read_csv(out)
    print(runs.groupby("category")[[f"{m}_{t}" for t in ("p99", "p95", "synthetic")
                                    for m in ("recall", "false_alarms")]].median().round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
