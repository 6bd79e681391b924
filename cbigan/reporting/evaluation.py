"""Test-set evaluation of a run folder: per-image scores, a lambda sweep, and the metrics files.

One scoring pass (:class:`cbigan.scoring.parts.Scorer`, the same code that training-time evaluation and the
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
* ``evaluation.json``: what :mod:`cbigan.reporting.tables` reads: run, category, method label, chosen lambda,
  the metrics at that lambda, whether the model was selected on the test set, and when.

Pixel-level localization (categories with a ``ground_truth`` folder): the same single pass computes the
anomaly maps of every test image (:class:`cbigan.scoring.localization.Localizer`: model resolution, ``--stride``
overlapping texture patches, Gaussian ``--sigma``), and ``metrics.csv`` gains ``pixel_auroc`` and ``aupro``
for every lambda (:mod:`cbigan.scoring.pixel_metrics`; good images count as all-normal, defective ones without a
mask are left out with a warning). The two map parts are kept in ``pixel_maps.npz`` (float32, with the
masks, sigma, stride and the weights' fingerprint) and reused like the score parts. ``pixel=False``
(``--no-pixel``) skips all of it.

This module imports TensorFlow only when it has to score (``evaluate_run``), so reading results and
building tables stays fast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cbigan.core.anomaly_score import DEFAULT_MAP_SIGMA as MAP_SIGMA
from cbigan.core.anomaly_score import (
    DEFAULT_TOPK, FUSED_RULES, IMAGE_SCORE_RULES, PAPER_LAMBDA, RULES_WITH_MAPS, fusion_stats, global_weight)
from cbigan.core.config import Config, as_resolved, method_name
from cbigan.core.errors import EvaluationError
from cbigan.core.kinds import StrideError, kind_of
from cbigan.core.layout import GOOD, test_image_paths, has_ground_truth as _has_ground_truth
from cbigan.scoring.metrics import MetricError, at_threshold, auroc, f1_max, max_balanced_accuracy
from cbigan.core.results import ImageResults
from cbigan.core.runfolder import (
    EVALUATION_JSON, METRICS_CSV, PARTS_NPZ, PIXEL_NPZ, SCORES_CSV, THRESHOLD_JSON, check_run_dir, read_config,
    selected_on_test, weights_fingerprint, write_atomic, write_evaluation)
from cbigan.core.runfolder import calibrated_threshold as read_threshold


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


# ---------------------------------------------------------------------------------- scoring
def score_test_set(run_dir: str | Path, cfg: Config | None = None, model=None, *, data_dir: str | None = None,
                   skip_bad_images: bool = False, progress: bool = True, pixel: bool = True,
                   sigma: float = MAP_SIGMA, stride: int | None = None,
                   skipped: list | None = None) -> ImageResults:
    """Load the run's model (EMA networks) and its test set, and score every image once.

    With ``pixel`` and a test set with ground truth, the same pass computes the anomaly maps
    (:class:`cbigan.scoring.localization.Localizer`) and the result holds them with the masks. ``skipped``: a
    list that receives the unreadable test images left out (``skip_bad_images``).
    """
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.parts import Scorer, score_images
    from cbigan.model.gan import load_trained

    run_dir = check_run_dir(run_dir)
    if model is None:
        try:
            cfg, model = load_trained(run_dir)
        except (ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise EvaluationError(f"cannot load the model of {run_dir}: {first}") from None
    cfg = read_config(run_dir) if cfg is None else as_resolved(cfg)
    if data_dir is not None:
        cfg = _with_data_dir(cfg, data_dir)
    test = load_test_set(cfg, skip_bad=skip_bad_images, with_masks=pixel)
    if skipped is not None:
        skipped.extend(str(p) for p in test.skipped)
    fingerprint = weights_fingerprint(run_dir)
    paths = [str(p) for p in test.paths]
    pixel_maps = None
    t0 = time.monotonic()
    if pixel:
        from cbigan.scoring.localization import Localizer

        stride = resolve_stride(cfg, stride)
        loc = Localizer(model, cfg, sigma=sigma, stride=stride)
        out = loc.run(test.images, progress=progress, desc=f"scoring + maps {cfg.category}", regions=test.regions)
        l_r, l_fd = out.l_r, out.l_fd
        pixel_maps = ImageResults(out.l_r, out.l_fd, map_r=out.map_r, map_fd=out.map_fd, masks=test.masks,
                                  has_mask=np.asarray(test.has_mask, bool), sigma=float(sigma), stride=stride,
                                  regions=test.regions, global_r=out.global_r, global_fd=out.global_fd,
                                  global_weight=out.global_weight)
    else:
        scores = score_images(Scorer(model, cfg), test.images, progress=progress,
                              desc=f"scoring {cfg.category}")
        l_r, l_fd = scores.l_r, scores.l_fd
    seconds = time.monotonic() - t0
    return ImageResults(l_r, l_fd, paths, np.asarray(test.labels), list(test.defect_types),
                        fingerprint=fingerprint, seconds=seconds).with_maps(pixel_maps)


def resolve_stride(cfg: Config, stride: int | None) -> int:
    """The map stride of ``cfg``: the patch size by default and for kinds without one (objects: one
    patch); :class:`EvaluationError` for a stride outside 1..patch size (:meth:`cbigan.core.kinds.InputKind.map_stride`)."""
    cfg = as_resolved(cfg)
    try:
        return kind_of(cfg).map_stride(cfg, stride)
    except StrideError as e:
        raise EvaluationError(str(e)) from None


def has_ground_truth(cfg: Config) -> bool:
    """Whether the category folder has a ``ground_truth`` folder (no decoding)."""
    return _has_ground_truth(cfg.data_dir, cfg.category)


def _with_data_dir(cfg: Config, data_dir: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, data_dir=str(data_dir))


def _current_test_paths(cfg: Config) -> list[str] | None:
    """The test image paths the data folder holds now (no decoding), or None if unreadable."""
    found = test_image_paths(cfg.data_dir, cfg.category)
    return None if found is None else [str(p) for p in found[0]]


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


def pixel_selection(scored: ImageResults, warn: bool = True) -> tuple[np.ndarray, int]:
    """The test images of the pixel metrics and how many defective ones are left out (no mask)."""
    from cbigan.scoring.pixel_metrics import select_images

    return select_images(scored.labels, scored.has_mask, warn=warn)


def pixel_row(scored: ImageResults, lam: float, keep: np.ndarray, maps: np.ndarray | None = None) -> dict:
    """``pixel_auroc`` and ``aupro`` of the maps at ``lam`` (NaN when undefined); ``maps``: those maps
    when the caller has them already."""
    from cbigan.scoring.pixel_metrics import PixelMetricError, pixel_metrics, region_masks

    px = scored
    maps = px.maps(lam) if maps is None else maps
    maps = maps[keep] if not keep.all() else maps
    masks = px.masks[keep] if not keep.all() else px.masks
    valid = None
    if px.regions is not None and np.any(np.asarray(px.regions) != np.asarray(maps.shape[1:])):
        valid = region_masks(np.asarray(px.regions)[keep], maps.shape[1:])  # tiles: the images' own pixels
    try:
        m = pixel_metrics(maps, masks, valid=valid)
    except PixelMetricError as e:
        raise MetricError(f"pixel metrics are undefined: {e}") from None
    return {"pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"], "_pixel": m}


def metrics_table(scored: ImageResults, lambdas, chosen: float, threshold: dict | None = None, *,
                  rule: str = "paper", rules=(), topk: float = DEFAULT_TOPK, margin: int = 0) -> pd.DataFrame:
    """One row per lambda (sorted), recombined from the stored parts; raises MetricError if undefined.

    The image metrics are those of the image-score ``rule``; every other rule of ``rules`` adds
    ``auroc[<rule>]``, ``max_balanced_accuracy[<rule>]`` and ``f1_max[<rule>]`` (same pass, same maps;
    the map rules with ``topk`` and ``margin``, :func:`cbigan.core.anomaly_score.map_scores`).
    With anomaly maps and masks in ``scored`` every row also has ``pixel_auroc`` and ``aupro``.
    """
    lambdas = sorted({float(x) for x in lambdas} | {float(chosen)}
                     | ({threshold["score_lambda"]} if threshold else set()))
    keep = pixel_selection(scored)[0] if scored.has_maps and scored.masks is not None else None
    others = [r for r in dict.fromkeys(rules) if r != rule]
    rows, details = [], None
    for lam in lambdas:
        tiles = scored.tile_maps(lam) if scored.has_maps else None  # combined once, for every rule
        s = scored.image_scores(lam, rule, topk, tiles, margin)
        row = {"lambda": lam, "chosen": bool(math.isclose(lam, chosen))}
        row.update(lambda_metrics(scored.labels, scored.defect_types, s))
        for other in others:
            try:
                s_other = scored.image_scores(lam, other, topk, tiles, margin)
            except ValueError:  # a fused rule at a lambda its statistics were not calibrated at
                continue
            m = lambda_metrics(scored.labels, scored.defect_types, s_other)
            row.update({f"{k}[{other}]": m[k] for k in ("auroc", "max_balanced_accuracy", "f1_max")})
            other_thr = (threshold or {}).get("rule_thresholds", {}).get(other)
            if other_thr is not None and math.isclose(lam, threshold["score_lambda"]):
                at = at_threshold(scored.labels, s_other, other_thr)
                row.update({f"thr_{k}[{other}]": at[k] for k in ("recall", "false_alarm_rate")})
        if keep is not None:
            px = pixel_row(scored, lam, keep, scored.maps(lam, tiles))
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
    thr = [c for c in ("threshold", "thr_precision", "thr_recall", "thr_f1", "thr_balanced_accuracy",
                       "thr_false_alarm_rate") if c in df.columns]
    per_type = sorted(c for c in df.columns if c.startswith("auroc_"))
    per_rule = [c for c in df.columns if c.endswith("]")]
    out = df[first + thr + per_type + per_rule].copy()
    out.attrs["pixel"] = details  # counts behind the chosen lambda's pixel metrics (None: not computed)
    return out


def scores_table(scored: ImageResults, lam: float, threshold: dict | None = None, *, rule: str = "paper",
                 topk: float = DEFAULT_TOPK, margin: int = 0) -> pd.DataFrame:
    """One row per test image at ``lam``: its score by ``rule`` (textures: ``l_r``, ``l_fd`` and
    ``patch`` of the highest-scoring patch)."""
    idx = scored.best_patch(lam)
    rows = np.arange(len(idx))
    df = pd.DataFrame({
        "path": scored.paths,
        "defect_type": scored.defect_types,
        "label": np.asarray(scored.labels).astype(int),
        "l_r": np.asarray(scored.l_r, np.float64)[rows, idx],
        "l_fd": np.asarray(scored.l_fd, np.float64)[rows, idx],
        "patch": idx.astype(int),
        "score": scored.image_scores(lam, rule, topk, margin=margin),
    })
    if threshold is not None and math.isclose(threshold["score_lambda"], lam):
        df["anomalous"] = (df["score"] > threshold["threshold"]).astype(int)
    return df


# ---------------------------------------------------------------------------------- the whole thing
@dataclass
class EvaluationResult:
    run_dir: Path
    summary: dict
    metrics: pd.DataFrame
    scores: pd.DataFrame
    reused_parts: bool


def evaluate_run(run_dir: str | Path, lambdas=None, *, score_lambda: float | None = None,
                 label: str | None = None, data_dir: str | None = None, rescore: bool = False,
                 skip_bad_images: bool = False, progress: bool = True, model=None, pixel: bool = True,
                 sigma: float | None = None, stride: int | None = None, rules=None,
                 out_dir: str | Path | None = None) -> EvaluationResult:
    """Score (or reuse the stored parts of) a run's test set and write the evaluation files.

    ``out_dir``: where the evaluation files go (default: the run folder; ``--out``), e.g. for a run on a
    read-only disk; checked before scoring (:func:`cbigan.core.runfolder.check_writable`). Stored parts are
    reused from there, else from the run folder.

    ``lambdas``: the sweep (default: just the chosen lambda). ``score_lambda``: the chosen lambda for
    ``scores.csv`` and the tables (default: the run's ``score_lambda``, the paper's 0.1). The stored
    parts are reused when they were computed with the same weights and config and the test folder still
    holds the same images; ``rescore=True`` always scores again. ``model``: the run's model when it is
    already in memory (it must be the one saved in the folder); by default it is loaded from there.
    Raises :class:`EvaluationError` (bad input) or :class:`cbigan.scoring.metrics.MetricError` after writing
    ``scores.csv`` when the metrics are undefined (e.g. no defective test image).

    ``pixel``: compute anomaly maps and pixel metrics when the category has ground truth, with Gaussian
    smoothing ``sigma`` (default :data:`MAP_SIGMA`, 0: none) and texture patch ``stride`` (default: the
    patch size, no overlap); stored maps are reused under the same conditions as the parts and the same
    sigma and stride.

    ``rules``: image-score rules to report beside the run's own (``cfg.image_score``, whose metrics are
    the main columns); default: every rule of :data:`cbigan.core.anomaly_score.IMAGE_SCORE_RULES` when the
    maps are computed anyway (ground truth, or a map rule), else none. Map rules need the maps: asking
    for one computes them (stored in ``pixel_maps.npz``, without masks when there is no ground truth).
    """
    run_dir = check_run_dir(run_dir)
    out = evaluation_dir(run_dir, out_dir)
    cfg = read_config(run_dir)
    if data_dir is not None:
        cfg = _with_data_dir(cfg, data_dir)
    plan = _plan(run_dir, cfg, lambdas, score_lambda, sigma, stride, rules, pixel, model, skip_bad_images, progress)
    cfg = plan.cfg
    scored, reused, skipped = _scored_test_set(run_dir, out, plan, model, data_dir=data_dir, rescore=rescore,
                                               skip_bad_images=skip_bad_images, progress=progress)

    scores_df = scores_table(scored, plan.chosen, plan.threshold, rule=plan.rule, topk=cfg.score_topk,
                             margin=cfg.score_margin)
    write_atomic(out / SCORES_CSV, lambda p: scores_df.to_csv(p, index=False, float_format="%.6g"))
    t0 = time.monotonic()
    try:
        metrics_df = metrics_table(scored, plan.lambdas, plan.chosen, plan.threshold, rule=plan.rule,
                                   rules=plan.rules, topk=cfg.score_topk, margin=cfg.score_margin)
    except MetricError as e:
        raise MetricError(f"metrics of {run_dir} are undefined: {e} (per-image scores are in "
                          f"{out / SCORES_CSV})") from None
    metric_seconds = time.monotonic() - t0
    write_atomic(out / METRICS_CSV, lambda p: metrics_df.to_csv(p, index=False, float_format="%.6g"))

    summary = _summary(run_dir, out, plan, scored, metrics_df, label=label, reused=reused, skipped=skipped,
                       metric_seconds=metric_seconds)
    write_evaluation(out, summary)
    return EvaluationResult(run_dir, summary, metrics_df, scores_df, reused)


@dataclass(frozen=True)
class _Plan:
    """What one evaluation computes, checked before any scoring: the run's configuration (with its
    threshold record), the lambdas, the rules and whether the maps are needed."""
    cfg: Config
    threshold: dict | None
    chosen: float           # the lambda of scores.csv and the main columns
    lambdas: list           # the sweep
    sigma: float
    stride: int
    rule: str               # the run's own image-score rule
    rules: list             # every rule reported
    want_pixel: bool        # anomaly maps (pixel metrics or a map rule)


def _plan(run_dir: Path, cfg: Config, lambdas, score_lambda, sigma, stride, rules, pixel, model,
          skip_bad_images: bool, progress: bool) -> _Plan:
    """Check the arguments of :func:`evaluate_run` (one-line :class:`EvaluationError`) and decide what it
    computes; a run whose fused rules are asked for but lack their statistics is calibrated again."""
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
    rule = cfg.image_score
    for r in rules or ():
        if r not in IMAGE_SCORE_RULES:
            raise EvaluationError(f"image score rule must be one of {', '.join(IMAGE_SCORE_RULES)}, got {r!r}")
    need_maps = rule in RULES_WITH_MAPS or any(r in RULES_WITH_MAPS for r in rules or ())
    want_pixel = (bool(pixel) and has_ground_truth(cfg)) or need_maps
    asked = list(rules or ())
    rules = asked or (list(IMAGE_SCORE_RULES) if want_pixel else [])
    if fusion_stats(cfg) is None and (rule in FUSED_RULES or any(r in FUSED_RULES for r in rules)):
        # the fused rules need their held-out statistics: calibrate a run that has none (trained before
        # them, or never calibrated) when they are asked for (the run's rule, or --rules); else report
        # them only when they exist (a default report never rewrites a threshold record)
        wanted = rule in FUSED_RULES or bool(set(asked) & set(FUSED_RULES))
        if wanted and (_lacks_fusion(threshold) or not (run_dir / THRESHOLD_JSON).is_file()):
            threshold, cfg = _recalibrate(run_dir, cfg, model, skip_bad_images, progress)
        if fusion_stats(cfg) is None and not set(asked) & set(FUSED_RULES):
            rules = [r for r in rules if r not in FUSED_RULES]  # they would repeat map_max
    return _Plan(cfg, threshold, chosen, lambdas, sigma, stride, rule, rules, want_pixel)


def _scored_test_set(run_dir: Path, out: Path, plan: _Plan, model, *, data_dir, rescore: bool,
                     skip_bad_images: bool, progress: bool) -> tuple[ImageResults, bool, list]:
    """``(scored test set, reused, skipped images)``: the stored parts (and maps) of ``out`` or the run
    folder when they belong to these weights, test images, sigma and stride, else a new scoring pass
    (saved to ``out``). The result carries the run's fused-rule statistics."""
    from dataclasses import replace

    cfg = plan.cfg
    scored, reused, skipped = None, False, []
    parts, pixel_file = out / PARTS_NPZ, out / PIXEL_NPZ
    if not parts.is_file() and out != run_dir:  # reuse what the run folder holds
        parts, pixel_file = run_dir / PARTS_NPZ, run_dir / PIXEL_NPZ
    if parts.is_file() and not rescore and not skip_bad_images:
        try:
            old = ImageResults.load_parts(parts)
        except (OSError, ValueError, KeyError):
            old = None
        fingerprint = weights_fingerprint(run_dir)
        if old is not None and old.fingerprint == fingerprint and old.paths == _current_test_paths(cfg):
            if plan.want_pixel:
                old = old.with_maps(_load_pixel_maps(pixel_file, fingerprint, old.paths, plan.sigma, plan.stride,
                                                     bool(cfg.global_views), global_weight(cfg),
                                                     fusion_stats(cfg)))
            if old.has_maps or not plan.want_pixel:
                scored, reused = old, True
    if scored is None:
        from cbigan.data.pipeline import DataError

        try:
            scored = score_test_set(run_dir, None if model is None else cfg, model, data_dir=data_dir,
                                    skip_bad_images=skip_bad_images, progress=progress, pixel=plan.want_pixel,
                                    sigma=plan.sigma, stride=plan.stride, skipped=skipped)
        except DataError as e:
            raise EvaluationError(str(e)) from None
        scored.save_parts(out / PARTS_NPZ)
        if scored.has_maps:
            scored.save_maps(out / PIXEL_NPZ)
    return replace(scored, fusion=fusion_stats(cfg)), reused, skipped  # the run's, calibrated with its threshold


def _summary(run_dir: Path, out: Path, plan: _Plan, scored: ImageResults, metrics_df, *, label, reused: bool,
             skipped: list, metric_seconds: float) -> dict:
    """The evaluation record (``evaluation.json``): the run, its rule and lambda, the chosen lambda's
    image (and pixel) metrics, the threshold's verdict per rule and the scoring speed."""
    cfg, threshold, chosen, rule, rules = plan.cfg, plan.threshold, plan.chosen, plan.rule, plan.rules
    sel = selected_on_test(run_dir, cfg)
    at = metrics_df[metrics_df["chosen"]].iloc[0]
    n = len(scored.labels)
    summary = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "out_dir": str(out),  # where these files are (the run folder unless --out)
        "category": cfg.category,
        "kind": cfg.kind,
        "alpha": cfg.alpha,
        "preset": cfg.preset,
        "label": label,
        "method": method_name(cfg.alpha),
        "method_label": method_label(cfg, label, chosen, sel),
        "select_on_test": sel,
        "score_lambda": chosen,
        "image_score": rule,
        "image_score_rules": [rule] + [r for r in rules if r != rule],
        "score_margin": int(cfg.score_margin),  # map rules: map pixels left out at the image's border
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
        "skipped_images": skipped,  # unreadable test images left out (--skip-bad-images)
        "pixel_auroc": None,
        "aupro": None,
        "pixel": None,
        "fingerprint": scored.fingerprint,
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    details = metrics_df.attrs.get("pixel")
    if details is not None:
        summary["pixel_auroc"] = _float_or_none(at["pixel_auroc"])
        summary["aupro"] = _float_or_none(at["aupro"])
        summary["pixel"] = {"sigma": scored.sigma, "stride": int(scored.stride),
                            "resolution": int(scored.map_r.shape[-1]),
                            "n_images": details["n_images"], "n_excluded_no_mask": details["n_excluded"],
                            "n_regions": details["n_regions"],
                            "n_anomalous_pixels": details["n_anomalous_pixels"],
                            "n_normal_pixels": details["n_normal_pixels"],
                            "metric_seconds": round(metric_seconds, 3)}
    if threshold is not None:
        row = metrics_df[np.isclose(metrics_df["lambda"], threshold["score_lambda"])].iloc[0]
        summary["at_threshold"] = {k: float(row[f"thr_{k}"])
                                   for k in ("precision", "recall", "f1", "balanced_accuracy", "false_alarm_rate")}
        summary["at_threshold_by_rule"] = {
            r: {k: _float_or_none(row[f"thr_{k}[{r}]"]) for k in ("recall", "false_alarm_rate")}
            for r in rules if f"thr_recall[{r}]" in row.index}
    return summary


def evaluation_dir(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where the evaluation of ``run_dir`` is written (``out_dir``, else the run folder), checked to be
    writable before any scoring: a one-line :class:`EvaluationError` naming ``--out`` otherwise."""
    from cbigan.core.errors import DataError
    from cbigan.core.runfolder import check_writable

    out = Path(run_dir if out_dir is None else out_dir)
    try:
        check_writable(out, "--out DIR", "the evaluation files")
        out.mkdir(parents=True, exist_ok=True)
    except DataError as e:
        raise EvaluationError(str(e)) from None
    except OSError as e:
        raise EvaluationError(f"cannot write the evaluation files to {out}: {e.strerror}; pass --out DIR "
                              f"to write them elsewhere") from None
    return out


def _float_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _lacks_fusion(threshold: dict | None) -> bool:
    """Whether a calibrated threshold record predates the fused rules' statistics (a run trained before
    them): it has held-out images but no ``fusion`` key."""
    return threshold is not None and threshold.get("threshold") is not None and \
        int(threshold.get("n_val") or 0) > 0 and not threshold.get("has_fusion")


def _recalibrate(run_dir: Path, cfg: Config, model, skip_bad_images: bool, progress: bool):
    """Calibrate the run's threshold record again on its held-out images (the same seeded split, the
    same model: the run's threshold stays what it was) so that it holds the fused rules' statistics;
    returns ``(threshold record, config)``."""
    from dataclasses import replace

    from cbigan.core.runfolder import usable_threshold
    from cbigan.serving.export import resolve_threshold
    from cbigan.model.gan import load_trained

    if model is None:
        _, model = load_trained(run_dir)
    info = resolve_threshold(run_dir, cfg, model, recalibrate=True, skip_bad_images=skip_bad_images,
                             verbose=progress)
    # the record as calibrated, also where the run folder is read-only (resolve_threshold then says so)
    return usable_threshold(info), replace(cfg, extra={**cfg.extra, "threshold": info})


def _load_pixel_maps(path: Path, fingerprint: str, paths: list, sigma: float, stride: int,
                     global_view: bool = False, global_weight: float = 1.0, fusion=None):
    """Stored maps when they belong to these weights, test images, sigma and stride (and hold the global
    view's maps exactly when the run has one), with the run's ``global_weight`` (the file does not hold
    it); else None."""
    if not path.is_file():
        return None
    try:
        px = ImageResults.load_maps(path, global_weight, fusion)
    except (OSError, ValueError, KeyError):
        return None
    if px.fingerprint != fingerprint or px.paths != paths or not px.maps_match(sigma, stride, global_view):
        return None
    return px


def format_report(ev: EvaluationResult) -> str:
    """A few lines for the terminal: the chosen lambda's metrics, the sweep, the threshold."""
    s = ev.summary
    lines = [f"{s['run_dir']}: {s['method_label']}, {s['category']}, {s['n_test']} test images "
             f"({s['n_good']} good, {s['n_defective']} defective)"
             + (", stored scores reused" if ev.reused_parts else
                f", scored at {s['images_per_second']} images/s (graph tracing included)")]
    if s.get("skipped_images"):
        lines.append(f"skipped {len(s['skipped_images'])} unreadable test image(s) (--skip-bad-images): "
                     + ", ".join(s["skipped_images"]))
    if s["select_on_test"]:
        lines.append("WARNING: this model was selected with test labels (--select-on-test): its test "
                     "metrics are optimistic")
    rule = s.get("image_score", "paper")
    lines.append(f"lambda {s['score_lambda']:g}" + ("" if rule == "paper" else f", image score {rule}")
                 + f": auROC {s['auroc']:.4f}  max balanced accuracy "
                 f"{s['max_balanced_accuracy']:.4f} (threshold {s['mba_threshold']:.6g})  "
                 f"F1-max {s['f1_max']:.4f}")
    at = ev.metrics[ev.metrics["chosen"]].iloc[0]
    others = [c[len("auroc["):-1] for c in ev.metrics.columns if c.startswith("auroc[")]
    if others:
        lines.append("other image-score rules (same pass): " + "  ".join(
            f"{r} auROC {at[f'auroc[{r}]']:.4f} / max bal. acc. {at[f'max_balanced_accuracy[{r}]']:.4f}"
            for r in others))
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
                     f"balanced accuracy {a['balanced_accuracy']:.4f}  false alarms on test/good "
                     f"{a.get('false_alarm_rate', float('nan')):.1%}")
        by_rule = s.get("at_threshold_by_rule") or {}
        if by_rule:
            lines.append("each rule at its own calibrated threshold: " + "  ".join(
                f"{r} recall {v['recall']:.1%} / false alarms {v['false_alarm_rate']:.1%}"
                for r, v in by_rule.items() if v["recall"] is not None))
    if len(ev.metrics) > 1:
        cols = ["lambda", "auroc", "max_balanced_accuracy", "f1_max"]
        cols += [c for c in ("pixel_auroc", "aupro") if c in ev.metrics.columns]
        lines.append(ev.metrics[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    files = [SCORES_CSV, METRICS_CSV, PARTS_NPZ] + ([PIXEL_NPZ] if s.get("pixel") else []) + [EVALUATION_JSON]
    lines.append(f"wrote {', '.join(files)} in {s.get('out_dir') or s['run_dir']}")
    return "\n".join(lines)
