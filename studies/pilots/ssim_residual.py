"""Pilot (not a feature): the residual part of the anomaly map as 1 - SSIM instead of mean |x - G(E(x))|.

    python studies/pilots/ssim_residual.py COPY_OF_RUN --rules map_max map_topk --data-dir ../shared/data

Runs evaluate.py with :func:`cbigan.scoring.score_patches` patched so that the map's residual part is
the channel mean of 1 - SSIM(x, G(E(x))) (Bergmann et al., "Improving unsupervised defect segmentation
by applying structural similarity to autoencoders", 2019: an 11x11 Gaussian window, sigma 1.5, reflected
at the patch border, constants for a data range of 2). Evaluate a copy of a run folder without its
pixel_maps.npz / scores_parts.npz, so the maps are computed anew. Result: results/small_defects/README.md.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tensorflow as tf
import cbigan.scoring as S, cbigan.localization as LZ

def gauss(size=11, sigma=1.5):
    import numpy as np
    a = np.arange(size) - size // 2
    g = np.exp(-a ** 2 / (2 * sigma ** 2)); g /= g.sum()
    k = np.outer(g, g)[:, :, None, None]
    return tf.constant(np.tile(k, (1, 1, 3, 1)), tf.float32)

K = gauss(int(os.environ.get('WIN', 11)), float(os.environ.get('WSIG', 1.5)))
pad = K.shape[0] // 2

def blur(t):
    t = tf.pad(t, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
    return tf.nn.depthwise_conv2d(t, K, [1, 1, 1, 1], 'VALID')

def ssim_map(a, b, rng=2.0):
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    ma, mb = blur(a), blur(b)
    va = blur(a * a) - ma * ma; vb = blur(b * b) - mb * mb; cov = blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))

orig = S.score_patches
def patched(encoder, generator, features, x):
    out = orig(encoder, generator, features, x)
    out['diff'] = tf.reduce_mean(1.0 - ssim_map(x, out['reconstruction'], float(os.environ.get('RNG', 2.0))), axis=-1)
    return out
S.score_patches = patched; LZ.score_patches = patched
from cbigan.cli.evaluate import main
sys.exit(main(sys.argv[1:]))
