"""Pilot (not a feature): the global view scored on its flips too (test-time augmentation).

    python studies/pilots/global_tta.py RUN [RUN ...] [--data-dir DIR] [--out CSV]

RUN: an evaluated tiles run trained with ``--global-views``. The global view is one 64 px tile per image,
so its score is noisier than the tiles' maximum over hundreds of tiles; it costs one network pass, so
mapping it also flipped left-right, up-down and both (4 passes, the maps flipped back and averaged) is
cheap. For the test images and the run's held-out train/good images (the same seeded split as training):

* the tiles' score from the stored maps (``pixel_maps.npz``, the run's rule and margin);
* the global view's map maximum, plain and averaged over the 4 flips;
* the image auROC of tiles + w * global: w the run's calibrated weight for the plain view, and for the
  averaged view w times the ratio of the two global scores' spreads on the held-out images (so that
  the averaged view keeps the plain view's share of the score; no test labels).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.anomaly_score import combine, global_weight, map_scores
from cbigan.data import load_test_set
from cbigan.imageops import to_model_range
from cbigan.localization import global_view_parts, map_settings
from cbigan.metrics import auroc
from cbigan.networks import feature_extractor
from cbigan.results import ImageResults
from common import emit, held_out_images, load_run, run_label

FLIPS = ((False, False), (True, False), (False, True), (True, True))  # (left-right, up-down)


def global_scores(model, cfg, canvases, regions, chunk: int = 32) -> dict:
    """Per flip, [N] maxima of the global view's map at the run's lambda and sigma; and of their mean."""
    feats = feature_extractor(model.critic, cfg.feature_layer)
    sigma, _ = map_settings(cfg)

    @tf.function(reduce_retracing=True)
    def one(x, r, lr, ud):
        x = to_model_range(x, cfg.normalize)
        # flip each image inside its own region: the canvas region is the top-left (h, w)
        def flip(args):
            img, hw = args
            part = img[:hw[0], :hw[1]]
            part = tf.cond(lr, lambda: part[:, ::-1], lambda: part)
            part = tf.cond(ud, lambda: part[::-1], lambda: part)
            return tf.pad(part, [[0, tf.shape(img)[0] - hw[0]], [0, tf.shape(img)[1] - hw[1]], [0, 0]])
        x = tf.map_fn(flip, (x, r), fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
        g_r, g_fd = global_view_parts(model.ema_encoder, model.ema_generator, feats, x, r,
                                      patch=cfg.patch_size, sigma=sigma)
        m = combine(g_r, g_fd, cfg.score_lambda)
        m = tf.cond(ud, lambda: m[:, ::-1], lambda: m)
        return tf.cond(lr, lambda: m[:, :, ::-1], lambda: m)

    maps = []
    for lr, ud in FLIPS:
        out = [one(tf.constant(canvases[i:i + chunk]), tf.constant(regions[i:i + chunk]), tf.constant(lr),
                   tf.constant(ud)).numpy() for i in range(0, len(canvases), chunk)]
        maps.append(np.concatenate(out))
    n = len(canvases)
    scores = {f"flip{k}": m.reshape(n, -1).max(1) for k, m in enumerate(maps)}
    scores["mean"] = np.mean(maps, 0).reshape(n, -1).max(1)
    return scores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for run in args.runs:
        cfg, model = load_run(run, args.data_dir)
        w = global_weight(cfg)
        val, vreg = held_out_images(cfg)
        v = global_scores(model, cfg, val, vreg)
        test = load_test_set(cfg, with_masks=False)
        t = global_scores(model, cfg, test.images, test.regions)
        y = np.asarray(test.labels)
        px = ImageResults.load_maps(Path(run) / "pixel_maps.npz")
        assert [Path(p).parts[-2:] for p in px.paths] == [Path(p).parts[-2:] for p in test.paths]
        tiles = map_scores(px.tile_maps(cfg.score_lambda), cfg.image_score, cfg.score_topk,
                           regions=px.regions, margin=int(cfg.score_margin))
        w_mean = w * v["flip0"].std() / v["mean"].std()
        row = {"run": run_label(run), "w": w, "w_mean": float(w_mean),
               "auroc_tiles": auroc(y, tiles), "auroc_global": auroc(y, t["flip0"]),
               "auroc_global_mean": auroc(y, t["mean"]),
               "auroc_product": auroc(y, tiles + w * t["flip0"]),
               "auroc_tta": auroc(y, tiles + w_mean * t["mean"]),
               **{f"auroc_global_{k}": auroc(y, s) for k, s in t.items() if k.startswith("flip")}}
        emit(row, args.out)


if __name__ == "__main__":
    main()
