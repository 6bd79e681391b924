"""Pilot (not a feature): anomaly maps of two scales combined, on the stored maps of two magnetic tile runs.

    python studies/pilots/two_scales.py

Reads pixel_maps.npz of runs/small_defects/magnetic_tile/tiles_image-seed1 (native resolution) and
tiles_half-seed1 (--scale 0.5), brings the half-scale maps to full size (bilinear), standardizes each
scale by the median and 99th percentile of its pixels over the test images (no labels), and scores the
mean and the maximum of the two by the map maximum (margin 32) and the pixel metrics.
Result: results/small_defects/README.md (fifth study).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scipy.ndimage import zoom

from cbigan.anomaly_score import map_scores
from cbigan.metrics import auroc
from cbigan.pixel_metrics import pixel_metrics, region_masks, select_images
from cbigan.results import ImageResults

BASE = Path(__file__).resolve().parents[2] / "runs/small_defects/magnetic_tile"
LAM, MARGIN = 0.1, 32


def standardized(maps, regions):
    """Maps less the median of their image pixels, over the 99th percentile's distance from it."""
    vals = np.concatenate([m[:h, :w].ravel()[::97] for m, (h, w) in zip(maps, regions)])
    med = np.median(vals)
    return (maps - med) / (np.percentile(vals, 99) - med)


def main():
    full = ImageResults.load_maps(BASE / "tiles_image-seed1/pixel_maps.npz")
    half = ImageResults.load_maps(BASE / "tiles_half-seed1/pixel_maps.npz")
    labels = pd.read_csv(BASE / "tiles_image-seed1/scores.csv").label.values
    assert full.paths == half.paths
    regions = full.regions
    keep, _ = select_images(labels, full.has_mask, warn=False)
    valid = region_masks(regions[keep], full.map_r.shape[1:])
    mf = full.maps(LAM)
    mh = np.stack([zoom(m, 2, order=1) for m in half.maps(LAM)]).astype(np.float32)
    nf, nh = standardized(mf, regions), standardized(mh, regions)
    for name, maps in [("native", mf), ("half, upsampled", mh), ("mean of both", (nf + nh) / 2),
                       ("max of both", np.maximum(nf, nh))]:
        s = map_scores(maps, "map_max", regions=regions, margin=MARGIN)
        pm = pixel_metrics(maps[keep], full.masks[keep], valid=valid)
        print(f"{name:16s} image auROC {auroc(labels, s):.4f}  pixel auROC {pm['pixel_auroc']:.4f}  "
              f"AUPRO {pm['aupro']:.4f}", flush=True)


if __name__ == "__main__":
    main()
