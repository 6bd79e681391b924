"""Pilot: how the image score of a global-view tiles run weighs and reads its global view.

    python studies/pilots/view_weight.py RUN [RUN ...] [--alphas 0,0.5,1,1.5,2,3] [--out CSV]

RUN: an evaluated tiles run trained with ``--global-views`` (its ``pixel_maps.npz`` holds the tiles' map
parts and the global view's). No network runs. For each alpha and each reading of the global view's map
(``max``, the product's; ``topk``: the mean of its highest 1%; ``mean``) the image auROC of

    tiles score (the run's rule over its region less the score margin) + alpha * w * global reading

(w: the run's calibrated weight; alpha 1 with ``max`` is the product's score; alpha 0 the tiles alone).
Test labels choose nothing here: the pilot shows how flat the auROC is around the calibrated weight.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.anomaly_score import global_weight, map_scores
from cbigan.config import Config
from cbigan.metrics import auroc
from cbigan.results import ImageResults
from common import emit, run_label


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--alphas", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for run in map(Path, args.runs):
        cfg = Config.from_json(run / "config.json").resolved()
        lam, margin, rule, w = cfg.score_lambda, int(cfg.score_margin), cfg.image_score, global_weight(cfg)
        px = ImageResults.load_maps(run / "pixel_maps.npz")
        if px.global_r is None:
            print(f"{run}: its pixel_maps.npz holds no global view (evaluated before they were stored): skipped")
            continue
        y = np.array([Path(p).parent.name != "good" for p in px.paths])
        tiles = map_scores(px.tile_maps(lam), rule, regions=px.regions, margin=margin)
        g = px.global_maps(lam).reshape(len(y), -1)
        readings = {"max": g.max(1), "topk": np.sort(g, 1)[:, -max(1, g.shape[1] // 100):].mean(1), "mean": g.mean(1)}
        row = {"run": run_label(run), "w": w, "global_views": cfg.global_views}
        for name, s_g in readings.items():
            row[f"global_{name}_alone"] = auroc(y, s_g)
            for a in (float(v) for v in args.alphas.split(",")):
                row[f"{name}_a{a:g}"] = auroc(y, tiles + a * w * s_g)
        emit(row, args.out)


if __name__ == "__main__":
    main()
