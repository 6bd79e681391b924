"""Pilot (not a feature): the anomaly map from the *signed* residual x - G(E(x)), smoothed, then its
absolute value (or one sign), instead of the smoothed absolute residual.

    python studies/pilots/signed_residual.py RUN --data-dir ../shared/data [--sigmas 2 4 8]

Smoothing |x - G(E(x))| keeps the fine, zero-mean streaks of a textured surface that the reconstruction
misses; smoothing x - G(E(x)) first averages them out and keeps a coherent local deviation (a blowhole
is a dark blob: its residual has one sign). Same weights, same tiles, stride and stitching as
evaluation (:class:`cbigan.localization.Localizer` with :func:`cbigan.scoring.score_patches` patched
to return the channel mean of the signed residual too; lambda 0: the residual part only), smoothed here at
each sigma; image score = map maximum over each image's own pixels less the run's score margin.
Prints image auROC (and, for reference, the unsigned residual's at the same sigmas). Result:
results/small_defects/README.md (eighth study).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np
import tensorflow as tf

import cbigan.localization as LZ
import cbigan.scoring as S
from cbigan.anomaly_score import map_scores
from cbigan.data import load_test_set
from cbigan.metrics import auroc
from cbigan.model import load_trained

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--data-dir", required=True)
p.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 4.0, 8.0])
p.add_argument("--chunk", type=int, default=40)
args = p.parse_args()

orig = S.score_patches


def patched(encoder, generator, features, x):
    out = orig(encoder, generator, features, x)
    signed = tf.reduce_mean(x - out["reconstruction"], axis=-1)
    out["diff"] = tf.concat([signed[..., None], out["diff"][..., None]], axis=-1)  # [B, p, p, 2]
    return out


def stitch2(d, pos, patch, size):  # the two maps through the same stitching
    return tf.stack([orig_stitch(d[..., 0], pos, patch, size), orig_stitch(d[..., 1], pos, patch, size)], -1)


orig_stitch = LZ.stitch

import dataclasses  # noqa: E402

cfg, model = load_trained(args.run)
cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
test = load_test_set(cfg)
labels = np.asarray(test.labels)
regions = np.asarray(test.regions)
margin = int(cfg.score_margin)
print(f"{args.run}: {len(labels)} test images, canvas {cfg.image_size}, margin {margin}", flush=True)

loc = LZ.Localizer(model, cfg, sigma=0.0, lam=0.0)
images_per_call = loc.images_per_call


@tf.function(reduce_retracing=True)
def raw_maps(images_uint8):
    x = LZ.to_model_range(images_uint8, cfg.normalize)
    size, patch = cfg.image_size, cfg.patch_size
    pos = LZ.patch_positions(size, patch, loc.stride)
    patches = LZ.extract_patches(x, pos, patch)
    out = patched(model.ema_encoder, model.ema_generator, loc.features, patches)
    return stitch2(out["diff"], pos, patch, size)  # [N, S, S, 2]: signed, unsigned


scores = {}
for i in range(0, len(labels), args.chunk):
    chunk = test.images[i:i + args.chunk]
    raws = []
    for j in range(0, len(chunk), images_per_call):
        raws.append(raw_maps(tf.convert_to_tensor(chunk[j:j + images_per_call])).numpy())
    raw = np.concatenate(raws)
    for sigma in args.sigmas:
        blurred = LZ.gaussian_blur(tf.convert_to_tensor(np.moveaxis(raw, -1, 1).reshape(-1, *raw.shape[1:3])),
                                   sigma).numpy().reshape(len(raw), 2, *raw.shape[1:3])
        signed, unsigned = blurred[:, 0], blurred[:, 1]
        r = regions[i:i + len(raw)]
        for name, m in (("|signed|", np.abs(signed)), ("darker", -signed), ("brighter", signed),
                        ("unsigned", unsigned)):
            scores.setdefault((name, sigma), []).append(map_scores(m, "map_max", regions=r, margin=margin))
    print(f"{min(i + args.chunk, len(labels))}/{len(labels)}", flush=True)

for (name, sigma), parts in sorted(scores.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"sigma {sigma:g}  {name:9s} image auROC {auroc(labels, np.concatenate(parts)):.4f}")
