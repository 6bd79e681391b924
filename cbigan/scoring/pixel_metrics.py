"""Pixel-level localization metrics against ground-truth masks: pixel auROC and AUPRO (numpy + scipy).

Both take anomaly maps [N, H, W] (higher = more anomalous) and binary masks [N, H, W] of the same size
(the model resolution: :func:`cbigan.data.pipeline.load_test_set` resizes the masks with nearest neighbour).

* **pixel auROC**: the area under the ROC curve of all pixels of all images, anomalous pixels (mask 1)
  against normal ones (mask 0); equal to ``sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel())``,
  computed as the Mann-Whitney statistic (ties count one half) from two sorts instead of one argsort.
* **AUPRO** (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, and the MVTec AD
  evaluation code): the ground-truth regions are the connected components (8-connectivity) of every mask.
  At a threshold t a pixel is predicted anomalous when its value is >= t; the per-region overlap PRO(t) is
  the mean, over all regions of all images, of the share of the region's pixels predicted anomalous, and
  FPR(t) is the share of all normal pixels predicted anomalous. The curve (0, 0), (FPR(t), PRO(t)) for
  every distinct value t from the highest down, (1, 1) is integrated with the trapezoidal rule up to
  FPR = 0.3 (linearly interpolated there) and divided by 0.3, so a perfect map scores 1.

Images: a good image counts as all-normal; a defective image without a mask must be left out by the
caller (:func:`select_images` does it and counts them).

Speed: only ``np.sort`` of the normal pixels, an argsort of the (few) anomalous ones, ``searchsorted``
and one ``scipy.ndimage.label`` call for all masks; about half a second for 100 maps of 256x256 on one
core (``python -m cbigan.bench metrics``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: AUPRO integrates the PRO curve up to this false-positive rate (MVTec AD's choice).
FPR_LIMIT = 0.3
#: 8-connectivity inside each image, none across images (for one ``label`` call on [N, H, W]).
_STRUCTURE = np.zeros((3, 3, 3), int)
_STRUCTURE[1] = 1


class PixelMetricError(ValueError):
    """The maps and masks do not fit together (shapes, NaN)."""


def _check(maps, masks):
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape or maps.ndim != 3:
        raise PixelMetricError(f"maps {maps.shape} and masks {masks.shape} must both be [N, H, W]")
    if maps.dtype.kind != "f":
        maps = maps.astype(np.float64)
    if not np.all(np.isfinite(maps)):
        raise PixelMetricError("anomaly maps contain NaN or infinity")
    return maps, masks.astype(bool)


@dataclass
class _Split:
    neg: np.ndarray        # sorted values of the normal pixels
    pos: np.ndarray        # values of the anomalous pixels, sorted
    pos_w: np.ndarray      # 1 / size of each anomalous pixel's region, in the same order
    n_regions: int


def _split(maps: np.ndarray, masks: np.ndarray, with_regions: bool = True, valid=None) -> _Split:
    if valid is not None:  # pixels outside the images' regions (tiles: the mirrored canvas) count nowhere
        valid = np.asarray(valid, bool)
        if valid.shape != masks.shape:
            raise PixelMetricError(f"valid {valid.shape} must have the maps' shape {masks.shape}")
        masks = masks & valid
        neg = np.sort(maps[valid & ~masks], kind="quicksort")
    else:
        neg = np.sort(maps[~masks], kind="quicksort")
    pos = maps[masks]
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    w, n_regions = np.empty(0), 0
    if with_regions and len(pos):
        labels, n_regions = ndimage.label(masks, structure=_STRUCTURE)
        region = labels[masks]
        w = (1.0 / np.bincount(region)[region])[order]
    return _Split(neg, pos, w, int(n_regions))


def _auroc(s: _Split) -> float:
    n_pos, n_neg = len(s.pos), len(s.neg)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.searchsorted(s.neg, s.pos, side="left")
    upto = np.searchsorted(s.neg, s.pos, side="right")
    u = below.sum(dtype=np.float64) + 0.5 * (upto - below).sum(dtype=np.float64)
    return float(u / (float(n_pos) * float(n_neg)))


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the curve (x non-decreasing) from its start to ``x_max``, interpolated there."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ins = int(np.searchsorted(x, x_max, side="right"))          # first point beyond x_max
    area = float(np.sum(0.5 * (y[1:ins] + y[:ins - 1]) * np.diff(x[:ins]))) if ins > 1 else 0.0
    if 0 < ins < len(x) and x[ins - 1] < x_max:
        y_max = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        area += 0.5 * (y[ins - 1] + y_max) * (x_max - x[ins - 1])
    return area


def pro_curve(s: _Split, fpr_limit: float | None = FPR_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct value from the highest down, with (0, 0) and (1, 1) at the ends.

    With ``fpr_limit``, only the part up to the first point beyond it (all AUPRO needs).
    """
    n_neg = len(s.neg)
    start, pos = 0, s.pos
    if fpr_limit is not None and n_neg:
        c = min(n_neg, int(np.floor(fpr_limit * n_neg)) + 1)   # fewest normal pixels with FPR > limit
        lo = s.neg[n_neg - c]
        start = int(np.searchsorted(s.neg, lo, side="left"))
        pos = pos[np.searchsorted(pos, lo, side="left"):]
    neg_tail = s.neg[start:]                                     # every normal pixel >= the lowest t
    t = np.concatenate([neg_tail, pos])
    t.sort()
    if len(t):
        t = t[np.concatenate([np.diff(t) != 0, [True]])][::-1]      # distinct values, descending
    fpr = (len(neg_tail) - np.searchsorted(neg_tail, t, side="left")) / max(n_neg, 1)
    cum_w = np.concatenate([[0.0], np.cumsum(s.pos_w)])
    pro = (cum_w[-1] - cum_w[np.searchsorted(s.pos, t, side="left")]) / max(s.n_regions, 1)
    fpr = np.concatenate([[0.0], np.minimum(fpr, 1.0), [1.0]])
    pro = np.concatenate([[0.0], np.minimum(pro, 1.0), [1.0]])
    return fpr, pro


def _aupro(s: _Split, fpr_limit: float) -> float:
    if s.n_regions == 0 or len(s.neg) == 0:
        return float("nan")
    fpr, pro = pro_curve(s, fpr_limit)
    return trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def pixel_auroc(maps, masks) -> float:
    """Pixel-level auROC over all pixels (NaN without anomalous or without normal pixels)."""
    maps, masks = _check(maps, masks)
    return _auroc(_split(maps, masks, with_regions=False))


def aupro(maps, masks, fpr_limit: float = FPR_LIMIT) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (NaN without regions)."""
    maps, masks = _check(maps, masks)
    return _aupro(_split(maps, masks), fpr_limit)


def pixel_metrics(maps, masks, fpr_limit: float = FPR_LIMIT, valid=None) -> dict:
    """``pixel_auroc``, ``aupro`` and the counts they rest on, from one pass over the pixels.

    ``valid``: optional boolean [N, H, W]: only these pixels count (the images' own regions of a canvas,
    :meth:`cbigan.core.kinds.InputKind.fit`)."""
    maps, masks = _check(maps, masks)
    s = _split(maps, masks, valid=valid)
    return {"pixel_auroc": _auroc(s), "aupro": _aupro(s, fpr_limit), "n_images": int(len(maps)),
            "n_regions": s.n_regions, "n_anomalous_pixels": int(len(s.pos)),
            "n_normal_pixels": int(len(s.neg))}


def select_images(labels, has_mask, warn: bool = True) -> tuple[np.ndarray, int]:
    """Which images enter the pixel metrics: good ones (all-normal) and defective ones with a mask.

    Returns (boolean selection [N], number of defective images left out for lack of a mask); warns once
    when there are any.
    """
    labels = np.asarray(labels).astype(int)
    has_mask = np.asarray(has_mask, bool)
    keep = (labels == 0) | has_mask
    excluded = int(np.sum(~keep))
    if excluded and warn:
        warnings.warn(f"{excluded} defective test image(s) without a ground-truth mask are left out of "
                      f"the pixel metrics", stacklevel=2)
    return keep, excluded


def region_masks(regions, shape_hw) -> np.ndarray:
    """Boolean [N, H, W]: True inside each image's top-left ``(h, w)`` region ([N, 2]) of an H x W map."""
    regions = np.asarray(regions, int).reshape(-1, 2)
    yy = np.arange(shape_hw[0])[None, :, None]
    xx = np.arange(shape_hw[1])[None, None, :]
    return (yy < regions[:, 0, None, None]) & (xx < regions[:, 1, None, None])
