"""The networks' side of the anomaly score: the parts ``L_R`` and ``L_fD`` with the EMA encoder/generator.

``L_R = sum |x - G(E(x))|`` and ``L_fD = sum |f_D(x, E(x)) - f_D(G(E(x)), E(x))|`` per sample. Objects
are scored whole; a texture image (resized to 512) is cut into 64 non-overlapping 64x64 patches that go
through the networks in one batched call. The two components are returned per patch
(:class:`cbigan.core.results.ImageResults`); the score itself, any lambda and the maximum over patches,
is :mod:`cbigan.core.anomaly_score`'s.

:func:`score_patches` is the single implementation used by training-time evaluation, ``evaluate.py``
and the exported SavedModel.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cbigan.core.config import Config, as_resolved
from cbigan.core.results import ImageResults
from cbigan.data.pipeline import to_model_range
from cbigan.core.kinds import kind_of
from cbigan.model.networks import feature_extractor


#: Patches that go through the networks in one call when many images are scored (evaluation, the
#: served batches of :meth:`cbigan.serving.export.ServingGraph.score_in_chunks`): four 512 px texture images.
PATCHES_PER_CALL = 256


#: Chunks of a batch that run side by side (:func:`in_chunks`): the two cores of the machine this was
#: measured on, where the training loop runs TensorFlow with one intra-op thread at 64 px.
PARALLEL_CHUNKS = 2
#: The smallest chunk worth a loop iteration of its own, in patches (:func:`in_chunks`).
MIN_CHUNK_PATCHES = 64


def in_chunks(fn, images, patches_per_image: int, specs: dict, parallel: int = PARALLEL_CHUNKS):
    """``fn(images_chunk, *rest_chunks) -> dict`` over a batch in chunks of whole images, ``parallel``
    chunks at a time (a ``tf.while_loop``), the outputs concatenated along their first axis: the same
    values as one call on the whole batch, when ``fn`` treats images independently.

    ``images``: a tensor [N, ...] or a tuple of tensors with the same N (sliced alike); a chunk is half
    the batch (rounded up) but at least :data:`MIN_CHUNK_PATCHES` patches, and at most
    :data:`PATCHES_PER_CALL` patches (``patches_per_image`` per image): textures are split into halves,
    object batches up to 64 images stay whole.
    ``specs``: ``{key: (dtype, shape of the output without its first axis)}`` for every output of ``fn``.
    Why: at one intra-op thread a single pass over a few images keeps one core busy, and chunks of at
    most :data:`PATCHES_PER_CALL` patches keep the activations in the caches (figures:
    docs/decisions.md).
    """
    parts = tuple(images) if isinstance(images, (tuple, list)) else (images,)
    n = tf.shape(parts[0])[0]
    ppi = max(1, int(patches_per_image))
    cap = max(1, PATCHES_PER_CALL // ppi)
    least = min(cap, -(-MIN_CHUNK_PATCHES // ppi))
    per = tf.minimum(tf.maximum((n + parallel - 1) // parallel, least), cap)
    chunks = tf.maximum((n + per - 1) // per, 1)  # an empty batch: one empty chunk, as one pass
    arrays = {k: tf.TensorArray(dtype, size=chunks, infer_shape=False,
                                element_shape=tf.TensorShape([None] + list(shape)))
              for k, (dtype, shape) in specs.items()}

    def body(i, arrays):
        out = fn(*(t[i * per:(i + 1) * per] for t in parts))
        return i + 1, {k: a.write(i, out[k]) for k, a in arrays.items()}

    _, arrays = tf.while_loop(lambda i, _: i < chunks, body, [tf.constant(0), arrays],
                              parallel_iterations=parallel)
    return {k: tf.ensure_shape(a.concat(), [None] + list(specs[k][1])) for k, a in arrays.items()}


def score_patches(encoder, generator, features, x):
    """Per-patch score parts for float images ``x`` in [-1, 1], shape [B, p, p, 3].

    Returns ``l_r`` [B], ``l_fd`` [B], ``reconstruction`` [B, p, p, 3], ``diff`` [B, p, p] (channel
    mean of |x - G(E(x))|, the anomaly map), ``z`` = E(x) [B, n] and ``feature_abs``
    ``|f_D(x, z) - f_D(G(E(x)), z)|`` in the feature layer's own shape ([B, p, p, C] for the default
    layer), from which :func:`cbigan.scoring.localization.localize` draws the feature part of the map without
    running the critic's layer again.
    """
    z = encoder(x, training=False)
    recon = generator(z, training=False)
    residual = x - recon
    abs_diff = tf.abs(residual)
    l_r = tf.reduce_sum(tf.reshape(abs_diff, (tf.shape(x)[0], -1)), axis=1)
    if getattr(features, "linear_in_image", False):  # a bias-free conv of the image: f(x) - f(r) = f(x - r)
        feature_abs = tf.abs(features([residual, z], training=False))
    else:
        feature_abs = tf.abs(features([x, z], training=False) - features([recon, z], training=False))
    l_fd = tf.reduce_sum(tf.reshape(feature_abs, (tf.shape(x)[0], -1)), axis=1)
    return {"l_r": l_r, "l_fd": l_fd, "reconstruction": recon,
            "diff": tf.reduce_mean(abs_diff, axis=-1), "z": z, "feature_abs": feature_abs}


class Scorer:
    """Scores resized uint8 images with a trained model's EMA networks and its critic features."""

    def __init__(self, model, cfg: Config, patches_per_call: int = PATCHES_PER_CALL):
        self.cfg = as_resolved(cfg)
        self.model = model
        self.features = feature_extractor(model.critic, self.cfg.feature_layer)
        self.patches_per_call = patches_per_call
        size = self.cfg.image_size  # one trace for every batch size (textures: 4 images a call, then the rest)
        self._fn = tf.function(self._score, reduce_retracing=True,
                               input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])

    @property
    def patches_per_image(self) -> int:
        return kind_of(self.cfg).patches_per_image(self.cfg)

    def _score_one_pass(self, images_uint8):
        x = kind_of(self.cfg).model_inputs(images_uint8, self.cfg)
        out = score_patches(self.model.ema_encoder, self.model.ema_generator, self.features, x)
        return {k: out[k] for k in ("l_r", "l_fd", "reconstruction", "diff")}

    def _score(self, images_uint8):
        p = self.cfg.patch_size
        specs = {"l_r": (tf.float32, []), "l_fd": (tf.float32, []), "reconstruction": (tf.float32, [p, p, 3]),
                 "diff": (tf.float32, [p, p])}
        return in_chunks(self._score_one_pass, images_uint8, self.patches_per_image, specs)

    def raw(self, images_uint8):
        """Score parts, reconstructions and maps for a batch of resized uint8 images (patches flat)."""
        return self._fn(tf.convert_to_tensor(images_uint8, tf.uint8))

    def score(self, images_uint8: np.ndarray) -> ImageResults:
        """Per-patch L_R and L_fD for [N, S, S, 3] uint8 images, in batches."""
        ppi = self.patches_per_image
        per_call = max(1, self.patches_per_call // ppi)
        l_r, l_fd = [], []
        for i in range(0, len(images_uint8), per_call):
            out = self.raw(images_uint8[i:i + per_call])
            l_r.append(out["l_r"].numpy().reshape(-1, ppi))
            l_fd.append(out["l_fd"].numpy().reshape(-1, ppi))
        if not l_r:
            return ImageResults(np.zeros((0, ppi)), np.zeros((0, ppi)))
        return ImageResults(np.concatenate(l_r), np.concatenate(l_fd))


# ---------------------------------------------------------------------------------- many images
def score_images(scorer, images: np.ndarray, progress: bool = True, desc: str = "scoring"):
    """Per-patch parts of many images through ``scorer.score`` in chunks, with a progress bar
    (:func:`cbigan.core.progress.progress`: on a terminal only, none when ``progress`` is False)."""
    from cbigan.core.progress import progress as progress_bar

    per_call = max(1, scorer.patches_per_call // scorer.patches_per_image)
    l_r, l_fd = [], []
    with progress_bar(total=len(images), desc=desc, quiet=not progress) as bar:
        for i in range(0, len(images), per_call):
            s = scorer.score(images[i:i + per_call])
            l_r.append(s.l_r)
            l_fd.append(s.l_fd)
            bar.update(len(s.l_r))
    if not l_r:
        ppi = scorer.patches_per_image
        return ImageResults(np.zeros((0, ppi)), np.zeros((0, ppi)))
    return ImageResults(np.concatenate(l_r), np.concatenate(l_fd))


def score_patch_loop(scorer, images: np.ndarray, images_per_call: int | None = None,
                     compiled: bool = False):
    """Reference: the original code's patch loop, for tests and the ``score`` benchmark only.

    As the authors' ``score.py`` did: for each patch position (row-major), one call of the networks on
    that patch of every image of the batch, eagerly, through :func:`score_patches` and the
    scorer's own networks. ``images_per_call`` images form a batch (default: all; 1 gives one patch per
    call); ``compiled=True`` runs each call through one ``tf.function`` instead of eagerly, so that what
    is left of the difference to :meth:`Scorer.score` is the batching alone.
    Returns ``(l_r, l_fd)``, each [N, P] float64.
    """
    cfg, model = scorer.cfg, scorer.model
    p = cfg.patch_size

    def parts(x):
        out = score_patches(model.ema_encoder, model.ema_generator, scorer.features, x)
        return out["l_r"], out["l_fd"]

    if compiled:
        fn = getattr(scorer, "_patch_loop_fn", None)
        if fn is None:
            fn = scorer._patch_loop_fn = tf.function(parts, reduce_retracing=True)
    else:
        fn = parts
    n = len(images)
    step = n if not images_per_call else max(1, int(images_per_call))
    l_r, l_fd = [], []
    for i in range(0, n, step):
        x = to_model_range(images[i:i + step])
        cols = [fn(x[:, y:y + p, xx:xx + p, :])
                for y in range(0, cfg.image_size, p) for xx in range(0, cfg.image_size, p)]
        l_r.append(np.stack([c[0].numpy() for c in cols], axis=1))
        l_fd.append(np.stack([c[1].numpy() for c in cols], axis=1))
    if not l_r:
        return np.zeros((0, scorer.patches_per_image)), np.zeros((0, scorer.patches_per_image))
    return np.concatenate(l_r).astype(np.float64), np.concatenate(l_fd).astype(np.float64)
