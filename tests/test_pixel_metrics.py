"""Pixel auROC and AUPRO against scikit-learn and a slow, obviously correct reference (numpy only)."""

import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from cbigan.scoring.pixel_metrics import (
    FPR_LIMIT, PixelMetricError, aupro, pixel_auroc, pixel_metrics, select_images, trapezoid_to)


def reference_aupro(maps, masks, fpr_limit=FPR_LIMIT):
    """Threshold by threshold, region by region, as the definition reads (MVTec AD, IJCV 2021).

    Regions: 8-connected components of each mask. For every distinct map value t (highest first):
    FPR = normal pixels >= t / normal pixels; PRO = mean over all regions of (region pixels >= t) / size.
    The curve (0,0), points, (1,1) is integrated by trapezoids up to fpr_limit, the last piece cut
    at fpr_limit on the straight line between its points, and divided by fpr_limit.
    """
    regions = []
    for i, m in enumerate(masks):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= t
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_cut) / 2
    return area / fpr_limit


def tiny_case(rng, n=3, size=10, decimals=None):
    """Small masks with a few rectangles (some touching, one image all good) and noisy maps."""
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, y:y + h, x:x + w] = 1
    maps = rng.random(masks.shape) + masks * rng.uniform(0, 1.5)
    if decimals is not None:  # many ties
        maps = np.round(maps, decimals)
    return maps, masks


@pytest.mark.parametrize("seed", range(12))
def test_aupro_and_auroc_equal_the_references(seed):
    rng = np.random.default_rng(seed)
    maps, masks = tiny_case(rng, decimals=[None, 1, 2][seed % 3])
    m = pixel_metrics(maps, masks)
    assert m["aupro"] == pytest.approx(reference_aupro(maps, masks), abs=1e-12)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    labels = [ndimage.label(x, structure=np.ones((3, 3)))[1] for x in masks]
    assert m["n_regions"] == sum(labels)
    assert m["n_anomalous_pixels"] == masks.sum() and m["n_normal_pixels"] == (masks == 0).sum()
    for limit in (0.05, 0.5, 1.0):
        assert aupro(maps, masks, limit) == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-12)


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    _, masks = tiny_case(rng)
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert aupro(1.0 - perfect, masks) == pytest.approx(0.0, abs=1e-9)
    assert pixel_auroc(1.0 - perfect, masks) == pytest.approx(0.0)
    # graded: a perfect ranking with noise only inside each class still gives 1
    graded = masks * (2 + rng.random(masks.shape)) + rng.random(masks.shape)
    assert aupro(graded, masks) == pytest.approx(1.0)
    assert reference_aupro(graded, masks) == pytest.approx(1.0)


def test_pro_weights_regions_not_pixels():
    """One big region fully found and one small region missed: PRO 1/2, whatever the pixel counts."""
    masks = np.zeros((1, 20, 20), np.uint8)
    masks[0, :10, :10] = 1      # 100 pixels
    masks[0, 15, 15] = 1        # 1 pixel, not 8-connected to the first
    maps = masks.astype(float).copy()
    maps[0, 15, 15] = 0.0       # the small region gets the normal pixels' value
    m = pixel_metrics(maps, masks)
    assert m["n_regions"] == 2
    # at the top threshold: PRO 0.5 at FPR 0; the next point is FPR 1: the area to 0.3 is 0.3 * (0.5 + 0.65) / 2
    assert m["aupro"] == pytest.approx(reference_aupro(maps, masks))
    assert m["aupro"] == pytest.approx((0.5 + (0.5 + 0.5 * 0.3)) / 2)
    # pixel auROC counts pixels instead: almost perfect
    assert m["pixel_auroc"] > 0.99


def test_8_connectivity_and_no_regions_across_images():
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1    # diagonal neighbours: one region
    masks[1, 1, 1] = 1                     # same place in the next image: its own region
    assert pixel_metrics(np.random.default_rng(0).random(masks.shape), masks)["n_regions"] == 2


def test_undefined_and_bad_inputs():
    maps = np.random.default_rng(0).random((2, 5, 5))
    empty = np.zeros((2, 5, 5), np.uint8)
    m = pixel_metrics(maps, empty)
    assert np.isnan(m["aupro"]) and np.isnan(m["pixel_auroc"]) and m["n_regions"] == 0
    with pytest.raises(PixelMetricError):
        pixel_metrics(maps, empty[:, :4])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(PixelMetricError):
        pixel_metrics(bad, empty)
    assert pixel_metrics(maps[0], (maps[0] > 0.5).astype(np.uint8))["n_images"] == 1  # one map is fine


def test_select_images_warns_about_defective_images_without_mask():
    labels = [0, 0, 1, 1, 1]
    has_mask = [True, True, True, False, False]
    with pytest.warns(UserWarning, match="2 defective test image"):
        keep, excluded = select_images(labels, has_mask)
    assert keep.tolist() == [True, True, True, False, False] and excluded == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep, excluded = select_images(labels, [False, False, True, True, True])  # good: no mask needed
    assert keep.all() and excluded == 0


def test_trapezoid_to():
    x, y = np.array([0.0, 0.1, 0.1, 0.5, 1.0]), np.array([0.0, 0.2, 0.6, 1.0, 1.0])
    # 0..0.1: 0.01; vertical step: 0; 0.1..0.3 on the line from (0.1, 0.6) to (0.5, 1.0): 0.2 * (0.6 + 0.8) / 2
    assert trapezoid_to(x, y, 0.3) == pytest.approx(0.01 + 0.14)
    assert trapezoid_to(x, y, 0.5) == pytest.approx(0.01 + 0.32)   # exactly at a point: no interpolation
