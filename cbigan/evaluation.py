"""Test-set evaluation of a run folder: per-image scores, a lambda sweep, and the metrics files.

One scoring pass (:class:`cbigan.scoring.Scorer`, the same code that training-time evaluation and the
export use) stores, for every test image and every patch, the pixel distance ``L_R`` and the feature
distance ``L_fD``. Any lambda is then a cheap recombination,
``A = max over patches of (1 - lambda) L_R + lambda L_fD`` (objects have one patch), so a sweep costs
no further network call.

Files written into the run folder ``runs/<category>/<run>/``:

* ``scores_parts.npz``: the per-patch parts ``l_r`` and ``l_fd`` [N, P], with the test image paths,
  labels and defect types, and a fingerprint of the weights they were computed with (so a later
  evaluation can recombine them instead of rescoring);
* ``scores.csv``: one row per test image: ``path, defect_type, label, l_r, l_fd, patch, score`` at the
  chosen lambda. For textures ``l_r``/``l_fd`` are the parts **of the highest-scoring patch** at that
  lambda (``patch`` is its row-major index, 0..63); for objects they are the image's own (``patch`` 0);
* ``metrics.csv``: one row per lambda: auROC, max balanced accuracy and its threshold, F1-max and its
  threshold, auROC of every defect type against ``good``; ``chosen`` marks the lambda of ``scores.csv``;
  where a calibrated ``threshold.json`` exists, its row also holds precision, recall, F1 and balanced
  accuracy at that threshold (``thr_*`` columns);
* ``evaluation.json``: what :mod:`cbigan.tables` reads: run, category, method label, chosen lambda,
  the metrics at that lambda, whether the model was selected on the test set, and when.

Pixel-level localization (categories with a ``ground_truth`` folder): the same single pass computes the
anomaly maps of every test image (:class:`cbigan.localization.Localizer`: model resolution, ``--stride``
overlapping texture patches, Gaussian ``--sigma``), and ``metrics.csv`` gains ``pixel_auroc`` and ``aupro``
for every lambda (:mod:`cbigan.pixel_metrics`; good images count as all-normal, defective ones without a
mask are left out with a warning). The two map parts are kept in ``pixel_maps.npz`` (float32, with the
masks, sigma, stride and the weights' fingerprint) and reused like the score parts. ``pixel=False``
(``--no-pixel``) skips all of it.

This module imports TensorFlow only when it has to score (``evaluate_run``), so reading results and
building tables stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, method_name
from .metrics import MetricError, at_threshold, auroc, f1_max, max_balanced_accuracy

SCORES_CSV = "scores.csv"
METRICS_CSV = "metrics.csv"
PARTS_NPZ = "scores_parts.npz"
PIXEL_NPZ = "pixel_maps.npz"
EVALUATION_JSON = "evaluation.json"
THRESHOLD_JSON = "threshold.json"
CONFIG_JSON = "config.json"
WEIGHTS = "model.weights.h5"  # the same name as cbigan.training.WEIGHTS (kept here: no TF import)
PAPER_LAMBDA = 0.1
GOOD = "good"
MAP_SIGMA = 4.0  # = cbigan.localization.DEFAULT_SIGMA (kept here: no TF import)


class EvaluationError(RuntimeError):
    """A problem with the user's input (not a run folder, not evaluated yet...), one line long."""


# ---------------------------------------------------------------------------------- method labels
def method_label(cfg: Config, label: str | None = None, score_lambda: float = PAPER_LAMBDA,
                 select_on_test: bool = False) -> str:
    """Display name of a run's method: ``CBiGAN (paper)``, ``EGBAD (mylabel, λ=0.5)``, ...

    The variant is ``label`` when given, else the preset name. A lambda other than the paper's 0.1 and
    a model selected with test labels (``select_on_test``) are part of the name, so such rows can never
    be mistaken for the honest protocol.
    """
    parts = [label or cfg.preset]
    if not math.isclose(score_lambda, PAPER_LAMBDA):
        parts.append(f"λ={score_lambda:g}")
    name = f"{method_name(cfg.alpha)} ({', '.join(p for p in parts if p)})"
    if select_on_test:
        name += " [selected on test]"
    return name


# ---------------------------------------------------------------------------------- run folders
def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_JSON).is_file() and (path / WEIGHTS).is_file()


def check_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"{path} does not exist; pass a run folder runs/<category>/<run>")
    if not is_run_dir(path):
        raise EvaluationError(f"{path} is not a run folder (needs {CONFIG_JSON} and {WEIGHTS}); "
                              f"pass runs/<category>/<run>")
    return path


def weights_fingerprint(run_dir: Path) -> str:
    """SHA-256 of the weights and of the model's configuration: stored parts are reused only for them.

    ``extra`` (e.g. the calibrated threshold merged into ``config.json`` later) does not change scores
    and is left out.
    """
    import dataclasses

    h = hashlib.sha256()
    with open(Path(run_dir) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    try:
        cfg = dataclasses.asdict(Config.from_json(Path(run_dir) / CONFIG_JSON))
    except (ValueError, TypeError):
        cfg = {"unreadable": (Path(run_dir) / CONFIG_JSON).read_text()}
    cfg.pop("extra", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def read_threshold(run_dir: str | Path) -> dict | None:
    """The calibrated threshold of ``threshold.json``, or None when absent or null."""
    path = Path(run_dir) / THRESHOLD_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {e}; fix or delete it") from None
    if not isinstance(data, dict) or data.get("threshold") is None:
        return None
    thr = float(data["threshold"])
    if not math.isfinite(thr):
        return None
    return {"threshold": thr, "score_lambda": float(data.get("score_lambda", PAPER_LAMBDA)),
            "percentile": data.get("percentile"), "n_val": data.get("n_val"), "rule": data.get("rule")}


def selected_on_test(run_dir: Path, cfg: Config) -> bool:
    """True when the saved model was picked with test labels (``--select-on-test``)."""
    summary = Path(run_dir) / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("selected_on_test"):
                return True
        except (OSError, ValueError):
            pass
    return bool(cfg.select_on_test)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- scoring
@dataclass
class ScoredTestSet:
    """Per-patch score parts of a test set, with what identifies every row."""

    l_r: np.ndarray            # [N, P]
    l_fd: np.ndarray           # [N, P]
    paths: list                # str
    labels: np.ndarray         # [N] 0 good, 1 defective
    defect_types: list         # "good" or the defect folder name
    fingerprint: str = ""
    seconds: float = float("nan")
    pixel: "PixelMaps | None" = None   # anomaly maps and masks, when computed (not in PARTS_NPZ)

    def image_scores(self, lam: float) -> np.ndarray:
        from .scoring import combine  # the one recombination rule, shared with training-time evaluation

        return combine(self.l_r, self.l_fd, lam)

    def argmax_patch(self, lam: float) -> np.ndarray:
        return ((1.0 - lam) * np.asarray(self.l_r, np.float64)
                + lam * np.asarray(self.l_fd, np.float64)).argmax(axis=1)

    def save(self, path: Path) -> None:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, l_r=self.l_r, l_fd=self.l_fd, paths=np.array(self.paths, dtype=str),
                                    labels=self.labels, defect_types=np.array(self.defect_types, dtype=str),
                                    fingerprint=np.array(self.fingerprint), seconds=np.array(self.seconds))
        _write_atomic(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> "ScoredTestSet":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["l_r"], z["l_fd"], z["paths"].tolist(), z["labels"], z["defect_types"].tolist(),
                       str(z["fingerprint"]), float(z["seconds"]))


@dataclass
class PixelMaps:
    """The two parts of the anomaly maps of a test set (model resolution) and its ground truth."""

    map_r: np.ndarray          # [N, S, S] float32: smoothed, stitched channel mean of |x - G(E(x))|
    map_fd: np.ndarray         # [N, S, S] float32: the same of the critic-feature difference
    masks: np.ndarray          # [N, S, S] uint8 in {0, 1}
    has_mask: np.ndarray       # [N] bool: good, or defective with a mask file
    sigma: float
    stride: int
    paths: list                # str, as ScoredTestSet.paths
    fingerprint: str = ""

    def maps(self, lam: float) -> np.ndarray:
        return ((1.0 - lam) * self.map_r + lam * self.map_fd).astype(np.float32)

    def matches(self, sigma: float, stride: int) -> bool:
        return math.isclose(self.sigma, sigma) and int(self.stride) == int(stride)

    def save(self, path: Path) -> None:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, map_r=self.map_r.astype(np.float32), map_fd=self.map_fd.astype(np.float32),
                         masks=np.packbits(self.masks.astype(bool), axis=-1),
                         mask_shape=np.array(self.masks.shape), has_mask=self.has_mask.astype(bool),
                         sigma=np.array(float(self.sigma)), stride=np.array(int(self.stride)),
                         paths=np.array(self.paths, dtype=str), fingerprint=np.array(self.fingerprint))
        _write_atomic(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> "PixelMaps":
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(v) for v in z["mask_shape"])
            masks = np.unpackbits(z["masks"], axis=-1, count=shape[-1]).reshape(shape)
            return cls(z["map_r"], z["map_fd"], masks, z["has_mask"], float(z["sigma"]), int(z["stride"]),
                       z["paths"].tolist(), str(z["fingerprint"]))


def score_images(scorer, images: np.ndarray, progress: bool = True, desc: str = "scoring"):
    """Per-patch parts of many images through ``scorer.score`` in chunks, with a tqdm progress bar."""
    from tqdm import tqdm

    from .scoring import Scores

    per_call = max(1, scorer.patches_per_call // scorer.patches_per_image)
    l_r, l_fd = [], []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress or len(images) < 2,
              leave=False) as bar:
        for i in range(0, len(images), per_call):
            s = scorer.score(images[i:i + per_call])
            l_r.append(s.l_r)
            l_fd.append(s.l_fd)
            bar.update(len(s.l_r))
    if not l_r:
        ppi = scorer.patches_per_image
        return Scores(np.zeros((0, ppi)), np.zeros((0, ppi)))
    return Scores(np.concatenate(l_r), np.concatenate(l_fd))


def score_patch_loop(scorer, images: np.ndarray, images_per_call: int | None = None,
                     compiled: bool = False):
    """Reference: the original code's patch loop, for tests and the ``score`` benchmark only.

    As the authors' ``score.py`` did: for each patch position (row-major), one call of the networks on
    that patch of every image of the batch, eagerly, through :func:`cbigan.scoring.score_patches` and the
    scorer's own networks. ``images_per_call`` images form a batch (default: all; 1 gives one patch per
    call); ``compiled=True`` runs each call through one ``tf.function`` instead of eagerly, so that what
    is left of the difference to :meth:`Scorer.score` is the batching alone.
    Returns ``(l_r, l_fd)``, each [N, P] float64.
    """
    import tensorflow as tf

    from .data import to_model_range
    from .scoring import score_patches

    cfg, model = scorer.cfg, scorer.model
    p = cfg.patch_size

    def parts(x):
        out = score_patches(model.ema_encoder, model.ema_generator, scorer.features, x)
        return out["l_r"], out["l_fd"]

    if compiled:
        fn = getattr(scorer, "_patch_loop_fn", None)
        if fn is None:
            fn = scorer._patch_loop_fn = tf.function(parts, reduce_retracing=True)
    else:
        fn = parts
    n = len(images)
    step = n if not images_per_call else max(1, int(images_per_call))
    l_r, l_fd = [], []
    for i in range(0, n, step):
        x = to_model_range(images[i:i + step])
        cols = [fn(x[:, y:y + p, xx:xx + p, :])
                for y in range(0, cfg.image_size, p) for xx in range(0, cfg.image_size, p)]
        l_r.append(np.stack([c[0].numpy() for c in cols], axis=1))
        l_fd.append(np.stack([c[1].numpy() for c in cols], axis=1))
    if not l_r:
        return np.zeros((0, scorer.patches_per_image)), np.zeros((0, scorer.patches_per_image))
    return np.concatenate(l_r).astype(np.float64), np.concatenate(l_fd).astype(np.float64)


def score_test_set(run_dir: str | Path, cfg: Config | None = None, model=None, *, data_dir: str | None = None,
                   skip_bad_images: bool = False, progress: bool = True, pixel: bool = True,
                   sigma: float = MAP_SIGMA, stride: int | None = None) -> ScoredTestSet:
    """Load the run's model (EMA networks) and its test set, and score every image once.

    With ``pixel`` and a test set with ground truth, the same pass computes the anomaly maps
    (:class:`cbigan.localization.Localizer`) and ``.pixel`` holds them with the masks.
    """
    from .data import load_test_set
    from .scoring import Scorer
    from .training import load_run

    run_dir = check_run_dir(run_dir)
    if model is None:
        try:
            cfg, model = load_run(run_dir)
        except (ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise EvaluationError(f"cannot load the model of {run_dir}: {first}") from None
    cfg = Config.from_json(run_dir / CONFIG_JSON) if cfg is None else cfg.resolved()
    if data_dir is not None:
        cfg = _with_data_dir(cfg, data_dir)
    test = load_test_set(cfg, skip_bad=skip_bad_images)
    fingerprint = weights_fingerprint(run_dir)
    paths = [str(p) for p in test.paths]
    pixel_maps = None
    t0 = time.monotonic()
    if pixel and test.masks is not None:
        from .localization import Localizer

        stride = resolve_stride(cfg, stride)
        loc = Localizer(model, cfg, sigma=sigma, stride=stride)
        out = loc.run(test.images, progress=progress, desc=f"scoring + maps {cfg.category}")
        l_r, l_fd = out.l_r, out.l_fd
        pixel_maps = PixelMaps(out.map_r, out.map_fd, test.masks, np.asarray(test.has_mask, bool),
                               float(sigma), stride, paths, fingerprint)
    else:
        scores = score_images(Scorer(model, cfg), test.images, progress=progress,
                              desc=f"scoring {cfg.category}")
        l_r, l_fd = scores.l_r, scores.l_fd
    seconds = time.monotonic() - t0
    return ScoredTestSet(l_r, l_fd, paths, np.asarray(test.labels), list(test.defect_types), fingerprint,
                         seconds, pixel_maps)


def resolve_stride(cfg: Config, stride: int | None) -> int:
    """The map stride of ``cfg``: the patch size by default; objects (one patch) always the patch size."""
    cfg = cfg.resolved()
    if stride is None or cfg.kind == "object":
        return int(cfg.patch_size)
    stride = int(stride)
    if not 1 <= stride <= cfg.patch_size:
        raise EvaluationError(f"--stride must be between 1 and the patch size {cfg.patch_size}, got {stride}")
    return stride


def has_ground_truth(cfg: Config) -> bool:
    """Whether the category folder has a ``ground_truth`` folder (no decoding)."""
    return (Path(cfg.data_dir).expanduser() / cfg.category / "ground_truth").is_dir()


def _with_data_dir(cfg: Config, data_dir: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, data_dir=str(data_dir))


def _current_test_paths(cfg: Config) -> list[str] | None:
    """The test image paths the data folder holds now (no decoding), or None if unreadable."""
    from .data import list_images

    root = Path(cfg.data_dir).expanduser() / cfg.category / "test"
    if not root.is_dir():
        return None
    return [str(p) for sub in sorted(d for d in root.iterdir() if d.is_dir()) for p in list_images(sub)]


# ---------------------------------------------------------------------------------- metrics
def lambda_metrics(labels, defect_types, scores) -> dict:
    """auROC, max balanced accuracy (+ threshold), F1-max (+ threshold), auROC per defect type."""
    labels = np.asarray(labels).astype(int)
    bal, bal_thr = max_balanced_accuracy(labels, scores)
    f1, f1_thr = f1_max(labels, scores)
    row = {"auroc": auroc(labels, scores), "max_balanced_accuracy": bal, "mba_threshold": bal_thr,
           "f1_max": f1, "f1_threshold": f1_thr}
    types = np.asarray(defect_types, dtype=object)
    scores = np.asarray(scores, np.float64)
    good = types == GOOD
    for t in sorted(set(types.tolist()) - {GOOD}):
        sel = good | (types == t)
        try:
            row[f"auroc_{t}"] = auroc(labels[sel], scores[sel])
        except MetricError:
            row[f"auroc_{t}"] = float("nan")
    return row


def pixel_selection(scored: ScoredTestSet, warn: bool = True) -> tuple[np.ndarray, int]:
    """The test images of the pixel metrics and how many defective ones are left out (no mask)."""
    from .pixel_metrics import select_images

    return select_images(scored.labels, scored.pixel.has_mask, warn=warn)


def pixel_row(scored: ScoredTestSet, lam: float, keep: np.ndarray) -> dict:
    """``pixel_auroc`` and ``aupro`` of the maps at ``lam`` (NaN when undefined)."""
    from .pixel_metrics import PixelMetricError, pixel_metrics

    px = scored.pixel
    maps = px.maps(lam)[keep] if not keep.all() else px.maps(lam)
    masks = px.masks[keep] if not keep.all() else px.masks
    try:
        m = pixel_metrics(maps, masks)
    except PixelMetricError as e:
        raise MetricError(f"pixel metrics are undefined: {e}") from None
    return {"pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"], "_pixel": m}


def metrics_table(scored: ScoredTestSet, lambdas, chosen: float, threshold: dict | None = None) -> pd.DataFrame:
    """One row per lambda (sorted), recombined from the stored parts; raises MetricError if undefined.

    With ``scored.pixel`` (anomaly maps) every row also has ``pixel_auroc`` and ``aupro``.
    """
    lambdas = sorted({float(x) for x in lambdas} | {float(chosen)}
                     | ({threshold["score_lambda"]} if threshold else set()))
    keep = pixel_selection(scored)[0] if scored.pixel is not None else None
    rows, details = [], None
    for lam in lambdas:
        s = scored.image_scores(lam)
        row = {"lambda": lam, "chosen": bool(math.isclose(lam, chosen))}
        row.update(lambda_metrics(scored.labels, scored.defect_types, s))
        if keep is not None:
            px = pixel_row(scored, lam, keep)
            if row["chosen"]:
                details = dict(px.pop("_pixel"), n_excluded=int(np.sum(~keep)))
            px.pop("_pixel", None)
            row.update(px)
        if threshold is not None and math.isclose(lam, threshold["score_lambda"]):
            row["threshold"] = threshold["threshold"]
            row.update({f"thr_{k}": v for k, v in
                        at_threshold(scored.labels, s, threshold["threshold"]).items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    first = ["lambda", "chosen", "auroc", "max_balanced_accuracy", "mba_threshold", "f1_max", "f1_threshold"]
    first += [c for c in ("pixel_auroc", "aupro") if c in df.columns]
    thr = [c for c in ("threshold", "thr_precision", "thr_recall", "thr_f1", "thr_balanced_accuracy")
           if c in df.columns]
    per_type = sorted(c for c in df.columns if c.startswith("auroc_"))
    out = df[first + thr + per_type].copy()
    out.attrs["pixel"] = details  # counts behind the chosen lambda's pixel metrics (None: not computed)
    return out


def scores_table(scored: ScoredTestSet, lam: float, threshold: dict | None = None) -> pd.DataFrame:
    """One row per test image at ``lam`` (textures: the parts of the highest-scoring patch)."""
    idx = scored.argmax_patch(lam)
    rows = np.arange(len(idx))
    df = pd.DataFrame({
        "path": scored.paths,
        "defect_type": scored.defect_types,
        "label": np.asarray(scored.labels).astype(int),
        "l_r": np.asarray(scored.l_r, np.float64)[rows, idx],
        "l_fd": np.asarray(scored.l_fd, np.float64)[rows, idx],
        "patch": idx.astype(int),
        "score": scored.image_scores(lam),
    })
    if threshold is not None and math.isclose(threshold["score_lambda"], lam):
        df["anomalous"] = (df["score"] > threshold["threshold"]).astype(int)
    return df


# ---------------------------------------------------------------------------------- the whole thing
@dataclass
class RunEvaluation:
    run_dir: Path
    summary: dict
    metrics: pd.DataFrame
    scores: pd.DataFrame
    reused_parts: bool


def evaluate_run(run_dir: str | Path, lambdas=None, *, score_lambda: float | None = None,
                 label: str | None = None, data_dir: str | None = None, rescore: bool = False,
                 skip_bad_images: bool = False, progress: bool = True, model=None, pixel: bool = True,
                 sigma: float | None = None, stride: int | None = None) -> RunEvaluation:
    """Score (or reuse the stored parts of) a run's test set and write the evaluation files.

    ``lambdas``: the sweep (default: just the chosen lambda). ``score_lambda``: the chosen lambda for
    ``scores.csv`` and the tables (default: the run's ``score_lambda``, the paper's 0.1). The stored
    parts are reused when they were computed with the same weights and config and the test folder still
    holds the same images; ``rescore=True`` always scores again. ``model``: the run's model when it is
    already in memory (it must be the one saved in the folder); by default it is loaded from there.
    Raises :class:`EvaluationError` (bad input) or :class:`cbigan.metrics.MetricError` after writing
    ``scores.csv`` when the metrics are undefined (e.g. no defective test image).

    ``pixel``: compute anomaly maps and pixel metrics when the category has ground truth, with Gaussian
    smoothing ``sigma`` (default :data:`MAP_SIGMA`, 0: none) and texture patch ``stride`` (default: the
    patch size, no overlap); stored maps are reused under the same conditions as the parts and the same
    sigma and stride.
    """
    run_dir = check_run_dir(run_dir)
    try:
        cfg = Config.from_json(run_dir / CONFIG_JSON)
    except (ValueError, TypeError) as e:
        raise EvaluationError(f"{run_dir / CONFIG_JSON} is not a valid run config: {e}") from None
    if data_dir is not None:
        cfg = _with_data_dir(cfg, data_dir)
    chosen = float(cfg.score_lambda if score_lambda is None else score_lambda)
    lambdas = [chosen] if not lambdas else [float(x) for x in lambdas]
    for lam in lambdas + [chosen]:
        if not 0.0 <= lam <= 1.0:
            raise EvaluationError(f"lambda must be in [0, 1], got {lam:g}")
    threshold = read_threshold(run_dir)
    sigma = MAP_SIGMA if sigma is None else float(sigma)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise EvaluationError(f"--sigma must be >= 0, got {sigma:g}")
    stride = resolve_stride(cfg, stride)
    want_pixel = bool(pixel) and has_ground_truth(cfg)

    scored, reused = None, False
    parts, pixel_file = run_dir / PARTS_NPZ, run_dir / PIXEL_NPZ
    if parts.is_file() and not rescore and not skip_bad_images:
        try:
            old = ScoredTestSet.load(parts)
        except (OSError, ValueError, KeyError):
            old = None
        fingerprint = weights_fingerprint(run_dir)
        if old is not None and old.fingerprint == fingerprint and old.paths == _current_test_paths(cfg):
            if want_pixel:
                old.pixel = _load_pixel_maps(pixel_file, fingerprint, old.paths, sigma, stride)
            if old.pixel is not None or not want_pixel:
                scored, reused = old, True
    if scored is None:
        from .data import DataError

        try:
            scored = score_test_set(run_dir, None if model is None else cfg, model, data_dir=data_dir,
                                    skip_bad_images=skip_bad_images, progress=progress, pixel=want_pixel,
                                    sigma=sigma, stride=stride)
        except DataError as e:
            raise EvaluationError(str(e)) from None
        scored.save(parts)
        if scored.pixel is not None:
            scored.pixel.save(pixel_file)

    scores_df = scores_table(scored, chosen, threshold)
    _write_atomic(run_dir / SCORES_CSV, lambda p: scores_df.to_csv(p, index=False, float_format="%.6g"))
    t0 = time.monotonic()
    try:
        metrics_df = metrics_table(scored, lambdas, chosen, threshold)
    except MetricError as e:
        raise MetricError(f"metrics of {run_dir} are undefined: {e} (per-image scores are in "
                          f"{run_dir / SCORES_CSV})") from None
    metric_seconds = time.monotonic() - t0
    _write_atomic(run_dir / METRICS_CSV, lambda p: metrics_df.to_csv(p, index=False, float_format="%.6g"))

    sel = selected_on_test(run_dir, cfg)
    at = metrics_df[metrics_df["chosen"]].iloc[0]
    n = len(scored.labels)
    summary = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "category": cfg.category,
        "kind": cfg.kind,
        "alpha": cfg.alpha,
        "preset": cfg.preset,
        "label": label,
        "method": method_name(cfg.alpha),
        "method_label": method_label(cfg, label, chosen, sel),
        "select_on_test": sel,
        "score_lambda": chosen,
        "lambdas": sorted(metrics_df["lambda"].tolist()),
        "n_test": n,
        "n_good": int(np.sum(np.asarray(scored.labels) == 0)),
        "n_defective": int(np.sum(np.asarray(scored.labels) == 1)),
        "auroc": float(at["auroc"]),
        "max_balanced_accuracy": float(at["max_balanced_accuracy"]),
        "mba_threshold": float(at["mba_threshold"]),
        "f1_max": float(at["f1_max"]),
        "threshold": threshold,
        "at_threshold": None,
        "scoring_seconds": None if reused else round(scored.seconds, 3),
        "images_per_second": None if reused or not scored.seconds else round(n / scored.seconds, 2),
        "reused_scores": reused,
        "pixel_auroc": None,
        "aupro": None,
        "pixel": None,
        "fingerprint": scored.fingerprint,
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    details = metrics_df.attrs.get("pixel")
    if details is not None:
        px = scored.pixel
        summary["pixel_auroc"] = _float_or_none(at["pixel_auroc"])
        summary["aupro"] = _float_or_none(at["aupro"])
        summary["pixel"] = {"sigma": px.sigma, "stride": int(px.stride), "resolution": int(px.map_r.shape[-1]),
                            "n_images": details["n_images"], "n_excluded_no_mask": details["n_excluded"],
                            "n_regions": details["n_regions"],
                            "n_anomalous_pixels": details["n_anomalous_pixels"],
                            "n_normal_pixels": details["n_normal_pixels"],
                            "metric_seconds": round(metric_seconds, 3)}
    if threshold is not None:
        row = metrics_df[np.isclose(metrics_df["lambda"], threshold["score_lambda"])].iloc[0]
        summary["at_threshold"] = {k: float(row[f"thr_{k}"])
                                   for k in ("precision", "recall", "f1", "balanced_accuracy")}
    _write_atomic(run_dir / EVALUATION_JSON,
                  lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=str) + "\n"))
    return RunEvaluation(run_dir, summary, metrics_df, scores_df, reused)


def _float_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _load_pixel_maps(path: Path, fingerprint: str, paths: list, sigma: float, stride: int):
    """Stored maps when they belong to these weights, test images, sigma and stride; else None."""
    if not path.is_file():
        return None
    try:
        px = PixelMaps.load(path)
    except (OSError, ValueError, KeyError):
        return None
    if px.fingerprint != fingerprint or px.paths != paths or not px.matches(sigma, stride):
        return None
    return px


def format_report(ev: RunEvaluation) -> str:
    """A few lines for the terminal: the chosen lambda's metrics, the sweep, the threshold."""
    s = ev.summary
    lines = [f"{s['run_dir']}: {s['method_label']}, {s['category']}, {s['n_test']} test images "
             f"({s['n_good']} good, {s['n_defective']} defective)"
             + (", stored scores reused" if ev.reused_parts else
                f", scored at {s['images_per_second']} images/s (graph tracing included)")]
    if s["select_on_test"]:
        lines.append("WARNING: this model was selected with test labels (--select-on-test): its test "
                     "metrics are optimistic")
    lines.append(f"lambda {s['score_lambda']:g}: auROC {s['auroc']:.4f}  max balanced accuracy "
                 f"{s['max_balanced_accuracy']:.4f} (threshold {s['mba_threshold']:.6g})  "
                 f"F1-max {s['f1_max']:.4f}")
    if s.get("pixel"):
        p = s["pixel"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"pixel level (maps {p['resolution']}x{p['resolution']}, sigma {p['sigma']:g}, stride "
                     f"{p['stride']}): pixel auROC {fmt(s['pixel_auroc'])}  AUPRO@0.3 {fmt(s['aupro'])}  over "
                     f"{p['n_images']} images, {p['n_regions']} defect regions"
                     + (f"; {p['n_excluded_no_mask']} defective image(s) without a mask left out"
                        if p["n_excluded_no_mask"] else ""))
    if s["threshold"] is None:
        lines.append("no calibrated threshold (threshold.json missing or null): threshold-free metrics only")
    else:
        t, a = s["threshold"], s["at_threshold"]
        lines.append(f"at the calibrated threshold {t['threshold']:.6g} (lambda {t['score_lambda']:g}, "
                     f"{t['percentile']}th percentile of {t['n_val']} held-out normal images): "
                     f"precision {a['precision']:.4f}  recall {a['recall']:.4f}  F1 {a['f1']:.4f}  "
                     f"balanced accuracy {a['balanced_accuracy']:.4f}")
    if len(ev.metrics) > 1:
        cols = ["lambda", "auroc", "max_balanced_accuracy", "f1_max"]
        cols += [c for c in ("pixel_auroc", "aupro") if c in ev.metrics.columns]
        lines.append(ev.metrics[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    files = [SCORES_CSV, METRICS_CSV, PARTS_NPZ] + ([PIXEL_NPZ] if s.get("pixel") else []) + [EVALUATION_JSON]
    lines.append(f"wrote {', '.join(files)} in {s['run_dir']}")
    return "\n".join(lines)


def load_evaluation(run_dir: str | Path) -> dict:
    """``evaluation.json`` of an evaluated run; :class:`EvaluationError` when there is none."""
    path = Path(run_dir) / EVALUATION_JSON
    if not path.is_file():
        if is_run_dir(run_dir):
            raise EvaluationError(f"{run_dir} is not evaluated yet; run: python evaluate.py {run_dir}")
        raise EvaluationError(f"{run_dir} is not an evaluated run folder (no {EVALUATION_JSON})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {e}; evaluate the run again") from None
