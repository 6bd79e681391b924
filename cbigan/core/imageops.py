"""Batched TensorFlow image ops the input kinds (:mod:`cbigan.core.kinds`) are made of.

Patch tiling (:func:`to_patches` / :func:`from_patches`) and the paper's two rotation augmentations
(:func:`rotated_texture_crops`, :func:`rotate_objects`). This module imports nothing from the project,
so :mod:`cbigan.core.kinds` can use it without an import circle; :mod:`cbigan.data.pipeline` re-exports its names.
"""

from __future__ import annotations

import math

import tensorflow as tf


# ---------------------------------------------------------------------------------- resizing
def resize_uint8(images, size: int):
    """Resize a uint8 (or 0..255 float) batch [N, H, W, 3] to [N, size, size, 3] uint8.

    Bilinear with antialiasing, then rounded: the square resize of objects and textures, used for
    training, evaluation and inside the exported SavedModel, so in-framework and served scores agree.
    Images already ``size`` x ``size`` skip the resize (which is then the identity, exactly), also when
    their size is known only at run time (the SavedModel: 512 px textures 18.6 -> 29.2 img/s at batch 1,
    33.4 -> 36.4 at batch 32; results/benchmarks.md).
    """
    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    x = tf.cond(tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size)),
                lambda: x, lambda: tf.image.resize(x, (size, size), method="bilinear", antialias=True))
    x = tf.ensure_shape(x, [None, size, size, None])
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------------------------- pixel range
#: ``per_image``: standardized pixels are divided by this, so that +-3 standard deviations span [-1, 1].
NORMALIZE_SPREAD = 3.0
#: ``per_image``: added to the standard deviation (in [-1, 1] units) so a flat image stays finite.
NORMALIZE_EPS = 1e-3


def image_stats(images):
    """Per image and channel mean and standard deviation [N, 1, 1, C] of uint8 (or 0..255) pixels
    [N, H, W, C], in the [-1, 1] range: what ``per_image`` normalization removes."""
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
    return mean, tf.sqrt(var)


def to_model_range(images, normalize: str = "none", stats=None):
    """uint8 (or 0..255 float) pixels [N, H, W, C] -> float32 network inputs.

    ``none``: ``x / 127.5 - 1`` in [-1, 1] (the paper). ``per_image``: then
    ``(x - mean) / (NORMALIZE_SPREAD * std + NORMALIZE_EPS)`` per image and channel, which is unchanged
    by ``x -> a x + b`` (up to uint8 rounding); values mostly in [-1, 1], defects may fall outside.
    ``stats``: ``(mean, std)`` from :func:`image_stats` of the whole images when ``images`` are crops
    of them (training), so crops are normalized exactly as the whole image is at scoring time.
    The single preprocessing of training, evaluation, figures and the exported SavedModel.
    """
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    if normalize == "none":
        return x
    if normalize != "per_image":
        raise ValueError(f"normalize must be 'none' or 'per_image', got {normalize!r}")
    mean, std = image_stats(images) if stats is None else stats
    return (x - mean) / (NORMALIZE_SPREAD * std + NORMALIZE_EPS)


# ---------------------------------------------------------------------------------- patches
def to_patches(images, patch: int):
    """[N, S, S, C] -> [N * (S/patch)^2, patch, patch, C], row-major patches of each image in turn."""
    n, s, c = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[3]
    g = s // patch
    x = tf.reshape(images, (n, g, patch, g, patch, c))
    x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
    return tf.reshape(x, (n * g * g, patch, patch, c))


def from_patches(patches, grid: int):
    """Inverse of :func:`to_patches` for patches [N * grid^2, p, p, ...] -> [N, grid*p, grid*p, ...]."""
    shape = tf.shape(patches)
    p = shape[1]
    rest = shape[3:]
    x = tf.reshape(patches, tf.concat([[-1, grid, grid, p, p], rest], 0))
    perm = tf.concat([[0, 1, 3, 2, 4], tf.range(5, 5 + tf.size(rest))], 0)
    x = tf.transpose(x, perm)
    return tf.reshape(x, tf.concat([[-1, grid * p, grid * p], rest], 0))


# ---------------------------------------------------------------------------------- augmentation
def _rotation_matrix_transforms(angles, centers, out_size: int):
    """Projective transforms (output -> input coords) for rotated crops centred at ``centers``."""
    cos, sin = tf.cos(angles), tf.sin(angles)
    half = (out_size - 1) / 2.0
    cx, cy = centers[:, 0], centers[:, 1]
    # input = R (output - half) + center
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = cx - a0 * half - a1 * half
    b2 = cy - b0 * half - b1 * half
    zeros = tf.zeros_like(cos)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def rotated_texture_crops(images, patch: int, max_degrees: float, seed, regions=None):
    """Random ``patch`` crops of each image, rotated by U(0, max_degrees) **degrees**.

    The crop centre is drawn so that the rotated square lies inside the image: no empty corner.
    ``regions``: [N, 2] (h, w) int, the top-left part of each image that is the image itself (a tiles
    canvas, the rest its mirrored padding): the centre is then also drawn inside that part (uniform over
    the pixels where both hold; at the nearest allowed position where the part is smaller than a crop).
    ``seed`` is a stateless seed (shape [2]): the same seed gives the same crops.
    Only a window around each crop (side ``ceil(patch * sqrt 2) + 4``, every pixel the rotated square
    and its bilinear neighbours can touch) is cut out of the image, in its own dtype, and cast to
    float, not the whole image (a 512 px texture is 30x the window of a 64 px patch); the result is the
    same crop, up to the float rounding of the shifted coordinates.
    """
    n = tf.shape(images)[0]
    side = tf.shape(images)[1]
    size = tf.cast(side, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    angles = tf.random.stateless_uniform((n,), seeds[0], 0.0, max_degrees) * (math.pi / 180.0)
    half_extent = (patch / 2.0) * (tf.abs(tf.cos(angles)) + tf.abs(tf.sin(angles)))
    lo = half_extent[:, None]                                      # [N, 1]
    hi = (size - half_extent)[:, None]                             # [N, 1]
    if regions is not None:  # centres inside the image's (w, h) (less half a pixel), never below lo
        hi = tf.maximum(lo, tf.minimum(hi, tf.cast(tf.reverse(regions, axis=[1]), tf.float32) - 0.5))  # [N, 2]
    u = tf.random.stateless_uniform((n, 2), seeds[1])
    centers = lo + u * (hi - lo) - 0.5
    window = min(math.ceil(patch * math.sqrt(2.0)) + 4, int(images.shape[1] or 1 << 30))
    # top-left corner (x, y) of each window, kept inside the image (the crop is, see the centres)
    corner = tf.clip_by_value(tf.cast(tf.floor(centers), tf.int32) - window // 2, 0, side - window)
    offsets = tf.range(window)
    rows = corner[:, 1:2] + offsets[None]
    cols = corner[:, 0:1] + offsets[None]
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    images = tf.cast(tf.gather(images, cols, axis=2, batch_dims=1), tf.float32)
    transforms = _rotation_matrix_transforms(angles, centers - tf.cast(corner, tf.float32), patch)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([patch, patch]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")  # never sampled: see centres


def rotate_objects(images, max_degrees: float, seed):
    """Random rotation in [-max_degrees, max_degrees] about the centre, edges filled by nearest."""
    images = tf.cast(images, tf.float32)
    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    angles = tf.random.stateless_uniform((n,), tf.cast(seed, tf.int64), -max_degrees, max_degrees)
    angles = angles * (math.pi / 180.0)
    c = (size - 1.0) / 2.0
    centers = tf.fill((n, 2), c)
    transforms = _rotation_matrix_transforms(angles, centers, int(images.shape[1]))
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


# ---------------------------------------------------------------------------------- tiles: canvas
def scaled_size(height, width, canvas: int, scale: float):
    """(h', w') of an image scaled by ``min(scale, canvas / max(height, width))``: one factor for both
    sides (the aspect ratio is kept), never larger than the canvas, at least 1 pixel. Tensors or ints."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    f = tf.minimum(tf.constant(float(scale), tf.float32), float(canvas) / tf.maximum(h, w))
    return (tf.maximum(1, tf.cast(tf.round(h * f), tf.int32)), tf.maximum(1, tf.cast(tf.round(w * f), tf.int32)))


def region_views(images, regions, size: int):
    """The whole of each image's region, resized to ``size`` x ``size``: the *global view* of a tiles
    canvas (``Config.global_views``).

    ``images``: [N, S, S, C] uint8 or float canvases; ``regions``: [N, 2] int (h, w), the top-left part of
    each that is the image (:func:`fit_to_canvas`). Returns float32 [N, size, size, C] in the input's
    units: bilinear with antialiasing (the aspect ratio is not kept: a 2:1 image is squashed, as an
    ``object`` model squashes it). One op for training, scoring and the export.
    """
    x = tf.cast(images, tf.float32)
    regions = tf.cast(regions, tf.int32)

    def one(args):
        image, hw = args
        return tf.image.resize(image[:hw[0], :hw[1]], (size, size), method="bilinear", antialias=True)

    return tf.map_fn(one, (x, regions), fn_output_signature=tf.TensorSpec([size, size, None], tf.float32))


def region_canvas(maps, regions, size: int):
    """The inverse of :func:`region_views` for maps: each global view's map back over its image's region.

    ``maps``: [N, p, p] float (one map per global view); ``regions``: [N, 2] int (h, w), each at most
    ``size``. Returns float32 [N, size, size]: the map resized to h x w in the top-left corner, 0 elsewhere
    (the mirrored part of a tiles canvas, which no metric reads). The resize is
    ``tf.image.resize(..., "bilinear")``'s (half-pixel centres, no antialiasing), written as gathers and
    arithmetic over the whole batch, so that it has LiteRT kernels (no per-image loop, no resize op of a
    size known only at run time). One op for evaluation, figures, predict and both exports, so their
    anomaly maps agree.
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    regions = tf.cast(regions, tf.int32)
    p = tf.shape(maps)[1]

    def axis(n):
        """[N, size] source rows (or columns) below and above, their weight, and whether inside n."""
        out = tf.range(size, dtype=tf.float32)[None, :]
        n_f = tf.cast(n, tf.float32)[:, None]
        src = (out + 0.5) * (tf.cast(p, tf.float32) / n_f) - 0.5   # TF's kernel: scale = in / out first
        low_f = tf.floor(src)
        low = tf.clip_by_value(tf.cast(low_f, tf.int32), 0, p - 1)
        high = tf.clip_by_value(tf.cast(tf.math.ceil(src), tf.int32), 0, p - 1)
        return low, high, src - low_f, out < n_f

    y0, y1, wy, in_y = axis(regions[:, 0])
    x0, x1, wx, in_x = axis(regions[:, 1])
    rows0 = tf.gather(maps, y0, axis=1, batch_dims=1)        # [N, size, p]
    rows1 = tf.gather(maps, y1, axis=1, batch_dims=1)

    def cols(rows):
        return tf.gather(rows, x0, axis=2, batch_dims=1), tf.gather(rows, x1, axis=2, batch_dims=1)

    (a, b), (c, d) = cols(rows0), cols(rows1)                # [N, size, size]
    wx_, wy_ = wx[:, None, :], wy[:, :, None]
    top = a + (b - a) * wx_
    bottom = c + (d - c) * wx_
    up = top + (bottom - top) * wy_
    inside = tf.logical_and(in_y[:, :, None], in_x[:, None, :])
    return tf.where(inside, up, tf.zeros_like(up))


def _symmetric_index(n, size: int):
    """Source index, in 0..n-1, of each of ``size`` positions when a length-n axis is extended by
    repeated mirror reflection (``d c b a | a b c d | d c b a | a b ...``, scipy's ``reflect``)."""
    i = tf.range(size) % (2 * n)
    return tf.where(i < n, i, 2 * n - 1 - i)


def fit_to_canvas(images, canvas: int, scale: float = 1.0, method: str = "bilinear"):
    """Images of one size [N, H, W, C] -> ``(canvas images [N, canvas, canvas, C] float32, (h', w'))``.

    The images are scaled by one factor (:func:`scaled_size`: ``scale``, 1.0 = native resolution, or less
    to fit the canvas), rounded to whole 0..255 levels (``bilinear``, antialiased) or resampled
    ``nearest`` (masks), and placed top-left; the rest of the canvas is the image mirrored
    (:func:`_symmetric_index`), so every canvas patch looks like image content and no aspect ratio is
    distorted. ``(h', w')`` is the image's region of the canvas.
    """
    x = tf.cast(images, tf.float32)
    h, w = scaled_size(tf.shape(x)[1], tf.shape(x)[2], canvas, scale)
    if method == "nearest":
        x = tf.image.resize(x, tf.stack([h, w]), method="nearest")
    else:
        x = tf.image.resize(x, tf.stack([h, w]), method="bilinear", antialias=True)
        x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    x = tf.gather(x, _symmetric_index(h, canvas), axis=1)
    x = tf.gather(x, _symmetric_index(w, canvas), axis=2)
    return x, (h, w)
