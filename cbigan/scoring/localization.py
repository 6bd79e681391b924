"""Pixel-level anomaly maps at the input's own resolution, in the TensorFlow graph.

The map of an image is, per pixel,

    M = (1 - lambda) * mean_c |x - G(E(x))|  +  lambda * mean_c |f_D(x, E(x)) - f_D(G(E(x)), E(x))|

the same two parts as the image score ``A = (1 - lambda) L_R + lambda L_fD`` (:mod:`cbigan.core.anomaly_score`), but
averaged over channels instead of summed over the whole patch. The default feature layer
(``critic_features``, the critic's first 3x3 convolution) keeps the full resolution; a coarser layer is
resized (bilinear) to the patch size, and a flat one (e.g. a dense layer) contributes a constant per patch.

* Objects are one patch: the map has the model's image size (128 by default).
* Textures are cut into ``patch_size`` patches and the per-patch maps are stitched back into the
  ``image_size`` map (512 by default). With ``stride < patch_size`` the patches overlap and every pixel is
  the mean of the maps of all patches that cover it, which removes the block seams. The positions are
  ``0, stride, 2 stride, ...``, plus ``image_size - patch_size`` and the multiples of ``patch_size`` (so the
  non-overlapping scoring patches are always among them: one network pass gives the image scores of the
  paper's protocol *and* the maps). ``stride = patch_size`` gives exactly the plain stitched maps.
* Optional Gaussian smoothing, in the graph (separable, as two matrix products; reflected borders as
  ``scipy.ndimage.gaussian_filter``'s default ``mode="reflect"``, kernel truncated at 4 sigma).
  ``sigma`` is in pixels of the model-resolution map; default :data:`DEFAULT_SIGMA` = 4 (as commonly
  used on MVTec AD anomaly maps); 0 turns it off.

"The input's own resolution" is the resized model resolution: ``image_size`` x ``image_size``; the
ground-truth masks are resized to it (nearest) by :func:`cbigan.data.pipeline.load_test_set`, and the pixel metrics
(:mod:`cbigan.scoring.pixel_metrics`) are computed there. :func:`resize_maps` / :func:`to_original_size` bring a map
back to an image's original size (bilinear) for predictions and figures.

:func:`localize` is the one implementation: evaluation (:class:`Localizer`), the figures
(``python -m cbigan.plots maps``) and the exported SavedModel's ``anomaly_map`` use it. It calls
:func:`cbigan.scoring.parts.score_patches` once on all patches, so the image scores and the maps come from the
same network pass.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import tensorflow as tf

from cbigan.core.anomaly_score import DEFAULT_MAP_SIGMA, RULES_WITH_MAPS, combine, fusion_stats, global_weight
from cbigan.core.config import Config, as_resolved
from cbigan.data.pipeline import from_patches, to_model_range
from cbigan.core.kinds import kind_of
from cbigan.core.results import ImageResults
from cbigan.scoring.parts import PATCHES_PER_CALL, in_chunks, score_patches

#: Default standard deviation (pixels of the model-resolution map) of the Gaussian smoothing.
DEFAULT_SIGMA = DEFAULT_MAP_SIGMA
#: The kernel reaches ``TRUNCATE * sigma`` pixels to each side (scipy's default).
TRUNCATE = 4.0


# ---------------------------------------------------------------------------------- patch geometry
def patch_positions(size: int, patch: int, stride: int | None = None) -> np.ndarray:
    """Top-left offsets (along one axis) of the patches of a ``size`` image: see the module docstring."""
    size, patch = int(size), int(patch)
    stride = patch if stride is None else int(stride)
    if patch > size:
        raise ValueError(f"patch size {patch} is larger than the image size {size}")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride must be between 1 and the patch size {patch}, got {stride}")
    pos = set(range(0, size - patch + 1, stride)) | {size - patch}
    if size % patch == 0:
        pos |= set(range(0, size - patch + 1, patch))
    return np.array(sorted(pos), np.int32)


def _grid_subset(pos: np.ndarray, size: int, patch: int) -> np.ndarray:
    """Flat (row-major) indices, among the ``len(pos)**2`` patches, of the non-overlapping grid."""
    where = {int(p): i for i, p in enumerate(pos)}
    grid = [where[p] for p in range(0, size - patch + 1, patch)]
    k = len(pos)
    return np.array([r * k + c for r in grid for c in grid], np.int32)


def extract_patches(x, pos: np.ndarray, patch: int):
    """[N, S, S, C] -> [N * K*K, p, p, C]: the patches at ``pos`` x ``pos``, row-major, image by image.

    Two gathers, no loop: for ``pos = 0, p, 2p...`` it is :func:`cbigan.data.pipeline.to_patches`.
    """
    p = int(patch)
    idx = tf.constant((pos[:, None] + np.arange(p)[None, :]).astype(np.int32))  # [K, p]
    rows = tf.gather(x, idx, axis=1)                     # [N, K, p, S, C]
    cells = tf.gather(rows, idx, axis=3)                 # [N, K, p, K, p, C]
    cells = tf.transpose(cells, (0, 1, 3, 2, 4, 5))      # [N, K, K, p, p, C]
    c = tf.shape(x)[3]
    return tf.reshape(cells, tf.stack([-1, p, p, c]))


def blur_reach(sigma: float, truncate: float = TRUNCATE) -> int:
    """Pixels the Gaussian smoothing reaches to each side (0 without smoothing)."""
    return 0 if sigma is None or float(sigma) <= 0 else (len(gaussian_kernel(sigma, truncate)) - 1) // 2


def needed_patches(pos: np.ndarray, patch: int, size: int, regions, reach: int, keep_grid: bool):
    """Flat (row-major) indices [M] of the patches at ``pos`` x ``pos`` that a batch's maps inside its
    ``regions`` ([N, 2] (h, w), placed top-left) need: those whose window reaches a pixel of the union of
    the regions grown by ``reach`` (the blur's), plus, with ``keep_grid``, every non-overlapping grid
    patch (the paper's per-patch parts over the whole canvas). Every patch that covers a pixel of the
    grown region is among them, so the stitched and smoothed map there is the full canvas's."""
    k = len(pos)
    regions = tf.cast(regions, tf.int32)
    lim_h = tf.reduce_max(regions[:, 0]) + int(reach)
    lim_w = tf.reduce_max(regions[:, 1]) + int(reach)
    p = tf.constant(pos, tf.int32)
    mask = tf.logical_and((p < lim_h)[:, None], (p < lim_w)[None, :])
    mask = tf.reshape(mask, [k * k])
    if keep_grid:
        grid = np.zeros(k * k, bool)
        grid[_grid_subset(pos, size, patch)] = True
        mask = tf.logical_or(mask, tf.constant(grid))
    return tf.cast(tf.where(mask)[:, 0], tf.int32)


def _patch_pixel_indices(pos: np.ndarray, patch: int) -> np.ndarray:
    """[K*K, p, p, 2] (row, column) of every pixel of every patch, row-major as :func:`extract_patches`."""
    k, p = len(pos), int(patch)
    rows = pos[:, None] + np.arange(p)[None, :]                                    # [K, p]
    iy = np.broadcast_to(rows[:, None, :, None], (k, k, p, p))
    ix = np.broadcast_to(rows[None, :, None, :], (k, k, p, p))
    return np.stack([iy, ix], -1).reshape(k * k, p, p, 2).astype(np.int32)


def extract_some_patches(x, pos: np.ndarray, patch: int, index):
    """[N, S, S, C] -> [N * M, p, p, C]: the patches of flat indices ``index`` [M] (among ``pos`` x ``pos``,
    row-major), image by image."""
    pix = tf.gather(tf.constant(_patch_pixel_indices(pos, patch)), index)         # [M, p, p, 2]
    cells = tf.gather_nd(tf.transpose(x, (1, 2, 0, 3)), pix)                      # [M, p, p, N, C]
    cells = tf.transpose(cells, (3, 0, 1, 2, 4))                                  # [N, M, p, p, C]
    p = int(patch)
    return tf.reshape(cells, tf.stack([-1, p, p, tf.shape(x)[3]]))


def stitch_some(maps, pos: np.ndarray, patch: int, size: int, index):
    """:func:`stitch` of only the patches ``index`` [M] (maps [N * M, p, p]): pixels that every patch
    covering them is among ``index`` are exactly :func:`stitch`'s; the rest lack the missing patches."""
    k, p, s = len(pos), int(patch), int(size)
    cover = np.zeros(s, np.float32)
    for y0 in pos:
        cover[y0:y0 + p] += 1.0
    pix = tf.reshape(tf.gather(tf.constant(_patch_pixel_indices(pos, patch)), index), (-1, 2))
    m = tf.reshape(maps, tf.stack([-1, tf.size(index) * p * p]))                  # [N, M*p*p]
    summed = tf.scatter_nd(pix, tf.transpose(m), tf.stack([s, s, tf.shape(m)[0]]))
    return tf.transpose(summed, (2, 0, 1)) / tf.constant(cover[:, None] * cover[None, :])[None]


def stitch(maps, pos: np.ndarray, patch: int, size: int):
    """Per-patch maps [N * K*K, p, p] (row-major, as :func:`extract_patches`) -> [N, S, S].

    Every pixel is the mean over the patches that cover it (an overlap-add by ``scatter_nd`` and a
    constant count map). Non-overlapping positions give :func:`cbigan.data.pipeline.from_patches` exactly.
    """
    k, p, s = len(pos), int(patch), int(size)
    if k * p == s and np.array_equal(pos, np.arange(k) * p):
        return from_patches(maps, k)                     # plain tiling: no sum, no division
    # the coverage is separable: count(y, x) = (patches over row y) * (patches over column x)
    cover = np.zeros(s, np.float32)
    for y0 in pos:
        cover[y0:y0 + p] += 1.0
    # absolute (row, column) of every pixel of every patch, built in the graph (small constants only)
    rows = tf.constant(pos)[:, None] + tf.range(p)[None, :]                       # [K, p]
    iy = tf.broadcast_to(rows[:, None, :, None], (k, k, p, p))
    ix = tf.broadcast_to(rows[None, :, None, :], (k, k, p, p))
    indices = tf.reshape(tf.stack([iy, ix], -1), (-1, 2))                         # [K*K*p*p, 2]
    m = tf.reshape(maps, tf.stack([-1, k * k * p * p]))                            # [N, K*K*p*p]
    summed = tf.scatter_nd(indices, tf.transpose(m), tf.stack([s, s, tf.shape(m)[0]]))
    return tf.transpose(summed, (2, 0, 1)) / tf.constant(cover[:, None] * cover[None, :])[None]


# ---------------------------------------------------------------------------------- smoothing, resizing
def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's rule)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def blur_matrix(size: int, sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """[size, size] matrix B of the 1-D Gaussian filter with reflected borders: ``B @ v`` filters v.

    Borders as ``scipy.ndimage.gaussian_filter1d(mode="reflect")`` (d c b a | a b c d | d c b a), for
    any sigma (the reflection repeats when the kernel is longer than the side).
    """
    k = gaussian_kernel(sigma, truncate)
    r = (len(k) - 1) // 2
    src = np.arange(size)[:, None] + np.arange(-r, r + 1)[None, :]      # [size, 2r+1] input index
    src = np.mod(src, 2 * size)
    src = np.where(src >= size, 2 * size - 1 - src, src)
    b = np.zeros((size, size), np.float64)
    np.add.at(b, (np.repeat(np.arange(size), len(k)), src.ravel()), np.tile(k, size))
    return b.astype(np.float32)


#: Maps with both sides at least this long and a multiple of :data:`BLUR_BLOCK` are blurred band by
#: band (:func:`_banded_blur_rows`), smaller ones with the dense :func:`blur_matrix`.
BANDED_MIN_SIDE = 256
BLUR_BLOCK = 32


def gaussian_blur(maps, sigma: float, truncate: float = TRUNCATE):
    """Gaussian smoothing of maps [N, H, W] (static H, W) in the graph; ``sigma <= 0``: unchanged.

    The same result as ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``, separable: small
    maps as two matrix products with the dense :func:`blur_matrix` (``B_h @ M @ B_w^T``; faster on CPU
    than a one-channel convolution); large maps (512 px textures, tiles canvases) by blocks of
    :data:`BLUR_BLOCK` rows against one banded matrix (:func:`_banded_blur_rows`): 8x fewer FLOPs than
    the dense 512 x 512 products (why: docs/decisions.md).
    """
    if sigma is None or float(sigma) <= 0:
        return maps
    h, w = maps.shape[1], maps.shape[2]
    if h is None or w is None:
        raise ValueError("gaussian_blur needs maps of a static height and width")
    radius = (len(gaussian_kernel(sigma, truncate)) - 1) // 2
    if all(s >= BANDED_MIN_SIDE and s % BLUR_BLOCK == 0 and radius < s for s in (h, w)):
        along_w = _banded_blur_rows(maps, sigma, truncate)
        return tf.transpose(_banded_blur_rows(tf.transpose(along_w, [0, 2, 1]), sigma, truncate), [0, 2, 1])
    b_h = tf.constant(blur_matrix(h, sigma, truncate))
    b_w = b_h if w == h else tf.constant(blur_matrix(w, sigma, truncate))
    return tf.matmul(tf.matmul(b_h, maps), b_w, transpose_b=True)


def _banded_blur_rows(maps, sigma: float, truncate: float):
    """The 1-D Gaussian along the last axis of [N, H, W] (W a multiple of :data:`BLUR_BLOCK`): the rows
    padded by reflection (TensorFlow's SYMMETRIC mode is scipy's "reflect"), cut into overlapping
    windows of BLOCK + 2 radius pixels, each multiplied by the one [BLOCK, BLOCK + 2 radius] band."""
    k = gaussian_kernel(sigma, truncate).astype(np.float32)
    r, block = (len(k) - 1) // 2, BLUR_BLOCK
    band = np.zeros((block, block + 2 * r), np.float32)
    for i in range(block):
        band[i, i:i + 2 * r + 1] = k
    h, w = maps.shape[1], maps.shape[2]
    padded = tf.pad(maps, [[0, 0], [0, 0], [r, r]], mode="SYMMETRIC")
    windows = tf.stack([padded[:, :, i * block:i * block + block + 2 * r] for i in range(w // block)], axis=2)
    out = tf.matmul(tf.reshape(windows, [-1, block + 2 * r]), tf.constant(band), transpose_b=True)
    return tf.reshape(out, [-1, h, w])


def resize_maps(maps, size_hw):
    """Maps [N, S, S] (or one [S, S]) -> the size ``(height, width)``, bilinear; a tensor."""
    maps = tf.convert_to_tensor(maps, tf.float32)
    one = maps.shape.rank == 2
    x = maps[None] if one else maps
    x = tf.image.resize(x[..., None], tuple(int(v) for v in size_hw), method="bilinear")[..., 0]
    return x[0] if one else x


def to_original_size(amap, size_hw) -> np.ndarray:
    """One model-resolution map [S, S] -> a numpy map of an image's original ``(height, width)``."""
    return np.asarray(resize_maps(np.asarray(amap, np.float32), size_hw))


# ---------------------------------------------------------------------------------- the maps
def channel_mean_map(d, p_h: int, p_w: int):
    """Per-patch feature differences ``d`` (a layer's output shape: [B, h, w, C] or flat [B, ...]) ->
    their channel mean as a [B, p_h, p_w] map: resized (bilinear) when the layer is coarser than the
    patch, one value per patch (its mean) when the layer is flat."""
    if d.shape.rank == 4:
        d = tf.reduce_mean(d, axis=-1)
        if d.shape[1] != p_h or d.shape[2] != p_w:
            d = tf.image.resize(d[..., None], (p_h, p_w), method="bilinear")[..., 0]
        return d
    d = tf.reduce_mean(tf.reshape(d, (tf.shape(d)[0], -1)), axis=1)   # flat layer: one value a patch
    return tf.tile(d[:, None, None], [1, p_h, p_w])


def global_view_parts(encoder, generator, features, x, regions, *, patch: int, sigma: float = DEFAULT_SIGMA,
                      views=None):
    """The global view's two map parts ``(global_r, global_fd)``, each [N, p, p] (p = ``patch``).

    Each image's region of ``x`` ([N, S, S, C] in the model range; ``regions`` [N, 2] (h, w)) resized to one
    tile (:func:`cbigan.core.imageops.region_views`) and mapped as :func:`localize` maps a tile: channel means
    of |x - G(E(x))| and of the feature difference, smoothed at ``sigma`` pixels of the tile. ``views``
    [N, p, p, C] (model range): those tiles made already (the LiteRT model gets them as an input: its
    antialiased resize has no LiteRT kernel), used instead.
    """
    from cbigan.core.imageops import region_views

    p = int(patch)
    if views is None:
        views = region_views(x, tf.cast(regions, tf.int32), p)
    views = tf.ensure_shape(tf.cast(views, tf.float32), [None, p, p, None])
    out = score_patches(encoder, generator, features, views)
    return gaussian_blur(out["diff"], sigma), gaussian_blur(channel_mean_map(out["feature_abs"], p, p), sigma)


def localize(encoder, generator, features, x, *, patch: int, lam: float = 0.1,
             sigma: float = DEFAULT_SIGMA, stride: int | None = None, global_view: bool = False, regions=None,
             region_only: bool = False, keep_grid: bool = True, views=None):
    """Score parts and anomaly maps of full images ``x`` in [-1, 1], [N, S, S, 3] (static S).

    Returns a dict of tensors:

    * ``l_r``, ``l_fd`` [N, P]: the image-score parts of the P non-overlapping patches (row-major; P = 1
      for objects), as :class:`cbigan.scoring.parts.Scorer` gives them;
    * ``map_r``, ``map_fd`` [N, S, S]: the two parts of the map (stitched, averaged, smoothed); any lambda
      is their linear combination (smoothing and averaging are linear);
    * ``anomaly_map`` [N, S, S]: :func:`cbigan.core.anomaly_score.combine` of the two map parts at ``lam``;
    * ``reconstruction`` [N, S, S, 3]: G(E(x)) of the non-overlapping patches, stitched, in [-1, 1].

    ``global_view`` (tiles trained with ``global_views``): also ``global_r``, ``global_fd`` [N, p, p], the
    map parts of each image's global view (:func:`global_view_parts`; ``regions`` [N, 2] (h, w), None: the
    whole image), which the map rules add to the image score (:func:`cbigan.core.anomaly_score.rule_scores`);
    ``anomaly_map`` and the paper's parts stay the tiles' (the map shown adds the global view's:
    :func:`cbigan.core.anomaly_score.anomaly_map`). ``views``: the global views made already
    (:func:`global_view_parts`).

    ``region_only`` (tiles with ``regions``): score only the patches that the maps inside the union of
    the batch's regions need (:func:`needed_patches`: the regions grown by the blur's reach), plus the
    non-overlapping grid with ``keep_grid`` (the paper's ``l_r``, ``l_fd`` over the whole canvas, which
    the ``paper`` and fused rules read). The scores, and the maps and reconstruction inside the regions,
    are those of the full pass (within float rounding); outside them the maps lack the skipped patches
    and, without ``keep_grid``, ``l_r``, ``l_fd`` and the reconstruction of skipped grid patches are 0.
    """
    size = x.shape[1]
    if size is None or x.shape[2] != size:
        raise ValueError(f"localize needs square images of a static size, got shape {x.shape}")
    size, patch = int(size), int(patch)
    pos = patch_positions(size, patch, stride)
    k = len(pos)
    sub = _grid_subset(pos, size, patch)
    full = len(sub) == k * k
    grid = size // patch
    if region_only and regions is not None and k > 1:
        return _localize_region(encoder, generator, features, x, pos=pos, sub=sub, patch=patch, size=size,
                                lam=lam, sigma=sigma, global_view=global_view, regions=regions,
                                keep_grid=keep_grid, views=views)
    patches = x if k == 1 else extract_patches(x, pos, patch)
    out = score_patches(encoder, generator, features, patches)
    recon = out["reconstruction"]
    fd = channel_mean_map(out["feature_abs"], patch, patch)  # the features of score_patches' pass
    raw_r = stitch(out["diff"], pos, patch, size)
    raw_fd = stitch(fd, pos, patch, size)
    map_r, map_fd = gaussian_blur(raw_r, sigma), gaussian_blur(raw_fd, sigma)

    def grid_only(t, per_patch: list):
        """[N * K*K, ...] -> [N, P, ...]: the non-overlapping patches only."""
        t = tf.reshape(t, [-1, k * k] + per_patch)
        return t if full else tf.gather(t, tf.constant(sub), axis=1)

    l_r, l_fd = grid_only(out["l_r"], []), grid_only(out["l_fd"], [])
    rec = tf.reshape(grid_only(recon, [patch, patch, 3]), (-1, patch, patch, 3))
    rec = from_patches(rec, grid)
    lam = float(lam)
    # the smoothing is linear: one blur of the combined map (a graph that needs only the anomaly map,
    # the export, blurs once; evaluation fetches map_r and map_fd, not this)
    out = {"l_r": l_r, "l_fd": l_fd, "map_r": map_r, "map_fd": map_fd,
           "anomaly_map": gaussian_blur(combine(raw_r, raw_fd, lam), sigma), "reconstruction": rec}
    if global_view:
        if regions is None:
            regions = tf.fill(tf.stack([tf.shape(x)[0], 2]), size)
        out["global_r"], out["global_fd"] = global_view_parts(encoder, generator, features, x, regions,
                                                              patch=patch, sigma=sigma, views=views)
    return out


def _localize_region(encoder, generator, features, x, *, pos, sub, patch, size, lam, sigma, global_view,
                     regions, keep_grid, views=None):
    """:func:`localize` with ``region_only``: the patches of :func:`needed_patches` only."""
    k, grid = len(pos), size // patch
    index = needed_patches(pos, patch, size, regions, blur_reach(sigma), keep_grid)   # [M]
    m = tf.size(index)
    out = score_patches(encoder, generator, features, extract_some_patches(x, pos, patch, index))
    fd = channel_mean_map(out["feature_abs"], patch, patch)
    raw_r = stitch_some(out["diff"], pos, patch, size, index)
    raw_fd = stitch_some(fd, pos, patch, size, index)
    # where each grid patch is among the computed ones (-1: skipped)
    where = tf.tensor_scatter_nd_update(tf.fill([k * k], -1), index[:, None], tf.range(m))
    at = tf.gather(where, tf.constant(sub))                                            # [P]
    present = at >= 0
    at = tf.maximum(at, 0)

    def grid_only(t, per_patch: list):
        """[N * M, ...] -> [N, P, ...]: the non-overlapping patches (0 where skipped)."""
        t = tf.gather(tf.reshape(t, tf.concat([[-1, m], tf.constant(per_patch, tf.int32)], 0)), at, axis=1)
        mask = tf.reshape(tf.cast(present, t.dtype), [1, -1] + [1] * len(per_patch))
        return t * mask

    l_r, l_fd = grid_only(out["l_r"], []), grid_only(out["l_fd"], [])
    rec = from_patches(tf.reshape(grid_only(out["reconstruction"], [patch, patch, 3]), (-1, patch, patch, 3)),
                       grid)
    result = {"l_r": l_r, "l_fd": l_fd, "map_r": gaussian_blur(raw_r, sigma),
              "map_fd": gaussian_blur(raw_fd, sigma),
              "anomaly_map": gaussian_blur(combine(raw_r, raw_fd, float(lam)), sigma), "reconstruction": rec}
    if global_view:
        result["global_r"], result["global_fd"] = global_view_parts(encoder, generator, features, x, regions,
                                                                    patch=patch, sigma=sigma, views=views)
    return result


# ---------------------------------------------------------------------------------- batched use
class Localizer:
    """Maps (and the image-score parts) of resized uint8 images with a trained model's EMA networks."""

    def __init__(self, model, cfg: Config, *, sigma: float = DEFAULT_SIGMA, stride: int | None = None,
                 lam: float | None = None, patches_per_call: int = PATCHES_PER_CALL):
        from cbigan.model.networks import feature_extractor

        self.cfg = as_resolved(cfg)
        self.model = model
        self.sigma = float(sigma)
        if self.sigma < 0 or not math.isfinite(self.sigma):
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.stride = kind_of(self.cfg).map_stride(self.cfg, stride)  # None: the kind's default
        self.lam = float(self.cfg.score_lambda if lam is None else lam)
        self.positions = patch_positions(self.cfg.image_size, self.cfg.patch_size, self.stride)
        self.features = feature_extractor(model.critic, self.cfg.feature_layer)
        self.patches_per_call = patches_per_call
        #: each image's global view is mapped beside the tiles (a model trained with ``global_views``)
        self.global_view = bool(self.cfg.global_views)
        #: tiles: only the tiles the maps inside the images' regions need, and the whole grid of the
        #: per-patch parts (:func:`localize`'s ``region_only``); the maps outside the regions are not kept
        self.region_only = kind_of(self.cfg).name == "tiles"
        size = self.cfg.image_size
        spec = [tf.TensorSpec([None, size, size, 3], tf.uint8), tf.TensorSpec([None, 2], tf.int32)]
        self._fn = tf.function(self._localize, reduce_retracing=True, input_signature=spec)
        self._parts_fn = tf.function(self._parts, reduce_retracing=True, input_signature=spec)

    @property
    def patches_per_image(self) -> int:
        """Network inputs per image (overlapping patches and the global view included)."""
        return len(self.positions) ** 2 + int(self.global_view)

    @property
    def _global_keys(self) -> tuple:
        return ("global_r", "global_fd") if self.global_view else ()

    def _regions(self, images_uint8, regions):
        """``regions`` [N, 2] int32, or every image whole when None."""
        if regions is None:
            return np.full((len(images_uint8), 2), self.cfg.image_size, np.int32)
        return np.asarray(regions, np.int32).reshape(-1, 2)

    @property
    def images_per_call(self) -> int:
        return max(1, self.patches_per_call // self.patches_per_image)

    def _localize_one_pass(self, images_uint8, regions):
        m = self.model
        return localize(m.ema_encoder, m.ema_generator, self.features,
                        to_model_range(images_uint8, self.cfg.normalize),
                        patch=self.cfg.patch_size, lam=self.lam, sigma=self.sigma, stride=self.stride,
                        global_view=self.global_view, regions=regions, region_only=self.region_only)

    def _specs(self, keys) -> dict:
        s, grid = self.cfg.image_size, (self.cfg.image_size // self.cfg.patch_size) ** 2
        p = self.cfg.patch_size
        shapes = {"l_r": [grid], "l_fd": [grid], "map_r": [s, s], "map_fd": [s, s], "anomaly_map": [s, s],
                  "reconstruction": [s, s, 3], "global_r": [p, p], "global_fd": [p, p]}
        return {k: (tf.float32, shapes[k]) for k in keys}

    def _localize(self, images_uint8, regions):
        """All outputs of :func:`localize`, the batch in chunks run side by side (:func:`in_chunks`)."""
        keys = ("l_r", "l_fd", "map_r", "map_fd", "anomaly_map", "reconstruction") + self._global_keys
        return in_chunks(self._localize_one_pass, (images_uint8, regions), self.patches_per_image,
                         self._specs(keys))

    def _parts(self, images_uint8, regions):
        """Only what :meth:`run` keeps (the graph then skips the combined map's blur)."""
        keys = ("l_r", "l_fd", "map_r", "map_fd") + self._global_keys
        return in_chunks(lambda x, r: {k: v for k, v in self._localize_one_pass(x, r).items() if k in keys},
                         (images_uint8, regions), self.patches_per_image, self._specs(keys))

    def raw(self, images_uint8, regions=None) -> dict:
        """All outputs of :func:`localize` (tensors) for a batch of resized uint8 images; ``regions``
        [N, 2] (h, w): each image's part of them (tiles; None: all of it)."""
        return self._fn(tf.convert_to_tensor(np.asarray(images_uint8), tf.uint8),
                        tf.constant(self._regions(images_uint8, regions)))

    def run(self, images_uint8: np.ndarray, progress: bool = False, desc: str = "maps",
            regions=None) -> ImageResults:
        """Score parts and map parts of many images, in chunks (a progress bar on a terminal with
        ``progress``: :func:`cbigan.core.progress.progress`). Each chunk is written into arrays of the final
        size: the maps of many large images (583 magnetic tiles on 640 px canvases: 0.96 GB a part)
        are held once, not once per chunk and again joined. ``regions``: as :meth:`raw` (the global
        view needs them; the result holds them when given)."""
        from cbigan.core.progress import progress as progress_bar

        grid = (self.cfg.image_size // self.cfg.patch_size) ** 2
        size = self.cfg.image_size
        n = len(images_uint8)
        p = self.cfg.patch_size
        out = {"l_r": np.zeros((n, grid), np.float32), "l_fd": np.zeros((n, grid), np.float32),
               "map_r": np.zeros((n, size, size), np.float32), "map_fd": np.zeros((n, size, size), np.float32)}
        out.update({k: np.zeros((n, p, p), np.float32) for k in self._global_keys})
        step = self.images_per_call
        given, regions = regions, self._regions(images_uint8, regions)
        with progress_bar(total=n, desc=desc, quiet=not progress) as bar:
            for i in range(0, n, step):
                chunk = self._parts_fn(tf.convert_to_tensor(np.asarray(images_uint8[i:i + step]), tf.uint8),
                                       tf.constant(regions[i:i + step]))
                for key, array in out.items():
                    array[i:i + step] = chunk[key].numpy().reshape(array[i:i + step].shape)
                bar.update(min(step, n - i))
        return ImageResults(out["l_r"], out["l_fd"], map_r=out["map_r"], map_fd=out["map_fd"],
                            sigma=self.sigma, stride=self.stride, global_r=out.get("global_r"),
                            global_fd=out.get("global_fd"), global_weight=global_weight(self.cfg),
                            fusion=fusion_stats(self.cfg), regions=None if given is None else regions)

    def maps(self, images_uint8: np.ndarray, lam: float | None = None, regions=None) -> np.ndarray:
        """Anomaly maps [N, S, S] at ``lam`` (default: the localizer's)."""
        return self.run(images_uint8, regions=regions).maps(self.lam if lam is None else lam)


def map_settings(cfg: Config) -> tuple[float, int | None]:
    """The anomaly-map smoothing ``sigma`` and patch ``stride`` a run scores with (its config's
    ``extra["map_sigma"]`` / ``extra["map_stride"]``, else :data:`DEFAULT_SIGMA` and the patch size):
    the maps of the map-based image scores in threshold calibration, evaluation and the export."""
    return float(cfg.extra.get("map_sigma", DEFAULT_SIGMA)), kind_of(cfg).map_stride(cfg, cfg.extra.get("map_stride"))


class ImageScorer:
    """Image scores of resized uint8 images by the run's own rule: ``cfg.image_score`` at
    ``cfg.score_lambda`` (:func:`cbigan.core.anomaly_score.rule_scores`). The paper's rule needs only the
    per-patch parts (:class:`cbigan.scoring.parts.Scorer`); the map rules the maps (:class:`Localizer`, at
    :func:`map_settings`). Used by threshold calibration and training-time model selection, so both
    score exactly as evaluation and the export do."""

    def __init__(self, model, cfg: Config):
        from cbigan.scoring.parts import Scorer

        self.cfg = as_resolved(cfg)
        if self.cfg.image_score in RULES_WITH_MAPS:
            sigma, stride = map_settings(self.cfg)
            self.engine = Localizer(model, self.cfg, sigma=sigma, stride=stride)
        else:
            self.engine = Scorer(model, self.cfg)

    def results(self, images_uint8: np.ndarray, progress: bool = False, desc: str = "scoring",
                regions=None) -> ImageResults:
        """Per-image results (parts, and maps for a map rule) of [N, S, S, 3] uint8 images; ``regions``
        [N, 2] ``(h, w)``: the part of each that is the image (tiles; None: all of it)."""
        if isinstance(self.engine, Localizer):
            out = self.engine.run(images_uint8, progress=progress, desc=desc, regions=regions)
        else:
            from cbigan.scoring.parts import score_images

            out = score_images(self.engine, images_uint8, progress=progress, desc=desc)
        return out if regions is None else replace(out, regions=np.asarray(regions, np.int32).reshape(-1, 2))

    def __call__(self, images_uint8: np.ndarray, progress: bool = False, desc: str = "scoring",
                 regions=None) -> np.ndarray:
        """[N] float64 image scores by the run's rule (:meth:`cbigan.core.results.ImageResults.rule_scores`)."""
        return self.results(images_uint8, progress, desc, regions).rule_scores(self.cfg)
