"""Pilot (not a feature): other rules for the calibrated threshold on the same held-out scores.

    python studies/pilots/threshold_rules.py RUN [RUN ...] --out results/small_defects/threshold_rules.csv

Each run's held-out train/good images (the split of its own seed, never trained on) are scored again with
its model, as ``cbigan.threshold.calibrate_threshold`` does, and every rule below turns those scores into
a threshold; the run's test scores (``scores.csv``) then give the false-alarm rate (normal test images
above it), the recall (defective ones above it) and their balanced accuracy. Test labels only judge the
rules, never set them. Result: results/small_defects/README.md (ninth study).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.data import load_train_set  # noqa: E402
from cbigan.localization import ImageScorer  # noqa: E402
from cbigan.model import load_trained  # noqa: E402

Z99 = 2.326  # one-sided 99% quantile of the standard normal


def rules(v: np.ndarray) -> dict:
    lv = np.log(v)
    med, lmed = np.median(v), np.median(lv)
    return {"99th percentile (now)": np.percentile(v, 99), "95th percentile": np.percentile(v, 95),
            "log-normal fit, 99%": np.exp(lv.mean() + Z99 * lv.std(ddof=1)),
            "robust log-normal (median, MAD), 99%": np.exp(lmed + Z99 * 1.4826 * np.median(np.abs(lv - lmed))),
            "median + 3 MAD": med + 3 * 1.4826 * np.median(np.abs(v - med))}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    for run in args.runs:
        cfg, model = load_trained(run)
        train = load_train_set(cfg)
        val = np.asarray(ImageScorer(model, cfg)(train.val_images, progress=False, regions=train.val_regions),
                         float)
        scores = pd.read_csv(Path(run) / "scores.csv")
        good, bad = scores[scores.label == 0].score.to_numpy(), scores[scores.label == 1].score.to_numpy()
        for name, t in rules(val).items():
            fa, recall = float((good > t).mean()), float((bad > t).mean())
            rows.append({"run": f"{Path(run).parent.name}/{Path(run).name}", "n_held_out": len(val), "rule": name,
                         "threshold": round(float(t), 5), "false_alarms": round(fa, 3), "recall": round(recall, 3),
                         "balanced_accuracy": round((1 - fa + recall) / 2, 3)})
            print("\t".join(str(v) for v in rows[-1].values()), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    summary = table.groupby("rule")[["false_alarms", "recall", "balanced_accuracy"]].median()
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
