"""Pilot (not a feature): a third view between the tiles and the global view, with today's weights.

    python studies/pilots/mid_view.py RUN [RUN ...] [--data-dir DIR] [--sizes 128,192] [--out CSV]

RUN: an evaluated tiles run trained with ``--global-views``. Each image's region is resized to one
``size`` x ``size`` square (as the global view is resized to one tile, :func:`cbigan.imageops.region_views`),
mapped as a tiles canvas (overlapping 64 px tiles at the run's stride, :func:`cbigan.localization.localize`)
and read by its maximum. The model never trained on that scale: the pilot asks whether such a view would
add to the score before anyone trains for it. Weight of each view: the ratio of the tiles' and the view's
score spreads on the held-out images (the product's rule for the global view, no test labels).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.anomaly_score import global_weight, map_scores
from cbigan.data import load_test_set
from cbigan.imageops import region_views, to_model_range
from cbigan.localization import Localizer, localize, map_settings
from cbigan.metrics import auroc
from cbigan.networks import feature_extractor
from common import emit, held_out_images, load_run, run_label


def view_scores(model, cfg, canvases, regions, size: int, chunk: int = 16) -> np.ndarray:
    feats = feature_extractor(model.critic, cfg.feature_layer)
    sigma, stride = map_settings(cfg)

    @tf.function(reduce_retracing=True)
    def one(x, r):
        v = region_views(to_model_range(x, cfg.normalize), r, size)
        out = localize(model.ema_encoder, model.ema_generator, feats, tf.ensure_shape(v, [None, size, size, 3]),
                       patch=cfg.patch_size, lam=cfg.score_lambda, sigma=sigma, stride=stride)
        return tf.reduce_max(tf.reshape(out["anomaly_map"], (tf.shape(x)[0], -1)), axis=1)

    return np.concatenate([one(tf.constant(canvases[i:i + chunk]), tf.constant(regions[i:i + chunk])).numpy()
                           for i in range(0, len(canvases), chunk)])


def product_parts(model, cfg, canvases, regions):
    """The tiles' score and the global view's score, as the product computes them."""
    sigma, stride = map_settings(cfg)
    res = Localizer(model, cfg, sigma=sigma, stride=stride).run(canvases, regions=regions, progress=True)
    tiles = map_scores(res.tile_maps(cfg.score_lambda), cfg.image_score, cfg.score_topk, regions=regions,
                       margin=int(cfg.score_margin))
    glob = res.global_maps(cfg.score_lambda).reshape(len(canvases), -1).max(1)
    return tiles, glob


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--sizes", default="128,192")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for run in args.runs:
        cfg, model = load_run(run, args.data_dir)
        w = global_weight(cfg)
        val, vreg = held_out_images(cfg)
        test = load_test_set(cfg, with_masks=False)
        y = np.asarray(test.labels)
        v_t, v_g = product_parts(model, cfg, val, vreg)
        t_t, t_g = product_parts(model, cfg, test.images, test.regions)
        base = t_t + w * t_g
        row = {"run": run_label(run), "w": w, "auroc_tiles": auroc(y, t_t),
               "auroc_global": auroc(y, t_g), "auroc_product": auroc(y, base)}
        for s in sizes:
            v_m = view_scores(model, cfg, val, vreg, s)
            t_m = view_scores(model, cfg, test.images, test.regions, s)
            w_m = v_t.std() / max(v_m.std(), 1e-12)
            row[f"auroc_mid{s}"] = auroc(y, t_m)
            row[f"w_mid{s}"] = float(w_m)
            row[f"auroc_product_plus_mid{s}"] = auroc(y, base + w_m * t_m)
            row[f"corr_mid{s}_tiles"] = float(np.corrcoef(t_m, t_t)[0, 1])
        emit(row, args.out)


if __name__ == "__main__":
    main()
