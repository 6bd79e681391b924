"""Pilot (not yet a feature): a tiles model's global view scored beside its tiles.

    python studies/pilots/global_view.py RUN [RUN ...] [--data-dir DIR] [--out CSV]

RUN: a tiles run trained with ``--global-views`` (or without: then the global view is an image the
model never saw whole). For the test images and the run's held-out train/good images (the same seeded
split as training), it computes

* the **local** map: the run's own tiles map (:class:`cbigan.localization.Localizer` at the run's sigma,
  stride and lambda) and its image score by the run's rule (map_max less the score margin);
* the **global** map: the whole image (its region of the canvas, normalized as the canvas is) resized to
  one tile (:func:`cbigan.imageops.region_views`), mapped by the same networks (:func:`cbigan.localization.global_view_parts`, sigma
  4 at the tile's 64 px), image score its maximum;

and the image auROC of each view and of their combinations, the views' scores each divided by the
standard deviation of its held-out normal images' scores (no test labels): the sum, the maximum; and
the pixel metrics of the local map, the global map (bilinear to the region) and their sum (each map
divided by its held-out 99th-percentile pixel value). Prints one row per run and appends it to ``--out``.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.anomaly_score import combine, map_scores
from cbigan.data import load_test_set
from cbigan.imageops import region_canvas, region_views, to_model_range
from cbigan.localization import Localizer, global_view_parts, map_settings
from cbigan.metrics import auroc
from cbigan.networks import feature_extractor
from cbigan.pixel_metrics import pixel_metrics, region_masks, select_images
from common import emit, held_out_images, load_run

GLOBAL_SIGMA = 4.0


def global_maps(model, cfg, canvases, regions, chunk: int = 32) -> np.ndarray:
    """[N, p, p] anomaly maps of the images' global views (p = the tile size): the product's
    :func:`cbigan.localization.global_view_parts` at lambda, sigma 4 px of the tile."""
    feats = feature_extractor(model.critic, cfg.feature_layer)

    @tf.function(reduce_retracing=True)
    def one(x, r):
        g_r, g_fd = global_view_parts(model.ema_encoder, model.ema_generator, feats,
                                      to_model_range(x, cfg.normalize), r, patch=cfg.patch_size, sigma=GLOBAL_SIGMA)
        return combine(g_r, g_fd, cfg.score_lambda)

    out = [one(tf.constant(canvases[i:i + chunk]), tf.constant(regions[i:i + chunk]))
           for i in range(0, len(canvases), chunk)]
    return np.concatenate([o.numpy() for o in out])


def local_maps(model, cfg, canvases):
    """The tiles' own maps (without the global view the product adds for such a run)."""
    from dataclasses import replace

    cfg = replace(cfg, global_views=0.0)
    sigma, stride = map_settings(cfg)
    return Localizer(model, cfg, sigma=sigma, stride=stride).run(canvases, progress=True).maps(cfg.score_lambda)


def draw(model, cfg, out):
    """One row per image (one good, then the first of each defect type): image, tiles map, global view,
    the global view's map; titles give the tiles score, the global score and the weighted sum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cbigan.anomaly_score import global_weight

    test = load_test_set(cfg)
    types = list(test.defect_types)
    picked = [types.index(t) for t in ["good"] + sorted(set(types) - {"good"})]
    imgs, reg = test.images[picked], test.regions[picked]
    t_loc = local_maps(model, cfg, imgs)
    s_l = map_scores(t_loc, "map_max", regions=reg, margin=int(cfg.score_margin))
    g = global_maps(model, cfg, imgs, reg)
    w = global_weight(cfg)
    p = int(cfg.patch_size)
    views = region_views(imgs, reg, p).numpy().clip(0, 255).astype(np.uint8)
    fig, axes = plt.subplots(len(picked), 4, figsize=(10, 2.6 * len(picked)), squeeze=False)
    vmax_l, vmax_g = np.percentile(t_loc, 99.5), np.percentile(g, 99.5)
    for row, i in enumerate(picked):
        h, wd = reg[row]
        ax = axes[row]
        ax[0].imshow(imgs[row, :h, :wd])
        ax[0].set_title(f"{types[i]}: {Path(test.paths[i]).name}", fontsize=8)
        ax[1].imshow(t_loc[row, :h, :wd], cmap="inferno", vmin=0, vmax=vmax_l)
        ax[1].set_title(f"tiles map, max {s_l[row]:.3f}", fontsize=8)
        ax[2].imshow(views[row])
        ax[2].set_title(f"global view ({p} px)", fontsize=8)
        ax[3].imshow(g[row], cmap="inferno", vmin=0, vmax=vmax_g)
        ax[3].set_title(f"its map, max {g[row].max():.3f}; score {s_l[row] + w * g[row].max():.3f}", fontsize=8)
        for a in ax:
            a.set_xticks([]), a.set_yticks([])
    fig.suptitle(f"{cfg.category}: tiles and the global view (score = tiles max + {w:.2f} x global max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--every", type=int, default=1, help="every K-th test and held-out image only (smoke tests)")
    ap.add_argument("--figure", default=None, help="only draw one good and one image of each defect type: "
                    "the image, its tiles map, its global view and that view's map (PNG path)")
    args = ap.parse_args()
    for run in args.runs:
        cfg, model = load_run(run, args.data_dir)
        if args.figure:
            draw(model, cfg, args.figure)
            continue
        val, vreg = held_out_images(cfg, args.every)
        test = load_test_set(cfg)
        if args.every > 1:
            from dataclasses import replace
            k = slice(None, None, args.every)
            test = replace(test, images=test.images[k], labels=np.asarray(test.labels)[k],
                           defect_types=list(test.defect_types)[k], paths=list(test.paths)[k],
                           masks=None if test.masks is None else test.masks[k],
                           has_mask=np.asarray(test.has_mask)[k], regions=test.regions[k])
        y, treg = np.asarray(test.labels), test.regions
        margin = int(cfg.score_margin)
        # held-out normal images: each view's score spread (and the maps' 99th percentile)
        v_loc = local_maps(model, cfg, val)
        v_glob = global_maps(model, cfg, val, vreg)
        s_vl = map_scores(v_loc, "map_max", regions=vreg, margin=margin)
        s_vg = v_glob.reshape(len(v_glob), -1).max(1)
        q_l = np.percentile(np.concatenate([m[:h, :w].ravel() for m, (h, w) in zip(v_loc, vreg)]), 99)
        q_g = np.percentile(v_glob, 99)
        del v_loc
        t_loc = local_maps(model, cfg, test.images)
        t_glob = global_maps(model, cfg, test.images, treg)
        s_l = map_scores(t_loc, "map_max", regions=treg, margin=margin)
        s_g = t_glob.reshape(len(t_glob), -1).max(1)
        zl, zg = s_l / s_vl.std(), s_g / s_vg.std()
        row = {"run": Path(run).name, "category": cfg.category, "global_views": cfg.global_views,
               "auroc_local": auroc(y, s_l), "auroc_global": auroc(y, s_g),
               "auroc_sum": auroc(y, zl + zg), "auroc_max": auroc(y, np.maximum(zl - np.median(s_vl) / s_vl.std(),
                                                                            zg - np.median(s_vg) / s_vg.std())),
               "auroc_rawsum": auroc(y, s_l + s_g), "scale_ratio": float(s_vg.std() / s_vl.std()),
               "corr": float(np.corrcoef(s_l, s_g)[0, 1])}
        for t in sorted(set(test.defect_types) - {"good"}):
            sel = np.array([d in ("good", t) for d in test.defect_types])
            row[f"sum_{t}"] = auroc(y[sel], (zl + zg)[sel])
            row[f"local_{t}"] = auroc(y[sel], s_l[sel])
        if test.masks is not None:
            keep, _ = select_images(y, test.has_mask, warn=False)
            valid = region_masks(treg[keep], t_loc.shape[1:])
            g_canvas = region_canvas(t_glob, treg, t_loc.shape[1]).numpy()
            for name, maps in (("local", t_loc), ("global", g_canvas), ("sum", t_loc / q_l + g_canvas / q_g),
                               ("rawsum", t_loc + g_canvas)):
                pm = pixel_metrics(maps[keep], test.masks[keep], valid=valid)
                row[f"pixel_auroc_{name}"], row[f"aupro_{name}"] = pm["pixel_auroc"], pm["aupro"]
                if name in ("sum", "rawsum"):
                    row[f"auroc_{name}map_max"] = auroc(y, map_scores(maps, "map_max", regions=treg, margin=margin))
                    row[f"auroc_{name}map_max_m0"] = auroc(y, map_scores(maps, "map_max", regions=treg, margin=0))
        emit(row, args.out)


if __name__ == "__main__":
    main()
