"""Pixel-metric computation time: ``python -m cbigan.bench metrics [--maps 100] [--size 256]``.

Times :func:`cbigan.scoring.pixel_metrics.pixel_metrics` (pixel auROC and AUPRO in one pass) on ``--maps``
random anomaly maps of ``--size`` x ``--size`` with ground-truth masks of a few blobs each (half of the
images defective, the rest good), best of ``--repeats``; the target is at most
:data:`TARGET_SECONDS` for 100 maps of 256x256. Beside it, for reference, the same figures the plain
way: ``sklearn.metrics.roc_auc_score`` on the flattened arrays (checked equal) and the MVTec AD
evaluation code's AUPRO recipe (one argsort of all pixels, cumulative sums; checked equal), and the
image-level metrics of as many scores. No TensorFlow.
"""

from __future__ import annotations

import os
import time

import numpy as np

TARGET_SECONDS = 2.0


def synthetic_maps(n: int, size: int, seed: int = 0):
    """Maps [n, size, size] float32 and masks uint8: blobs brighter than a noisy background."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 40, size / 8, 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
    noise = ndimage.gaussian_filter(rng.random((n, size, size)).astype(np.float32), (0, 2, 2))
    maps = noise + 0.05 * masks * rng.uniform(0.2, 1.0, (n, 1, 1)).astype(np.float32)
    return maps.astype(np.float32), masks


def mvtec_recipe_aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """AUPRO as the MVTec AD evaluation code computes it: argsort all pixels, cumulative sums."""
    from scipy import ndimage

    from cbigan.scoring.pixel_metrics import trapezoid_to

    fp_change = np.zeros(maps.shape, np.float64)
    pro_change = np.zeros(maps.shape, np.float64)
    n_regions = 0
    for i, m in enumerate(masks):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        n_regions += n
        fp_change[i][labels == 0] = 1
        if n:
            sizes = np.bincount(labels.ravel())
            pro_change[i][labels > 0] = 1.0 / sizes[labels[labels > 0]]
    order = np.argsort(maps.ravel())[::-1]
    values = maps.ravel()[order]
    fpr = np.cumsum(fp_change.ravel()[order]) / fp_change.sum()
    pro = np.cumsum(pro_change.ravel()[order]) / n_regions
    keep = np.append(np.diff(values) != 0, True)
    fpr = np.concatenate([[0.0], np.minimum(fpr[keep], 1), [1.0]])
    pro = np.concatenate([[0.0], np.minimum(pro[keep], 1), [1.0]])
    return trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(*, n_maps: int, size: int, repeats: int, reference: bool) -> int:
    """Time the pixel metrics of ``n_maps`` synthetic maps of ``size`` x ``size``, best of ``repeats``;
    ``reference``: also the scikit-learn / MVTec-recipe ways (slower). Prints the figures."""
    from cbigan.scoring.metrics import image_metrics
    from cbigan.scoring.pixel_metrics import aupro, pixel_auroc, pixel_metrics

    maps, masks = synthetic_maps(n_maps, size)
    n_pix = maps.size
    print(f"pixel metrics, numpy {np.__version__}, {os.cpu_count()} CPU cores: {n_maps} maps of "
          f"{size}x{size} ({n_pix / 1e6:.2f} M pixels, {int(masks.sum())} anomalous), "
          f"best of {repeats}")
    t_all, m = _best(lambda: pixel_metrics(maps, masks), repeats)
    t_auroc, _ = _best(lambda: pixel_auroc(maps, masks), repeats)
    t_aupro, _ = _best(lambda: aupro(maps, masks), repeats)
    print(f"  pixel_metrics (pixel auROC + AUPRO, one pass) {t_all:8.3f} s   "
          f"pixel auROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f}  ({m['n_regions']} regions)")
    print(f"  pixel auROC alone                             {t_auroc:8.3f} s")
    print(f"  AUPRO alone                                   {t_aupro:8.3f} s")
    if reference:
        from sklearn.metrics import roc_auc_score

        t_sk, sk = _best(lambda: roc_auc_score(masks.ravel(), maps.ravel()), 1)
        t_mv, mv = _best(lambda: mvtec_recipe_aupro(maps, masks), 1)
        print(f"  reference: sklearn roc_auc_score (flattened)  {t_sk:8.3f} s   {sk:.4f} "
              f"({'equal' if abs(sk - m['pixel_auroc']) < 1e-9 else 'DIFFERENT'})")
        print(f"  reference: MVTec AD code's AUPRO recipe       {t_mv:8.3f} s   {mv:.4f} "
              f"({'equal' if abs(mv - m['aupro']) < 1e-6 else 'DIFFERENT'})")
    rng = np.random.default_rng(1)
    labels = (np.arange(n_maps) < n_maps // 2).astype(int)
    scores = rng.random(n_maps) + labels
    t_img, _ = _best(lambda: image_metrics(labels, scores), repeats)
    print(f"  image-level metrics of {n_maps} scores              {t_img:8.4f} s")
    scale = (100 * 256 * 256) / n_pix
    print(f"target: pixel metrics of 100 maps of 256x256 in <= {TARGET_SECONDS:g} s: "
          + (f"{t_all:.2f} s, {'met' if t_all <= TARGET_SECONDS else 'NOT met'}" if scale == 1 else
             f"{t_all * scale:.2f} s scaled from this size (run the defaults for the real figure)"))
    return 0
