"""Lighting drift on real test sets: trained runs scored again on their test images made darker or brighter.

    python studies/drift_study.py runs/small_defects/bottle/fast_w6-seed* runs/small_defects/bottle/fast_norm-seed* \
        --factors 0.92 1.08 --out results/small_defects/drift.csv

A lamp that ages or a camera whose exposure changes makes every image of the line a few percent darker
or brighter than the training images. Each run folder's trained model is called exactly as
``predict.py`` calls it (:class:`cbigan.predict.TrainedModel`: the run's image-score rule, its
``--normalize`` and its calibrated ``threshold.json``) on its test set with every pixel multiplied by
a factor (rounded, clipped to 0-255), and the script writes one CSV row per run and factor:

* ``auroc``: image auROC when the whole test set has the drift (the same lighting for every image);
* ``auroc_normal_drifted``: normal test images with the drift against defective ones without it (the
  worst case: the score measures the lighting, not the defect; issue 15's 0.01);
* ``false_alarms``: share of normal test images whose score is above the run's calibrated threshold
  (factor 1: the false alarms without drift); ``recall``: share of defective images above it;
* ``score_shift``: median score of the normal images with the drift, less without it, in units of the
  threshold's distance from that median (1: the median normal image reaches the threshold).

Rows are appended as each run finishes, and runs already in ``--out`` are skipped (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def drifted(images: np.ndarray, factor: float) -> np.ndarray:
    """uint8 images [N, H, W, C] with every pixel times ``factor``, rounded and clipped to 0-255."""
    return np.clip(np.round(images.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def scores_of(model, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(model(images[i:i + batch])["score"], np.float64).reshape(-1)
                           for i in range(0, len(images), batch)])


def rows_for(run_dir: Path, factors, batch: int) -> list[dict]:
    from cbigan.data import load_test_set
    from cbigan.metrics import auroc
    from cbigan.predict import TrainedModel

    model = TrainedModel(run_dir)
    if model.threshold is None:
        raise SystemExit(f"{run_dir} has no threshold.json: evaluate or export it first")
    test = load_test_set(model.cfg)
    labels = np.asarray(test.labels)
    good = labels == 0
    base = scores_of(model, test.images, batch)
    gap = model.threshold - np.median(base[good])
    rows = []
    for f in [1.0] + [float(v) for v in factors]:
        s = base if f == 1.0 else scores_of(model, drifted(test.images, f), batch)
        rows.append({
            "category": model.cfg.category, "run": run_dir.name, "normalize": model.cfg.normalize,
            "image_score": model.cfg.image_score, "factor": f, "n_good": int(good.sum()),
            "n_defective": int((~good).sum()),
            "auroc": auroc(labels, s),
            "auroc_normal_drifted": auroc(labels, np.where(good, s, base)),
            "false_alarms": float(np.mean(s[good] > model.threshold)),
            "recall": float(np.mean(s[~good] > model.threshold)),
            "score_shift": float((np.median(s[good]) - np.median(base[good])) / gap) if gap > 0 else float("nan"),
            "threshold": float(model.threshold),
        })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained run folders (runs/<category>/<run>)")
    p.add_argument("--factors", type=float, nargs="+", default=[0.92, 1.08],
                   help="brightness factors besides 1 (0.92: 8%% darker)")
    p.add_argument("--out", type=Path, required=True, help="CSV to append rows to")
    p.add_argument("--batch", type=int, default=8, help="images per model call")
    a = p.parse_args(argv)
    from cbigan.config import Config

    done = set()
    if a.out.exists():
        old = pd.read_csv(a.out)
        done = set(zip(old["category"], old["run"]))
    for run in a.runs:
        cfg = Config.from_json(run / "config.json").resolved()
        if (cfg.category, run.name) in done:
            print(f"{run}: already in {a.out}")
            continue
        rows = pd.DataFrame(rows_for(run, a.factors, a.batch))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(a.out, mode="a", header=not a.out.exists(), index=False)
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
