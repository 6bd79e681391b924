"""Decision threshold calibrated without test labels, on held-out defect-free training images.

Rule: at the end of training, the images of ``train/good`` held out by :func:`cbigan.data.split_train_val`
(``cfg.val_split``, default 10%, chosen by ``cfg.seed`` and never trained on) are scored with the
final (EMA) model and the score ``A(x) = max over patches of (1 - lambda) L_R + lambda L_fD``. The
threshold is the ``cfg.threshold_percentile``-th percentile (default 99, linear interpolation between
order statistics, NumPy's default) of those scores. An image is **anomalous when its score is strictly
greater than the threshold**, the same rule as :func:`cbigan.metrics.at_threshold` and the exported
SavedModel's ``is_anomaly``.

With ``--val-split 0`` (every training image is trained on, as in the paper) there is nothing to
calibrate on: the threshold is ``None``, stored as JSON ``null``, and every tool says so instead of
making one up.

The result is written to ``<run>/threshold.json`` and merged into ``<run>/config.json`` under the key
``threshold`` (``Config.from_json`` then keeps it in ``cfg.extra["threshold"]``); the exported
SavedModel embeds the value in its graph and in ``assets.extra/cbigan.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .config import Config

THRESHOLD_FILE = "threshold.json"

NO_THRESHOLD_RULE = "no held-out images (--val-split 0): no calibrated threshold"


def threshold_rule(percentile: float, n_val: int, score_lambda: float) -> str:
    """The one-line description of the calibration rule stored with the threshold."""
    return (f"{percentile:g}th percentile (linear interpolation) of the image scores "
            f"(lambda {score_lambda:g}) of {n_val} held-out train/good images never trained on; "
            f"anomalous when score > threshold")


def threshold_from_scores(scores, percentile: float) -> float | None:
    """The ``percentile``-th percentile of ``scores`` (None when there are none)."""
    scores = np.asarray(scores, np.float64).ravel()
    if scores.size == 0:
        return None
    if not np.all(np.isfinite(scores)):
        raise ValueError("held-out scores contain NaN or infinity; the model diverged, "
                         "no threshold can be calibrated")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"threshold percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(scores, percentile))


def calibrate_threshold(model, cfg: Config, val_images) -> dict:
    """Score the held-out uint8 images [N, S, S, 3] (already resized) and derive the threshold.

    Returns ``{"threshold", "percentile", "score_lambda", "n_val", "rule"}`` plus a few statistics of
    the held-out scores (``val_score_min``, ``val_score_mean``, ``val_score_max``) when there are any.
    """
    cfg = cfg.resolved()
    percentile = float(cfg.threshold_percentile)
    n_val = 0 if val_images is None else int(len(val_images))
    info = {"threshold": None, "percentile": percentile, "score_lambda": float(cfg.score_lambda),
            "n_val": n_val, "rule": NO_THRESHOLD_RULE}
    if n_val == 0:
        return info
    from .scoring import Scorer

    scores = Scorer(model, cfg).score(np.asarray(val_images)).image_scores(cfg.score_lambda)
    info["threshold"] = threshold_from_scores(scores, percentile)
    info["rule"] = threshold_rule(percentile, n_val, cfg.score_lambda)
    info.update(val_score_min=float(np.min(scores)), val_score_mean=float(np.mean(scores)),
                val_score_max=float(np.max(scores)))
    return info


def _write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_threshold(run_dir: str | Path, info: dict) -> Path:
    """Write ``run_dir/threshold.json`` and merge ``info`` into ``run_dir/config.json`` (key ``threshold``).

    Both writes go through a temporary file and a rename, so a crash leaves either the old or the new
    file, never half of one.
    """
    run_dir = Path(run_dir)
    path = run_dir / THRESHOLD_FILE
    _write_json_atomic(path, info)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        data = json.loads(cfg_path.read_text())
        data["threshold"] = info
        # A config re-saved after loading carries the old value in "extra": keep one source of truth.
        if isinstance(data.get("extra"), dict):
            data["extra"].pop("threshold", None)
        _write_json_atomic(cfg_path, data)
    return path


def read_threshold(run_dir: str | Path) -> dict | None:
    """The threshold record of a run: ``threshold.json``, else the ``threshold`` key of config.json.

    Returns None when the run was never calibrated (e.g. trained before calibration existed); a run
    trained with ``--val-split 0`` returns a record whose ``threshold`` is None.
    """
    run_dir = Path(run_dir)
    path = run_dir / THRESHOLD_FILE
    if path.is_file():
        return json.loads(path.read_text())
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        data = json.loads(cfg_path.read_text())
        rec = data.get("threshold", (data.get("extra") or {}).get("threshold"))
        if isinstance(rec, dict):
            return rec
    return None


def manual_threshold(value: float, cfg: Config) -> dict:
    """A threshold given by hand (``--threshold``), recorded as such."""
    return {"threshold": float(value), "percentile": None, "score_lambda": float(cfg.score_lambda),
            "n_val": 0, "rule": f"set by hand to {float(value):g}; anomalous when score > threshold"}
