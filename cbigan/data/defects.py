"""Synthetic defects drawn into training batches, for denoising training (``--denoise``).

A reconstruction model that sees only normal images learns to copy whatever it is shown, defects
included, when they look like the normal texture's own streaks and spots (magnetic tile:
results/small_defects, seventh study). Denoising training (a denoising autoencoder, Vincent et al.,
ICML 2008; the reconstructive sub-network of DRAEM, Zavrtanik et al., ICCV 2021) gives the encoder
a copy of each training image with a synthetic defect drawn in and asks the generator for the clean
image, so that at test time a real defect is replaced by normal surface and its residual is large.

Each defect is one filled rotated rectangle per image, drawn with probability ``prob``:

* sides log-uniform between 1 pixel and ``max_frac`` of the image side, each independently (spots,
  blobs and thin lines at any angle: blowholes, cracks, scratches);
* filled, half of the time, with one constant value drawn uniformly between the image's own minimum
  and maximum (dark or bright spots), otherwise with the same region of the next image in the batch
  (a cut-paste of foreign surface).

Everything is a stateless function of ``seed``, so a resumed run draws what the uninterrupted one
would have drawn. Not in the paper; ``--preset paper`` never uses it.
"""

from __future__ import annotations

import math

import tensorflow as tf

#: Largest defect side as a share of the image (or tile) side.
MAX_FRAC = 0.25


def draw_defects(x, prob: float, seed, max_frac: float = MAX_FRAC):
    """Images with one synthetic defect drawn into each with probability ``prob``, and where.

    ``x``: float images ``[B, H, W, C]`` in the model's input range (any range: fills come from the
    images themselves); ``prob`` in [0, 1]; ``seed``: shape-[2] integer tensor for the stateless draws.
    Returns ``(x_defect [B, H, W, C] same dtype, mask [B, H, W, 1] float32 in {0, 1})``: outside the
    mask ``x_defect`` equals ``x``. Raises ``ValueError`` for ``prob`` outside [0, 1].
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    u = tf.random.stateless_uniform((b, 8), seed=seed)
    col = lambda i: tf.reshape(u[:, i], (-1, 1, 1))  # noqa: E731  one draw per image, [B, 1, 1]
    side = tf.minimum(hf, wf)
    log_max = tf.math.log(tf.maximum(max_frac * side, 1.0))
    half_a = 0.5 * tf.exp(col(0) * log_max)  # half sides in pixels: log-uniform in [0.5, max_frac*side/2]
    half_b = 0.5 * tf.exp(col(1) * log_max)
    cy, cx = col(2) * hf, col(3) * wf
    angle = col(4) * math.pi
    yy = tf.reshape(tf.range(hf) + 0.5, (1, -1, 1)) - cy
    xx = tf.reshape(tf.range(wf) + 0.5, (1, 1, -1)) - cx
    along = tf.cos(angle) * xx + tf.sin(angle) * yy
    across = -tf.sin(angle) * xx + tf.cos(angle) * yy
    inside = (tf.abs(along) <= half_a) & (tf.abs(across) <= half_b) & (col(5) < prob)
    mask = tf.cast(inside, tf.float32)[..., None]
    xf = tf.cast(x, tf.float32)
    lo = tf.reduce_min(xf, axis=(1, 2, 3), keepdims=True)
    hi = tf.reduce_max(xf, axis=(1, 2, 3), keepdims=True)
    constant = lo + col(6)[..., None] * (hi - lo)
    fill = tf.where(col(7)[..., None] < 0.5, constant, tf.roll(xf, 1, axis=0))  # broadcast to [B, H, W, C]
    out = mask * fill + (1.0 - mask) * xf
    return tf.cast(out, x.dtype), mask
