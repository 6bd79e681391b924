"""Pilot (not yet a feature): the anomaly map of a global-view tiles run with its global view's map added.

    python studies/pilots/global_map.py RUN [RUN ...] [--alphas 0,0.5,1,2] [--every K] [--out CSV]

RUN: a tiles run trained with ``--global-views`` and evaluated (its ``pixel_maps.npz`` holds the tiles'
map parts and the global view's, [N, p, p]). No network runs: for each alpha the map is

    tiles map + alpha * w * (the global view's map, bilinear to each image's region, zero outside it)

(w: the run's calibrated global weight, the one its image score uses; alpha 0 is the product's map
today), and the pilot prints the pixel auROC, AUPRO@0.3 and the image auROC of that map's maximum (less
the run's score margin), one row per run and alpha, appended to ``--out``. ``--mode max`` takes the
pixelwise maximum instead of the sum.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.anomaly_score import combine, global_weight, map_scores
from cbigan.config import Config
from cbigan.imageops import region_canvas
from cbigan.metrics import auroc
from cbigan.pixel_metrics import pixel_metrics, region_masks, select_images
from cbigan.results import ImageResults
from common import emit, run_label


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--alphas", default="0,0.25,0.5,1,2,4")
    ap.add_argument("--mode", choices=("sum", "max"), default="sum")
    ap.add_argument("--every", type=int, default=1, help="every K-th test image only (quicker)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for run in map(Path, args.runs):
        cfg = Config.from_json(run / "config.json").resolved()
        lam, margin, w = cfg.score_lambda, int(cfg.score_margin), global_weight(cfg)
        px = ImageResults.load_maps(run / "pixel_maps.npz")
        k = slice(None, None, args.every)
        paths = px.paths[k]
        y = np.array([Path(p).parent.name != "good" for p in paths])
        reg = px.regions[k]
        local = np.asarray(combine(px.map_r[k], px.map_fd[k], lam), np.float32)
        # the product's resize (anomaly_score.anomaly_map), done once for every alpha
        glob = region_canvas(combine(px.global_r[k], px.global_fd[k], lam), reg, local.shape[1]).numpy()
        keep, _ = select_images(y, px.has_mask[k], warn=False)
        valid = region_masks(reg[keep], local.shape[1:])
        masks = px.masks[k][keep]
        for a in (float(v) for v in args.alphas.split(",")):
            maps = local + a * w * glob if args.mode == "sum" else np.maximum(local, a * w * glob)
            pm = pixel_metrics(maps[keep], masks, valid=valid)
            row = {"run": run_label(run), "mode": args.mode, "alpha": a, "w": w,
                   "every": args.every, "pixel_auroc": pm["pixel_auroc"], "aupro": pm["aupro"],
                   "image_auroc_map_max": auroc(y, map_scores(maps, "map_max", regions=reg, margin=margin))}
            emit(row, args.out)


if __name__ == "__main__":
    main()
