"""Anomaly scores: ``A(x) = (1 - lambda) L_R + lambda L_fD`` with the EMA encoder/generator.

``L_R = sum |x - G(E(x))|`` and ``L_fD = sum |f_D(x, E(x)) - f_D(G(E(x)), E(x))|`` per sample. Objects
are scored whole; a texture image (resized to 512) is cut into 64 non-overlapping 64x64 patches that go
through the networks in one batched call, and the image score is the maximum patch score. The two
components are stored per patch, so any lambda is a cheap recombination (:func:`combine`).

:func:`score_patches` is the single implementation used by training-time evaluation, ``evaluate.py``
and the exported SavedModel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .config import Config
from .data import to_model_range, to_patches
from .networks import feature_extractor


def score_patches(encoder, generator, features, x):
    """Per-patch score parts for float images ``x`` in [-1, 1], shape [B, p, p, 3].

    Returns ``l_r`` [B], ``l_fd`` [B], ``reconstruction`` [B, p, p, 3] and ``diff`` [B, p, p] (channel
    mean of |x - G(E(x))|, the anomaly map).
    """
    z = encoder(x, training=False)
    recon = generator(z, training=False)
    abs_diff = tf.abs(x - recon)
    l_r = tf.reduce_sum(tf.reshape(abs_diff, (tf.shape(x)[0], -1)), axis=1)
    f_x = features([x, z], training=False)
    f_r = features([recon, z], training=False)
    l_fd = tf.reduce_sum(tf.reshape(tf.abs(f_x - f_r), (tf.shape(x)[0], -1)), axis=1)
    return {"l_r": l_r, "l_fd": l_fd, "reconstruction": recon,
            "diff": tf.reduce_mean(abs_diff, axis=-1)}


def combine(l_r, l_fd, lam: float):
    """Image scores from per-patch parts [N, P]: max over patches of (1 - lam) L_R + lam L_fD."""
    l_r, l_fd = np.asarray(l_r, np.float64), np.asarray(l_fd, np.float64)
    a = (1.0 - lam) * l_r + lam * l_fd
    return a.max(axis=-1) if a.ndim > 1 else a


@dataclass
class Scores:
    """Per-patch score parts of N images with P patches each (P = 1 for objects)."""

    l_r: np.ndarray   # [N, P]
    l_fd: np.ndarray  # [N, P]

    def image_scores(self, lam: float) -> np.ndarray:
        return combine(self.l_r, self.l_fd, lam)

    def argmax_patch(self, lam: float) -> np.ndarray:
        return ((1.0 - lam) * self.l_r + lam * self.l_fd).argmax(axis=1)


class Scorer:
    """Scores resized uint8 images with a trained model's EMA networks and its critic features."""

    def __init__(self, model, cfg: Config, patches_per_call: int = 256):
        self.cfg = cfg.resolved()
        self.model = model
        self.features = feature_extractor(model.critic, self.cfg.feature_layer)
        self.patches_per_call = patches_per_call
        self._fn = tf.function(self._score, reduce_retracing=True)

    @property
    def patches_per_image(self) -> int:
        return (self.cfg.image_size // self.cfg.patch_size) ** 2

    def _score(self, images_uint8):
        x = to_model_range(images_uint8)
        if self.cfg.kind == "texture":
            x = to_patches(x, self.cfg.patch_size)
        out = score_patches(self.model.ema_encoder, self.model.ema_generator, self.features, x)
        return out

    def raw(self, images_uint8):
        """Score parts, reconstructions and maps for a batch of resized uint8 images (patches flat)."""
        return self._fn(tf.convert_to_tensor(images_uint8, tf.uint8))

    def score(self, images_uint8: np.ndarray) -> Scores:
        """Per-patch L_R and L_fD for [N, S, S, 3] uint8 images, in batches."""
        ppi = self.patches_per_image
        per_call = max(1, self.patches_per_call // ppi)
        l_r, l_fd = [], []
        for i in range(0, len(images_uint8), per_call):
            out = self.raw(images_uint8[i:i + per_call])
            l_r.append(out["l_r"].numpy().reshape(-1, ppi))
            l_fd.append(out["l_fd"].numpy().reshape(-1, ppi))
        if not l_r:
            return Scores(np.zeros((0, ppi)), np.zeros((0, ppi)))
        return Scores(np.concatenate(l_r), np.concatenate(l_fd))
