"""The anomaly score of CBiGAN, in one place: change the score here and nowhere else.

Per network input (an object image, or one patch of a texture image) the networks give two parts
(:func:`cbigan.scoring.parts.score_patches`):

* ``L_R  = sum |x - G(E(x))|`` (pixel distance, summed over the patch), and
* ``L_fD = sum |f_D(x, E(x)) - f_D(G(E(x)), E(x))|`` (distance of critic features, summed),

and the same two parts per pixel as maps (channel means instead of sums, :mod:`cbigan.scoring.localization`).
The paper's score (Carrara et al., ICPR 2020, Eq. 7-9; the authors' ``score.py``) is

    A(x) = (1 - lambda) * L_R(x) + lambda * L_fD(x),      lambda = 0.1 by default,

and an image made of several patches scores the maximum over its patches. :func:`combine` is that
formula; it is used for per-patch parts, for whole anomaly maps, in NumPy and in the TensorFlow graph
(evaluation, threshold calibration, model selection, figures, predict and the exported SavedModel all
call it). :func:`image_scores` reduces per-patch scores to image scores. This module imports nothing
heavy, so reading stored results never loads TensorFlow.

Image-score rules (``Config.image_score``, ``--image-score``; :data:`IMAGE_SCORE_RULES`):

* ``paper``: the above, ``max over patches of (1 - lambda) L_R + lambda L_fD`` (sums over each patch):
  a defect covering 0.1% of an image adds 0.1% to a sum over the image, easily drowned by normal
  variation;
* ``map_max``: the maximum of the Gaussian-smoothed anomaly map at the same lambda
  (:mod:`cbigan.scoring.localization`), which a small defect raises fully;
* ``map_topk``: the mean of the highest ``score_topk`` share (default 1%) of the map's pixels, a less
  noisy version of the maximum;
* ``fused`` / ``fused_max`` (beyond the paper): every kind of evidence the run has (:func:`evidence`: the
  summed score ``paper``, the map's maximum ``map_max`` and, for tiles with global views, the global
  view's maximum ``global_max`` and its mean ``global_mean``), each standardized by the mean and
  standard deviation of its scores on the run's held-out normal images, ``z = (s - mean) / std``, then
  averaged (``fused``) or the largest taken (``fused_max``) (:func:`fuse`). A local defect raises
  ``map_max``, a global or diffuse anomaly the sums, and neither rule has to be guessed per run. The
  statistics are calibrated with the threshold (:func:`cbigan.scoring.threshold.calibrate_threshold`, stored
  under ``fusion`` in ``threshold.json``); without them (fewer than 2 held-out images) the fused rules
  score as ``map_max``.

The map rules look only at each image's own pixels (``regions``: tiles put an image on a mirrored
canvas) less a border ``margin`` (``Config.score_margin``; tiles leave half a tile out by default: the
image's edge and the seam with the mirrored canvas raise the map there on normal images, which the
maximum would pick up; evidence in results/small_defects).

:func:`rule_scores` is the one place that applies a rule; every user (evaluation, threshold, selection,
predict, export) calls it. :func:`anomaly_map` is the one place the map of a run with global views
is made (the tiles' map plus the weighted global view's).
"""

from __future__ import annotations

import numpy as np

#: The paper's lambda (weight of the feature part L_fD).
PAPER_LAMBDA = 0.1
#: Rules that fuse every kind of evidence, each standardized on held-out normal images (:func:`fuse`).
FUSED_RULES = ("fused", "fused_max")
#: Image-score rules: ``paper`` from the per-patch parts, the others from the anomaly map.
IMAGE_SCORE_RULES = ("paper", "map_max", "map_topk") + FUSED_RULES
#: Rules computed from the anomaly map alone (they need :func:`cbigan.scoring.localization.localize`'s maps).
MAP_RULES = ("map_max", "map_topk")
#: Rules that need the anomaly maps (the map rules and the fused ones); they also use the global view.
RULES_WITH_MAPS = MAP_RULES + FUSED_RULES
#: The kinds of evidence :func:`evidence` gives (the last two only for tiles with global views).
EVIDENCE = ("paper", "map_max", "global_max", "global_mean")
#: Default share of the map's pixels that ``map_topk`` averages.
DEFAULT_TOPK = 0.01
#: Default standard deviation, in pixels of the model-resolution map, of the Gaussian smoothing of
#: anomaly maps (:func:`cbigan.scoring.localization.gaussian_blur`).
DEFAULT_MAP_SIGMA = 4.0


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith(("tensorflow", "keras"))


def combine(part_r, part_fd, lam: float):
    """``(1 - lam) * part_r + lam * part_fd``, elementwise.

    ``part_r`` / ``part_fd``: the pixel and feature parts, of any (equal) shape: per-patch sums
    ``L_R`` / ``L_fD`` [N, P] (non-negative, unbounded) or per-pixel maps [N, H, W]. NumPy arrays give a
    NumPy array (float64 for non-float32 inputs), TensorFlow tensors a tensor (same dtype), so one
    definition serves the Python path and the exported graph. ``lam`` in [0, 1] (0: pixels only,
    1: features only).
    """
    lam = float(lam)
    if _is_tensor(part_r) or _is_tensor(part_fd):
        return (1.0 - lam) * part_r + lam * part_fd
    r, fd = np.asarray(part_r), np.asarray(part_fd)
    if r.dtype != np.float32 or fd.dtype != np.float32:
        r, fd = r.astype(np.float64), fd.astype(np.float64)
    return (1.0 - lam) * r + lam * fd


def image_scores(l_r, l_fd, lam: float):
    """Image scores from per-patch parts: the maximum over patches of :func:`combine`.

    ``l_r``, ``l_fd``: [N, P] (P patches per image; P = 1 for objects) or [N]. Returns [N]: float64 for
    NumPy inputs, a tensor for tensors. Higher means more anomalous.
    """
    a = combine(l_r, l_fd, lam)
    if _is_tensor(a):
        import tensorflow as tf

        return tf.reduce_max(a, axis=-1) if a.shape.rank and a.shape.rank > 1 else a
    a = np.asarray(a, np.float64)
    return a.max(axis=-1) if a.ndim > 1 else a


def best_patch(l_r, l_fd, lam: float) -> np.ndarray:
    """Index [N] of the highest-scoring patch of each image (row-major; 0 for objects)."""
    a = np.asarray(combine(l_r, l_fd, lam), np.float64)
    return a.argmax(axis=-1) if a.ndim > 1 else np.zeros(len(a), np.int64)


def topk_count(n_pixels: int, topk: float) -> int:
    """How many of ``n_pixels`` map pixels ``map_topk`` averages: ``ceil(topk * n)``, at least 1."""
    import math

    return max(1, min(int(n_pixels), int(math.ceil(float(topk) * int(n_pixels) - 1e-9))))


def scored_box(h, w, margin: int):
    """``(top, bottom, left, right)``: the part of an image region of ``h`` x ``w`` map pixels (its
    top-left corner at 0, 0) that the map rules score: ``margin`` pixels left out on every side, at
    most a quarter of each side (so half of a small image still counts). NumPy ints or tensors."""
    if _is_tensor(h) or _is_tensor(w):
        import tensorflow as tf

        m = tf.minimum(tf.minimum(tf.cast(margin, h.dtype), h // 4), w // 4)
    else:
        m = np.minimum(np.minimum(int(margin), np.asarray(h) // 4), np.asarray(w) // 4)
    return m, h - m, m, w - m


def map_scores(maps, rule: str, topk: float = DEFAULT_TOPK, regions=None, margin: int = 0):
    """Image scores [N] from anomaly maps [N, H, W] (static H, W for tensors) by a map rule.

    ``map_max``: the maximum pixel; ``map_topk``: the mean of the :func:`topk_count` highest pixels.
    Only the pixels of :func:`scored_box` count: ``regions`` [N, 2] int ``(h, w)``, the top-left part of
    each map that is the image (None: the whole map), less ``margin`` >= 0 map pixels at its border.
    NumPy in, float64 NumPy out; tensors in, a tensor out.
    """
    if rule not in MAP_RULES:
        raise ValueError(f"{rule!r} is not a map rule ({', '.join(MAP_RULES)})")
    if int(margin) < 0:
        raise ValueError(f"the score margin must be >= 0 map pixels, got {margin}")
    if _is_tensor(maps) or _is_tensor(regions):
        return _map_scores_tf(maps, rule, topk, regions, int(margin))
    maps = np.asarray(maps, np.float64)
    n, h, w = maps.shape
    regions = np.tile([h, w], (n, 1)) if regions is None else np.asarray(regions, np.int64).reshape(n, 2)
    out = np.empty(n, np.float64)
    for i, (rh, rw) in enumerate(regions):
        top, bottom, left, right = scored_box(min(int(rh), h), min(int(rw), w), margin)
        flat = maps[i, top:bottom, left:right].ravel()
        if rule == "map_max":
            out[i] = flat.max()
        else:
            k = topk_count(flat.size, topk)
            out[i] = np.partition(flat, flat.size - k)[-k:].mean()
    return out


def _map_scores_tf(maps, rule, topk, regions, margin):
    import tensorflow as tf

    maps = tf.convert_to_tensor(maps)
    n, h, w = tf.shape(maps)[0], int(maps.shape[1]), int(maps.shape[2])
    flat = tf.reshape(maps, (n, h * w))
    if regions is None and margin == 0:  # every pixel counts
        if rule == "map_max":
            return tf.reduce_max(flat, axis=1)
        return tf.reduce_mean(tf.math.top_k(flat, k=topk_count(h * w, topk), sorted=False).values, axis=1)
    regions = (tf.tile(tf.constant([[h, w]], tf.int32), [n, 1]) if regions is None
               else tf.minimum(tf.cast(regions, tf.int32), [[h, w]]))
    top, bottom, left, right = scored_box(regions[:, 0], regions[:, 1], margin)
    rows, cols = tf.range(h)[None, :, None], tf.range(w)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None])
              & (cols >= left[:, None, None]) & (cols < right[:, None, None]))
    lowest = tf.fill(tf.shape(flat), tf.constant(-np.inf, maps.dtype))
    flat = tf.where(tf.reshape(inside, (n, h * w)), flat, lowest)
    if rule == "map_max":
        return tf.reduce_max(flat, axis=1)
    # k of each image from its own number of scored pixels: the k_max highest, then the first k of them
    counts = (bottom - top) * (right - left)
    k = tf.maximum(1, tf.cast(tf.math.ceil(float(topk) * tf.cast(counts, tf.float64) - 1e-9), tf.int32))
    best = tf.math.top_k(flat, k=topk_count(h * w, topk), sorted=True).values
    take = tf.range(tf.shape(best)[1])[None, :] < k[:, None]
    total = tf.reduce_sum(tf.where(take, best, tf.zeros_like(best)), axis=1)
    return total / tf.cast(k, maps.dtype)


def global_weight(cfg) -> float:
    """The weight of the global view's score in the image score of a run trained with ``global_views``:
    calibrated with the threshold on the held-out images (:func:`cbigan.scoring.threshold.view_weight`), kept in
    the threshold record (``threshold.json``, merged into ``config.json``: ``cfg.extra["threshold"]``) or
    given as ``cfg.extra["global_weight"]``; 1 before calibration or without held-out images."""
    if "global_weight" in cfg.extra:
        return float(cfg.extra["global_weight"])
    record = cfg.extra.get("threshold")
    return float(record.get("global_weight", 1.0)) if isinstance(record, dict) else 1.0


def anomaly_map(tile_maps, global_maps=None, regions=None, global_weight: float = 1.0):
    """The anomaly map shown and measured (pixel auROC, AUPRO) [N, S, S], from the maps at one lambda.

    ``tile_maps`` [N, S, S]: the model's own map (stitched tiles, or the whole object / texture image).
    Without ``global_maps`` it is the anomaly map. With them ([N, p, p]: tiles trained with global views,
    beyond the paper) each is resized (bilinear) to its image's region (``regions`` [N, 2] (h, w); None:
    the whole map) and added times ``global_weight``, the same calibrated weight :func:`rule_scores` gives
    the global view in the image score (:func:`cbigan.core.imageops.region_canvas`; 0 outside the region).
    A defect larger than a tile (magnetic tile's breaks and uneven surfaces) then shows in the map as it
    does in the score (AUPRO evidence: results/small_defects). NumPy in, NumPy out (float32); tensors in,
    a tensor out.
    """
    if global_maps is None:
        return tile_maps
    import tensorflow as tf

    from cbigan.core.imageops import region_canvas

    size = int(tile_maps.shape[1])
    if regions is None:  # every image fills the map
        regions = tf.fill(tf.stack([tf.shape(tile_maps)[0], 2]), size)
    extra = region_canvas(global_maps, regions, size) * float(global_weight)
    if _is_tensor(tile_maps) or _is_tensor(global_maps):
        return tile_maps + extra
    return np.asarray(tile_maps, np.float32) + extra.numpy()


def evidence(lam: float, *, l_r, l_fd, maps, regions=None, margin: int = 0, global_maps=None) -> dict:
    """Every kind of evidence of N images at ``lam``, as image scores [N] by name (:data:`EVIDENCE`):

    * ``paper``: the summed score (:func:`image_scores` of the per-patch parts ``l_r``, ``l_fd`` [N, P]):
      global evidence, raised by an anomaly spread over the image;
    * ``map_max``: the maximum of the model's own map ``maps`` [N, H, W] over ``regions`` less
      ``margin`` (:func:`map_scores`): local evidence, raised fully by a defect of a few pixels;
    * with ``global_maps`` [N, p, p] (tiles trained with global views): ``global_max``, the global view's
      map maximum, and ``global_mean``, its mean (the whole image at one tile's size, summed).

    NumPy in, float64 NumPy out; tensors in, tensors out."""
    out = {"paper": image_scores(l_r, l_fd, lam), "map_max": map_scores(maps, "map_max", regions=regions,
                                                                        margin=margin)}
    if global_maps is not None:
        out["global_max"] = map_scores(global_maps, "map_max")
        if _is_tensor(global_maps):
            import tensorflow as tf

            out["global_mean"] = tf.reduce_mean(global_maps, axis=[1, 2])
        else:
            out["global_mean"] = np.asarray(global_maps, np.float64).mean(axis=(1, 2))
    return out


def fusion_statistics(held_out: dict, lam: float) -> dict | None:
    """The statistics of :func:`fuse` from the held-out normal images' :func:`evidence` at ``lam``:
    ``{"lambda": lam, "mean": {name: m}, "std": {name: s}}`` over the kinds whose scores vary (std > 0
    and finite); None with fewer than 2 images or none that varies (the fused rules then score as
    ``map_max``)."""
    mean, std = {}, {}
    for name, values in held_out.items():
        v = np.asarray(values, np.float64).ravel()
        if len(v) < 2 or not np.all(np.isfinite(v)):
            continue
        s = float(np.std(v))
        if s > 0:
            mean[name], std[name] = float(np.mean(v)), s
    return {"lambda": float(lam), "mean": mean, "std": std} if mean else None


def fuse(ev: dict, stats: dict, reduce: str = "mean"):
    """The fused image score [N]: every kind of evidence in ``stats`` standardized,
    ``z = (ev[name] - mean[name]) / std[name]``, then their mean (``reduce="mean"``, rule ``fused``) or
    maximum (``"max"``, rule ``fused_max``). A z of 3 is three held-out standard deviations above the
    held-out mean. ``ev``: :func:`evidence` (NumPy or tensors); ``stats``: :func:`fusion_statistics`."""
    names = [n for n in EVIDENCE if n in stats["mean"] and n in ev]
    if not names:
        raise ValueError(f"no evidence in common between the scores ({sorted(ev)}) and the statistics "
                         f"({sorted(stats['mean'])})")
    zs = [(ev[n] - stats["mean"][n]) / stats["std"][n] for n in names]
    if any(_is_tensor(z) for z in zs):
        import tensorflow as tf

        z = tf.stack([tf.cast(z, tf.float32) for z in zs], axis=0)
        return tf.reduce_mean(z, axis=0) if reduce == "mean" else tf.reduce_max(z, axis=0)
    z = np.stack([np.asarray(z, np.float64) for z in zs])
    return z.mean(axis=0) if reduce == "mean" else z.max(axis=0)


def describe_rule(rule: str, global_view: bool = False, fusion=None) -> str:
    """One line saying what makes the image score of ``rule`` (for reports): the views and evidence."""
    glob = " plus the global view's (the whole image as one tile), weighted" if global_view else ""
    if rule == "paper":
        return "image score: paper, the summed score (1 - lambda) L_R + lambda L_fD (maximum over patches)"
    if rule in MAP_RULES:
        what = "maximum" if rule == "map_max" else "mean of the highest pixels"
        return f"image score: {rule}, the anomaly map's {what}{glob}"
    kinds = "the summed score, the map maximum" + (", the global view's maximum and mean" if global_view else "")
    if fusion is None:
        return (f"image score: {rule}, scored as map_max (too few held-out images to calibrate the fusion of "
                f"{kinds}){glob}")
    how = "mean" if rule == "fused" else "maximum"
    return f"image score: {rule}, the {how} of {kinds}, each standardized on the held-out normal images"


def fusion_at(fusion, lam: float) -> dict:
    """The entry of ``fusion`` (one :func:`fusion_statistics` dict, or a list of them at several
    lambdas) calibrated at ``lam``; ValueError when there is none."""
    entries = [fusion] if isinstance(fusion, dict) else list(fusion)
    for entry in entries:
        if entry is not None and abs(float(entry["lambda"]) - float(lam)) < 1e-9:
            return entry
    have = ", ".join(f"{float(e['lambda']):g}" for e in entries if e is not None)
    raise ValueError(f"the fused rules' statistics were calibrated at lambda {have or 'none'}, not {lam:g}")


def fusion_stats(cfg) -> list | dict | None:
    """The fused rules' statistics of a run (a list of :func:`fusion_statistics`, one per lambda):
    calibrated with the threshold on the held-out images
    (``threshold.json``'s ``fusion``, merged into ``config.json``: ``cfg.extra["threshold"]``) or given
    as ``cfg.extra["fusion"]``; None when there are none (the fused rules then score as ``map_max``)."""
    if "fusion" in cfg.extra:
        return cfg.extra["fusion"]
    record = cfg.extra.get("threshold")
    return record.get("fusion") if isinstance(record, dict) else None


def rule_scores(rule: str, lam: float, *, l_r=None, l_fd=None, maps=None, topk: float = DEFAULT_TOPK,
                regions=None, margin: int = 0, global_maps=None, global_weight: float = 1.0,
                fusion: dict | None = None):
    """Image scores [N] by ``rule`` at ``lam``: ``paper`` from the per-patch parts ``l_r``, ``l_fd``
    [N, P] (:func:`image_scores`), the map rules from the anomaly maps ``maps`` [N, H, W] at the same
    lambda, over each image's ``regions`` less ``margin`` (:func:`map_scores`), the fused rules from
    both (:func:`evidence`, :func:`fuse` with the held-out statistics ``fusion``, calibrated at the same
    lambda: ValueError for another; None: scored as ``map_max``). ValueError for an unknown rule or a
    missing input.

    ``global_maps`` [N, p, p] (tiles trained with global views, beyond the paper): the maps of each image's
    global view at the same lambda; the map rules then add ``global_weight`` times the same rule over the
    whole of it (weight calibrated on held-out normal images: :func:`cbigan.scoring.threshold.calibrate_threshold`),
    and the fused rules fuse it as two more kinds of evidence. The paper's rule ignores them."""
    if rule == "paper":
        if l_r is None or l_fd is None:
            raise ValueError("the paper's score needs the per-patch parts l_r and l_fd")
        return image_scores(l_r, l_fd, lam)
    if rule not in RULES_WITH_MAPS:
        raise ValueError(f"image score rule must be one of {', '.join(IMAGE_SCORE_RULES)}, got {rule!r}")
    if maps is None:
        raise ValueError(f"the {rule} score needs the anomaly maps")
    if rule in FUSED_RULES and fusion is not None:
        if l_r is None or l_fd is None:
            raise ValueError(f"the {rule} score needs the per-patch parts l_r and l_fd")
        ev = evidence(lam, l_r=l_r, l_fd=l_fd, maps=maps, regions=regions, margin=margin,
                      global_maps=global_maps)
        return fuse(ev, fusion_at(fusion, lam), "max" if rule == "fused_max" else "mean")
    map_rule = "map_max" if rule in FUSED_RULES else rule
    scores = map_scores(maps, map_rule, topk, regions, margin)
    if global_maps is None:
        return scores
    return scores + float(global_weight) * map_scores(global_maps, map_rule, topk)
