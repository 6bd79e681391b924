"""The anomaly score of CBiGAN, in one place: change the score here and nowhere else.

Per network input (an object image, or one patch of a texture image) the networks give two parts
(:func:`cbigan.scoring.score_patches`):

* ``L_R  = sum |x - G(E(x))|`` (pixel distance, summed over the patch), and
* ``L_fD = sum |f_D(x, E(x)) - f_D(G(E(x)), E(x))|`` (distance of critic features, summed),

and the same two parts per pixel as maps (channel means instead of sums, :mod:`cbigan.localization`).
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
  (:mod:`cbigan.localization`), which a small defect raises fully;
* ``map_topk``: the mean of the highest ``score_topk`` share (default 1%) of the map's pixels, a less
  noisy version of the maximum.

:func:`rule_scores` is the one place that applies a rule; every user (evaluation, threshold, selection,
predict, export) calls it.
"""

from __future__ import annotations

import numpy as np

#: The paper's lambda (weight of the feature part L_fD).
PAPER_LAMBDA = 0.1
#: Image-score rules: ``paper`` from the per-patch parts, the others from the anomaly map.
IMAGE_SCORE_RULES = ("paper", "map_max", "map_topk")
#: Rules computed from the anomaly map (they need :func:`cbigan.localization.localize`'s maps).
MAP_RULES = ("map_max", "map_topk")
#: Default share of the map's pixels that ``map_topk`` averages.
DEFAULT_TOPK = 0.01
#: Default standard deviation, in pixels of the model-resolution map, of the Gaussian smoothing of
#: anomaly maps (:func:`cbigan.localization.gaussian_blur`).
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


def map_scores(maps, rule: str, topk: float = DEFAULT_TOPK):
    """Image scores [N] from anomaly maps [N, H, W] (static H, W for tensors) by a map rule.

    ``map_max``: the maximum pixel; ``map_topk``: the mean of the :func:`topk_count` highest pixels.
    NumPy in, float64 NumPy out; tensors in, a tensor out.
    """
    if rule not in MAP_RULES:
        raise ValueError(f"{rule!r} is not a map rule ({', '.join(MAP_RULES)})")
    if _is_tensor(maps):
        import tensorflow as tf

        flat = tf.reshape(maps, (tf.shape(maps)[0], -1))
        if rule == "map_max":
            return tf.reduce_max(flat, axis=1)
        n = int(maps.shape[1]) * int(maps.shape[2])
        return tf.reduce_mean(tf.math.top_k(flat, k=topk_count(n, topk), sorted=False).values, axis=1)
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    if rule == "map_max":
        return flat.max(axis=1)
    k = topk_count(flat.shape[1], topk)
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def rule_scores(rule: str, lam: float, *, l_r=None, l_fd=None, maps=None, topk: float = DEFAULT_TOPK):
    """Image scores [N] by ``rule`` at ``lam``: ``paper`` from the per-patch parts ``l_r``, ``l_fd``
    [N, P] (:func:`image_scores`), the map rules from the anomaly maps ``maps`` [N, H, W] at the same
    lambda (:func:`map_scores`). ValueError for an unknown rule or a missing input."""
    if rule == "paper":
        if l_r is None or l_fd is None:
            raise ValueError("the paper's score needs the per-patch parts l_r and l_fd")
        return image_scores(l_r, l_fd, lam)
    if rule not in MAP_RULES:
        raise ValueError(f"image score rule must be one of {', '.join(IMAGE_SCORE_RULES)}, got {rule!r}")
    if maps is None:
        raise ValueError(f"the {rule} score needs the anomaly maps")
    return map_scores(maps, rule, topk)
