"""Decision threshold calibrated without test labels, on held-out defect-free training images.

Rule: at the end of training, the images of ``train/good`` held out by :func:`cbigan.data.pipeline.split_train_val`
(``cfg.val_split``, default 10%, chosen by ``cfg.seed`` and never trained on) are scored with the
final (EMA) model and the score ``A(x) = max over patches of (1 - lambda) L_R + lambda L_fD``. The
threshold is the ``cfg.threshold_percentile``-th percentile (default 99, linear interpolation between
order statistics, NumPy's default) of those scores. An image is **anomalous when its score is strictly
greater than the threshold**, the same rule as :func:`cbigan.scoring.metrics.at_threshold` and the exported
SavedModel's ``is_anomaly``.

With ``--val-split 0`` (every training image is trained on, as in the paper) there is nothing to
calibrate on: the threshold is ``None``, stored as JSON ``null``, and every tool says so instead of
making one up. The stored rule names the real cause (:func:`no_threshold_rule`): ``--val-split 0``, a
single training image (nothing can be held out), or held-out images that were unreadable and skipped.
A threshold resting on fewer than :data:`MIN_RELIABLE_VAL` held-out images carries a warning in its
rule and under the key ``warning`` (a 99th percentile of one score is that score).

The result is written to ``<run>/threshold.json`` and merged into ``<run>/config.json`` under the key
``threshold`` (``Config.from_json`` then keeps it in ``cfg.extra["threshold"]``); the exported
SavedModel embeds the value in its graph and in ``assets.extra/cbigan.json``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cbigan.core.anomaly_score import IMAGE_SCORE_RULES, MAP_RULES, fusion_statistics, map_scores
from cbigan.core.config import Config, as_resolved
from cbigan.core.runfolder import read_threshold, write_threshold  # noqa: F401  (the run folder owns the files)

#: The rule stored when ``--val-split 0`` left nothing to calibrate on.
NO_THRESHOLD_RULE = "no held-out images (--val-split 0): no calibrated threshold"
#: Lambdas the fused rules' statistics are calibrated at besides the run's (a sweep of evaluate.py).
FUSION_LAMBDAS = (0.0, 0.1, 0.5, 1.0)
#: Below this many held-out images a calibrated threshold carries a warning.
MIN_RELIABLE_VAL = 10


def no_threshold_rule(val_split: float, n_images: int | None = None) -> str:
    """Why there is no threshold: ``--val-split 0`` (:data:`NO_THRESHOLD_RULE`), too few training images
    to hold one out, or held-out images that were all unreadable. ``n_images``: the images found in
    train/good (held out, trained on and skipped), when known."""
    if not val_split > 0:
        return NO_THRESHOLD_RULE
    if n_images is None:
        return f"no held-out images although --val-split is {val_split:g}: no calibrated threshold"
    if n_images < 2:
        return (f"no held-out images: only {n_images} training image(s) in train/good, none could be held "
                f"out (--val-split {val_split:g} needs at least 2): no calibrated threshold; add images or set "
                f"one by hand (--threshold of cbigan.serving.export or cbigan.serving.predict)")
    return (f"no held-out images: the held-out train/good images (--val-split {val_split:g}) were unreadable "
            f"and skipped: no calibrated threshold")


def few_images_warning(n_val: int) -> str | None:
    """The warning for a threshold from fewer than :data:`MIN_RELIABLE_VAL` held-out images, or None."""
    if n_val >= MIN_RELIABLE_VAL:
        return None
    return (f"the threshold rests on only {n_val} held-out image(s) (fewer than {MIN_RELIABLE_VAL}): a high "
            f"percentile of so few scores is about their maximum; check it with evaluate.py, hold out "
            f"more images (--val-split) or set one by hand (--threshold of cbigan.serving.export or cbigan.serving.predict)")


def threshold_rule(percentile: float, n_val: int, score_lambda: float, image_score: str = "paper") -> str:
    """The one-line description of the calibration rule stored with the threshold."""
    rule = "" if image_score == "paper" else f", rule {image_score}"
    return (f"{percentile:g}th percentile (linear interpolation) of the image scores "
            f"(lambda {score_lambda:g}{rule}) of {n_val} held-out train/good images never trained on; "
            f"anomalous when score > threshold"
            + ("" if few_images_warning(n_val) is None else f"; warning: {few_images_warning(n_val)}"))


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


def calibrate_threshold(model, cfg: Config, val_images, progress: bool = True,
                        n_images: int | None = None, regions=None, synthetic: bool = True) -> dict:
    """Score the held-out uint8 images [N, S, S, 3] (already resized; ``regions`` [N, 2]: the part of
    each that is the image, :attr:`cbigan.data.pipeline.TrainSet.val_regions`) and derive the threshold
    (``progress``: a bar on a terminal, :func:`cbigan.core.progress.progress`).

    Returns ``{"threshold", "percentile", "score_lambda", "n_val", "rule"}`` plus a few statistics of
    the held-out scores (``val_score_min``, ``val_score_mean``, ``val_score_max``) when there are any,
    and ``warning`` when they are fewer than :data:`MIN_RELIABLE_VAL`. The held-out images are scored
    with their anomaly maps, so the same record also holds the fused rules' statistics (``fusion``:
    :func:`cbigan.core.anomaly_score.fusion_statistics` at the run's lambda and :data:`FUSION_LAMBDAS`, None
    with fewer than 2 images), the global view's
    weight (``global_weight``, tiles with global views) and the threshold every image-score rule would
    have at the same percentile (``rule_thresholds``: evaluation reports each rule's verdict with it).
    With ``synthetic`` and at least :data:`cbigan.scoring.selection.MIN_IMAGES` held-out images it also scores
    synthetic-defect copies of them and records how well each rule separates them from the clean images
    (``synthetic_auroc``: :func:`synthetic_separation`), a label-free view of what each rule sees. ``n_images``: how many images
    train/good holds (:attr:`cbigan.data.pipeline.TrainSet.n_images`), so the rule can say why none was held out.
    """
    cfg = as_resolved(cfg)
    percentile = float(cfg.threshold_percentile)
    n_val = 0 if val_images is None else int(len(val_images))
    info = {"threshold": None, "percentile": percentile, "score_lambda": float(cfg.score_lambda),
            "n_val": n_val, "rule": no_threshold_rule(float(cfg.val_split), n_images)}
    if n_val == 0:
        return info
    from cbigan.scoring.localization import Localizer, map_settings

    sigma, stride = map_settings(cfg)
    results = Localizer(model, cfg, sigma=sigma, stride=stride).run(
        np.asarray(val_images), progress=progress, desc="calibrating the threshold", regions=regions)
    results = replace(results, fusion=None)  # calibrated here, not an older record's
    if regions is not None:
        results = replace(results, regions=np.asarray(regions, np.int32).reshape(-1, 2))
    if results.global_r is not None:
        weight = view_weight(results, cfg)
        info["global_weight"] = weight
        results = replace(results, global_weight=weight)
    lam = float(cfg.score_lambda)
    tiles = results.tile_maps(lam)
    fusion = [fusion_statistics(results.evidence(x, cfg.score_margin, tiles if x == lam else None), x)
              for x in sorted({lam, *FUSION_LAMBDAS})]
    fusion = None if any(f is None for f in fusion) else fusion
    info["fusion"] = fusion
    results = replace(results, fusion=fusion)
    info["rule_thresholds"] = {
        r: threshold_from_scores(results.image_scores(lam, r, cfg.score_topk, tiles, cfg.score_margin), percentile)
        for r in IMAGE_SCORE_RULES}
    if synthetic:
        info["synthetic_auroc"] = synthetic_separation(model, cfg, results, np.asarray(val_images), progress)
    scores = results.rule_scores(cfg)
    info["threshold"] = threshold_from_scores(scores, percentile)
    info["rule"] = threshold_rule(percentile, n_val, cfg.score_lambda, cfg.image_score)
    info["image_score"] = cfg.image_score
    if few_images_warning(n_val) is not None:
        info["warning"] = few_images_warning(n_val)
    info.update(val_score_min=float(np.min(scores)), val_score_mean=float(np.mean(scores)),
                val_score_max=float(np.max(scores)))
    return info


def synthetic_results(model, cfg: Config, clean, val_images: np.ndarray, progress: bool = False):
    """The results of the synthetic-defect copies of the held-out images (every kind of
    :data:`cbigan.scoring.selection.DEFECT_KINDS` in turn, :func:`cbigan.scoring.selection.synthetic_defects`
    seeded by the run), scored as ``clean`` (their results: same regions, global weight and fusion
    statistics); None with fewer than :data:`cbigan.scoring.selection.MIN_IMAGES` held-out images."""
    from cbigan.scoring.localization import Localizer, map_settings
    from cbigan.scoring.selection import DEFECT_KINDS, MIN_IMAGES, synthetic_defects

    if len(val_images) < MIN_IMAGES:
        return None
    regions = clean.regions
    copies = synthetic_defects(val_images, cfg.seed, kinds=DEFECT_KINDS, regions=regions)
    sigma, stride = map_settings(cfg)
    copy_regions = None if regions is None else np.concatenate([regions] * len(DEFECT_KINDS))
    bad = Localizer(model, cfg, sigma=sigma, stride=stride).run(copies, progress=progress,
                                                                 desc="synthetic defects", regions=copy_regions)
    return replace(bad, global_weight=clean.global_weight, fusion=clean.fusion, regions=copy_regions)


def synthetic_separation(model, cfg: Config, clean, val_images: np.ndarray, progress: bool = False) -> dict | None:
    """``{rule: {"local": auROC, "global": auROC}}``: how well each image-score rule separates the held-out
    images (their results ``clean``, with the run's calibrated global weight and fusion statistics) from
    their synthetic-defect copies (:func:`synthetic_results`), local (a pasted or inverted patch) and
    global (a large region shaded or moved). No test image is used. None with fewer than
    :data:`cbigan.scoring.selection.MIN_IMAGES` held-out images."""
    from cbigan.scoring.metrics import MetricError
    from cbigan.scoring.selection import DEFECT_KINDS, GLOBAL_DEFECTS, separation_auroc

    bad = synthetic_results(model, cfg, clean, val_images, progress)
    if bad is None:
        return None
    lam = float(cfg.score_lambda)
    first_global = DEFECT_KINDS.index(GLOBAL_DEFECTS[0]) * len(val_images)
    out = {}
    for rule in IMAGE_SCORE_RULES:
        c = clean.image_scores(lam, rule, cfg.score_topk, margin=cfg.score_margin)
        d = bad.image_scores(lam, rule, cfg.score_topk, margin=cfg.score_margin)
        try:
            out[rule] = {"local": separation_auroc(c, d[:first_global]), "global": separation_auroc(c, d[first_global:])}
        except MetricError:
            out[rule] = {"local": None, "global": None}
    return out


def view_weight(results, cfg: Config) -> float:
    """The weight of the global view's score in the image score (tiles trained with global views): the
    standard deviation of the held-out images' tiles scores over that of their global-view scores (each
    by the run's rule), so that both views vary alike on normal images and neither drowns the other;
    1 with fewer than 2 held-out images or a view that does not vary. ``results``: the held-out images'
    :class:`cbigan.core.results.ImageResults` with their global-view maps."""
    lam = cfg.score_lambda
    rule = cfg.image_score if cfg.image_score in MAP_RULES else "map_max"  # the fused rules: the maximum
    tiles = replace(results, global_r=None, global_fd=None, fusion=None).image_scores(
        lam, rule, cfg.score_topk, margin=cfg.score_margin)
    views = np.asarray(map_scores(results.global_maps(lam), rule, cfg.score_topk), np.float64)
    if len(tiles) < 2 or not (np.std(views) > 0 and np.std(tiles) > 0):
        return 1.0
    return float(np.std(tiles) / np.std(views))


def manual_threshold(value: float, cfg: Config) -> dict:
    """A threshold given by hand (``--threshold``), recorded as such."""
    return {"threshold": float(value), "percentile": None, "score_lambda": float(cfg.score_lambda),
            "n_val": 0, "rule": f"set by hand to {float(value):g}; anomalous when score > threshold"}
