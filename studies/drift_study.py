"""Lighting drift on real test sets: trained runs scored again on their test images made darker or brighter.

    python studies/drift_study.py runs/small_defects/bottle/fast_w6-seed* runs/small_defects/bottle/fast_norm-seed* \
        --factors 0.92 1.08 --out results/small_defects/drift.csv

A lamp that ages or a camera whose exposure changes makes every image of the line a few percent darker
or brighter than the training images. Each run folder's trained model is called exactly as
``predict.py`` calls it (:class:`cbigan.serving.predict.TrainedModel`: the run's image-score rule, its
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


def served_images(model, test):
    """The test images as a user serves them: the loaded array (resized to the model's square) for
    objects and textures; for tiles each file at its own size (the loaded test set holds canvases whose
    rest is the image mirrored, which a served model would score as part of the image)."""
    if model.cfg.kind != "tiles":
        return test.images
    from cbigan.data.pipeline import load_image

    return [load_image(p) for p in test.paths]


def scores_of(model, images, batch: int) -> np.ndarray:
    """Image scores of ``images``: an array [N, H, W, 3] in batches, or a list of images one by one."""
    if not isinstance(images, np.ndarray):
        return np.array([float(np.asarray(model(im[None])["score"]).reshape(-1)[0]) for im in images])
    return np.concatenate([np.asarray(model(images[i:i + batch])["score"], np.float64).reshape(-1)
                           for i in range(0, len(images), batch)])


def rows_for(run_dir: Path, factors, batch: int) -> list[dict]:
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.metrics import auroc
    from cbigan.serving.predict import TrainedModel

    model = TrainedModel(run_dir)
    if model.threshold is None:
        raise SystemExit(f"{run_dir} has no threshold.json: evaluate or export it first")
    test = load_test_set(model.cfg, with_masks=False)
    images = served_images(model, test)
    labels = np.asarray(test.labels)
    good = labels == 0
    base = scores_of(model, images, batch)
    gap = model.threshold - np.median(base[good])
    rows = []
    for f in [1.0] + [float(v) for v in factors]:
        s = base if f == 1.0 else scores_of(
            model, drifted(images, f) if isinstance(images, np.ndarray) else [drifted(im, f) for im in images],
            batch)
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
    from cbigan.core.config import Config

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
