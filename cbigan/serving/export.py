"""SavedModel export for TF Serving: ``python -m cbigan.export runs/<category>/<run>``.

Layout (TF Serving's): ``<export_dir>/<model_name>/<version>/`` with ``saved_model.pb``,
``variables/`` and ``assets.extra/cbigan.json`` (category, sizes, lambda, threshold and its rule).
Defaults: ``export_dir = <run>/export``, ``model_name = <category>``, ``version`` = one more than the
highest existing version (1 for the first export); ``--overwrite`` replaces the given (or latest)
version instead. A version folder appears by an atomic rename of a finished temporary folder, so a
TF Serving instance watching ``<export_dir>/<model_name>`` never loads half an export.

The archive is built with ``keras.export.ExportArchive`` from the EMA encoder/generator and the critic
features. Signatures (see ``docs/serving.md``):

* ``serving_default``: ``images`` float32 ``[N, H, W, 3]``, raw pixels in 0..255, any H and W;
* ``serving_uint8``: the same with uint8 ``images``;
* ``serving_bytes``: ``image_bytes`` string ``[N]``, encoded PNG/JPEG/BMP files, decoded in the graph
  to exactly the pixels :func:`cbigan.data.pipeline.load_image` gives (:func:`decode_image_bytes`); other files
  (TIFF, GIF, WebP, BMP of other kinds) are refused with a message.

Every signature runs the category's own preprocessing in the graph (:func:`cbigan.data.pipeline.resize_uint8`,
:func:`cbigan.data.pipeline.to_model_range`) and the scoring/map implementation shared with evaluation
(:func:`cbigan.scoring.localization.localize` over :func:`cbigan.scoring.parts.score_patches`), and returns ``score`` [N], ``is_anomaly`` [N]
(``score > threshold``), ``threshold`` [N], ``anomaly_map`` [N, S, S] and ``reconstruction``
[N, S, S, 3] (S = the model's image size; texture patches stitched back). A run without a calibrated
threshold exports ``threshold = NaN`` and ``is_anomaly = False`` everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import tensorflow as tf

from cbigan.core.anomaly_score import MAP_RULES, anomaly_map, combine, fusion_stats, global_weight, rule_scores
from cbigan.core.config import Config, as_resolved
from cbigan.core.runfolder import EXPORT, is_run_dir
from cbigan.data.pipeline import PNG_SIGNATURE, to_model_range
from cbigan.model.networks import feature_extractor
from cbigan.core.kinds import kind_of
from cbigan.scoring.localization import localize, map_settings
from cbigan.scoring.parts import in_chunks

METADATA = "cbigan.json"
EXPORT_FORMAT = 1
SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")
OUTPUTS = ("score", "is_anomaly", "threshold", "anomaly_map", "reconstruction")


#: What the export does with a photo's EXIF orientation (also in its metadata and docs/serving.md).
EXIF_NOTE = ("serving_bytes applies a JPEG's or PNG's EXIF orientation (tag 0x0112) as Pillow's exif_transpose "
             "does; serving_default and serving_uint8 take pixels as they are: send them upright (cbigan.serving.predict "
             "applies the orientation with Pillow before)")


class ExportError(RuntimeError):
    """A problem with an export folder, with a one-line message that says what to do."""


# ---------------------------------------------------------------------------------- the graph
def validate_images(images):
    """Graph-side checks of a raw batch: rank 4, 3 channels, non-empty sides.

    Returns the batch with the static shape [N, H, W, 3]. On bad input one of the assertions below
    fails with its message (and the shape received); the rest of the graph runs on a dummy 1x1 image
    meanwhile, so no other op can fail first with a less helpful message (ordering by control
    dependencies alone is not reliable: Grappler's constant folding may drop it).
    """
    shape = tf.shape(images)
    rank = tf.size(shape)
    padded = tf.concat([shape, tf.ones([4], tf.int32)], 0)[:4]
    rank_ok = tf.equal(rank, 4)
    channels_ok = tf.logical_and(rank_ok, tf.equal(padded[3], 3))
    ok = tf.logical_and(channels_ok, tf.logical_and(padded[1] > 0, padded[2] > 0))
    bad_rank = "cbigan: 'images' must be a batch of RGB images [N, H, W, 3] (rank 4); got shape"
    bad_channels = "cbigan: 'images' must have 3 channels (RGB) in the last axis [N, H, W, 3]; got shape"
    bad_sides = "cbigan: 'images' must have a height and width of at least 1 pixel; got shape"
    tf.debugging.Assert(rank_ok, [bad_rank, shape], summarize=8)
    tf.debugging.Assert(tf.logical_or(tf.logical_not(rank_ok), channels_ok), [bad_channels, shape],
                        summarize=8)
    tf.debugging.Assert(tf.logical_or(tf.logical_not(channels_ok), ok), [bad_sides, shape], summarize=8)
    target = tf.stack([padded[0], padded[1], padded[2], 3])
    return tf.cond(ok, lambda: tf.reshape(images, target),
                   lambda: tf.zeros([1, 1, 1, 3], images.dtype))


#: What ``serving_bytes`` decodes, pixel for pixel as :func:`cbigan.data.pipeline.load_image` (Pillow) does.
BYTES_FORMATS = ("PNG (1 to 16 bits; gray, gray+alpha, RGB, RGBA, palette), JPEG (gray, RGB, CMYK), "
                 "BMP (uncompressed 24/32-bit and 8-bit palette)")
_FALLBACK = "decode it to RGB pixels and call serving_default or serving_uint8"


def _I64(v):
    return tf.constant(v, tf.int64)


def _le(head, i: int, n: int, signed: bool = False):
    """The little-endian integer of ``head[i:i+n]`` (int64)."""
    v = tf.add_n([tf.bitwise.left_shift(head[i + k], 8 * k) for k in range(n)])
    return v - (1 << 8 * n) * tf.cast(v >= (1 << (8 * n - 1)), tf.int64) if signed else v


def _be32(h, i: int = 0):
    return tf.add_n([tf.bitwise.left_shift(h[i + k], 8 * (3 - k)) for k in range(4)])


def _raw(padded, pos, n):
    """``n`` bytes of ``padded`` from ``pos`` as int64 (``pos`` may point at the zero padding)."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, pos, n), tf.uint8), tf.int64)


def _png_significant_bits(b, padded):
    """The first value of a PNG's ``sBIT`` chunk, 0 without one (:func:`cbigan.data.pipeline.png_significant_bits`)."""
    n = tf.cast(tf.strings.length(b), tf.int64)
    stops = tf.constant([[73, 68, 65, 84], [80, 76, 84, 69], [73, 69, 78, 68]], tf.int64)  # IDAT PLTE IEND

    def body(off, sbit, done):
        h = _raw(padded, off, 9)
        kind = h[4:8]
        is_sbit = tf.reduce_all(tf.equal(kind, [115, 66, 73, 84]))
        is_stop = tf.reduce_any(tf.reduce_all(tf.equal(stops, kind[None]), axis=1))
        sbit = tf.where(is_sbit, h[8], sbit)
        return off + 12 + _be32(h), sbit, tf.logical_or(is_sbit, is_stop)

    _, sbit, _ = tf.while_loop(lambda off, sbit, done: tf.logical_and(tf.logical_not(done), off + 8 <= n),
                               body, [tf.constant(8, tf.int64), tf.constant(0, tf.int64), tf.constant(False)])
    return sbit


def gray16_to_uint8(a, significant_bits):
    """uint16 gray [H, W] -> uint8 [H, W]: :func:`cbigan.data.pipeline.gray16_top` and
    :func:`cbigan.data.pipeline.scale_to_uint8` in graph ops (``significant_bits`` 0: none)."""
    a = tf.cast(a, tf.int64)
    s = tf.cast(significant_bits, tf.int64)
    valid = tf.logical_and(tf.logical_and(s >= 1, s < 16), tf.size(a) > 0)
    s = tf.where(valid, s, _I64(8))
    top = tf.bitwise.left_shift(tf.constant(1, tf.int64), s) - 1
    low_bits = tf.bitwise.left_shift(tf.constant(1, tf.int64), 16 - s) - 1
    in_low_bits = tf.logical_and(tf.reduce_max(a) <= top,
                                 tf.reduce_any(tf.not_equal(tf.bitwise.bitwise_and(a, low_bits), 0)))
    top = tf.where(tf.logical_and(valid, in_low_bits), top, _I64(65535))
    return tf.cast(tf.clip_by_value((2 * 255 * a + top) // (2 * top), 0, 255), tf.uint8)


#: Where the EXIF block of a file is looked for: its first bytes (a JPEG's APP1 segment comes first).
EXIF_SEARCH_BYTES = 65536


def _find(raw, n: int, sig):
    """[n] bool: where ``sig`` (byte values, None for any byte) starts in ``raw`` (int64 bytes, at least
    ``n + len(sig)`` long)."""
    hits = tf.ones([n], tf.bool)
    for k, c in enumerate(sig):
        if c is not None:
            hits = tf.logical_and(hits, tf.equal(raw[k:k + n], c))
    return hits


def _exif_orientation(b, is_jpeg, is_png):
    """The EXIF orientation tag (1-8; 1 where there is none, or a value outside 1-8) of an encoded file:
    the TIFF block of a JPEG's ``APP1 Exif`` segment or of a PNG's ``eXIf`` chunk in its first
    :data:`EXIF_SEARCH_BYTES` bytes, IFD0's tag 0x0112 (either byte order), as Pillow reads it."""
    size = 2 * EXIF_SEARCH_BYTES
    raw = _raw(tf.strings.join([b, tf.constant(b"\0" * (size + 16))]), 0, size + 16)
    m = tf.cast(tf.shape(raw)[0], tf.int64)
    jpeg_hit = tf.logical_and(is_jpeg, _find(raw, EXIF_SEARCH_BYTES, [0xFF, 0xE1, None, None, *b"Exif\0\0"]))
    png_hit = tf.logical_and(is_png, _find(raw, EXIF_SEARCH_BYTES, list(b"eXIf")))
    found = tf.logical_or(tf.reduce_any(jpeg_hit), tf.reduce_any(png_hit))
    start = tf.where(tf.reduce_any(jpeg_hit), tf.argmax(tf.cast(jpeg_hit, tf.int32)) + 10,
                     tf.argmax(tf.cast(png_hit, tf.int32)) + 4)
    t = tf.where(found, tf.cast(start, tf.int64), _I64(0))

    def byte(i):
        return tf.gather(raw, tf.clip_by_value(i, 0, m - 1))

    little = tf.logical_and(tf.equal(byte(t), 0x49), tf.equal(byte(t + 1), 0x49))  # "II"; "MM": big-endian

    def uint(i, n: int):
        parts = [byte(i + k) for k in range(n)]
        le = tf.add_n([tf.bitwise.left_shift(parts[k], 8 * k) for k in range(n)])
        be = tf.add_n([tf.bitwise.left_shift(parts[k], 8 * (n - 1 - k)) for k in range(n)])
        return tf.where(little, le, be)

    ifd = t + uint(t + 4, 4)
    k = tf.range(64, dtype=tf.int64)
    entry = ifd + 2 + 12 * k
    match = tf.logical_and(tf.equal(uint(entry, 2), 0x0112), k < uint(ifd, 2))
    value = tf.gather(uint(entry + 8, 2), tf.argmax(tf.cast(match, tf.int32)))
    value = tf.where(tf.logical_and(found, tf.reduce_any(match)), value, _I64(1))
    return tf.cast(tf.where(tf.logical_and(value >= 1, value <= 8), value, _I64(1)), tf.int32)


def _upright(image, orientation):
    """[H, W, C] turned upright by an EXIF ``orientation`` (1-8), as ``PIL.ImageOps.exif_transpose``."""
    def transpose():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image, lambda: tf.reverse(image, [1]), lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]), transpose, lambda: tf.image.rot90(image, 3),
        lambda: tf.reverse(transpose(), [0, 1]), lambda: tf.image.rot90(image, 1)])


def decode_image_bytes(b):
    """One encoded file (a scalar string) -> uint8 RGB [H, W, 3], the pixels of :func:`cbigan.data.pipeline.load_image`.

    Formats (:data:`BYTES_FORMATS`), told apart by their first bytes:

    * PNG: 8-bit and lower (gray, RGB, palette; alpha dropped) with ``tf.io.decode_png``; 16-bit gray
      with the PNG's ``sBIT`` and the rounding of :func:`cbigan.data.pipeline.to_rgb_array`; 16-bit colour
      keeps the high byte of each sample, as Pillow reads it;
    * JPEG: ``dct_method="INTEGER_ACCURATE"`` (libjpeg's exact integer IDCT, Pillow's; the default
      fast one is 1-5 levels off), CMYK converted as Pillow does;
    * BMP: 24/32-bit uncompressed with ``tf.io.decode_bmp``; 8-bit palette BMPs are looked up in
      their palette here (``tf.io.decode_bmp`` would return the indices as gray levels).

    A JPEG's or PNG's EXIF orientation is applied (:func:`_exif_orientation`), as every photo viewer and
    :func:`cbigan.data.pipeline.load_image` do.

    Anything else fails with an ``InvalidArgumentError`` whose message starts with ``cbigan:`` and
    says what to send instead: TIFF (TensorFlow has no decoder), GIF (not an image format of the training sets) and WebP (no TensorFlow decoder),
    BMP of other bit depths or compressions, unknown bytes.
    """
    b = tf.convert_to_tensor(b, tf.string)
    padded = tf.strings.join([b, tf.constant(b"\0" * 64)])
    head = tf.ensure_shape(_raw(padded, 0, 64), [64])
    n = tf.cast(tf.strings.length(b), tf.int64)

    def starts(sig: bytes):
        return tf.reduce_all(tf.equal(head[:len(sig)], list(sig)))

    is_bmp = starts(b"BM")
    bpp, compression, dib = _le(head, 28, 2), _le(head, 30, 4), _le(head, 14, 4)
    plain_bmp = tf.logical_and(is_bmp, tf.logical_and(tf.equal(compression, 0), dib >= 40))
    bmp_direct = tf.logical_and(plain_bmp, tf.logical_or(tf.equal(bpp, 24), tf.equal(bpp, 32)))
    bmp_palette = tf.logical_and(plain_bmp, tf.equal(bpp, 8))
    kinds = [starts(PNG_SIGNATURE), starts(b"\xff\xd8\xff"), bmp_direct, bmp_palette, is_bmp,
             tf.logical_or(starts(b"II*\0"), starts(b"MM\0*")), starts(b"GIF8"),
             tf.logical_and(starts(b"RIFF"), tf.reduce_all(tf.equal(head[8:12], list(b"WEBP")))),
             tf.constant(True)]
    index = tf.cast(tf.argmax(tf.cast(tf.stack(kinds), tf.int32)), tf.int32)

    def png():
        depth, color = head[24], head[25]

        def gray16():
            a = tf.io.decode_png(b, channels=1, dtype=tf.uint16)[..., 0]
            return tf.tile(gray16_to_uint8(a, _png_significant_bits(b, padded))[..., None], [1, 1, 3])

        def colour16():
            a = tf.io.decode_png(b, channels=3, dtype=tf.uint16)
            return tf.cast(tf.bitwise.right_shift(a, tf.constant(8, tf.uint16)), tf.uint8)

        return tf.case([(tf.logical_and(tf.equal(depth, 16), tf.equal(color, 0)), gray16),
                        (tf.equal(depth, 16), colour16)],
                       default=lambda: tf.io.decode_png(b, channels=3, dtype=tf.uint8), exclusive=False)

    def jpeg():
        return tf.io.decode_jpeg(b, channels=3, dct_method="INTEGER_ACCURATE")

    def bmp():
        return tf.io.decode_bmp(b, channels=3)

    def bmp8():
        offset, width, height = _le(head, 10, 4), _le(head, 18, 4, signed=True), _le(head, 22, 4, signed=True)
        colors = _le(head, 46, 4)
        colors = tf.where(tf.logical_or(tf.equal(colors, 0), colors > 256), _I64(256), colors)
        rows, stride = tf.abs(height), (width * 8 + 31) // 32 * 4
        ok = tf.logical_and(tf.logical_and(width > 0, offset + stride * rows <= n), 14 + dib + 4 * colors <= n)
        check = tf.debugging.Assert(ok, ["cbigan: truncated or malformed 8-bit BMP file of", n, "bytes"],
                                    summarize=4)
        with tf.control_dependencies([check]):
            rows_ok = tf.where(ok, rows, _I64(1))
            stride_ok, width_ok = tf.where(ok, stride, _I64(4)), tf.where(ok, width, _I64(1))
            data = tf.io.decode_raw(tf.strings.substr(padded, tf.where(ok, offset, _I64(0)), stride_ok * rows_ok),
                                    tf.uint8)
            index_rows = tf.reshape(data, tf.stack([rows_ok, stride_ok]))[:, :width_ok]
            index_rows = tf.cond(height > 0, lambda: tf.reverse(index_rows, [0]), lambda: index_rows)
            colors = tf.where(ok, colors, _I64(1))
            palette = tf.reshape(_raw(padded, tf.where(ok, 14 + dib, _I64(0)), 4 * colors), tf.stack([colors, 4]))
            palette = tf.pad(tf.reverse(palette[:, :3], [1]), tf.stack([[0, 256 - colors], [0, 0]]))
            return tf.cast(tf.gather(palette, tf.cast(index_rows, tf.int32)), tf.uint8)

    def refuse(*message):
        def branch():
            check = tf.debugging.Assert(tf.equal(n, -1), list(message), summarize=4)
            with tf.control_dependencies([check]):
                return tf.zeros(tf.stack([1, 1 + 0 * tf.cast(n, tf.int32), 3]), tf.uint8)
        return branch

    branches = [png, jpeg, bmp, bmp8,
                refuse("cbigan: serving_bytes decodes uncompressed 24/32-bit and 8-bit palette BMP files "
                       "only; this BMP has bits per pixel", bpp, "and compression", compression,
                       f"; {_FALLBACK}"),
                refuse(f"cbigan: serving_bytes cannot decode TIFF files (TensorFlow has no TIFF decoder); "
                       f"send PNG, or {_FALLBACK}"),
                refuse(f"cbigan: serving_bytes does not take GIF files (training reads PNG, JPEG, BMP and "
                       f"TIFF); send PNG, or {_FALLBACK}"),
                refuse(f"cbigan: serving_bytes cannot decode WebP files (TensorFlow has no WebP decoder); "
                       f"send PNG, or {_FALLBACK}"),
                refuse(f"cbigan: serving_bytes takes {BYTES_FORMATS}; these bytes are none of them; "
                       f"{_FALLBACK}")]
    image = tf.switch_case(index, branches)
    image = _upright(image, _exif_orientation(b, kinds[1], kinds[0]))
    return tf.ensure_shape(image, [None, None, 3])


def global_views(images_uint8, regions, cfg: Config):
    """[N, p, p, 3] float32: the global view of each fitted image ([N, S, S, 3] uint8, its region [N, 2]
    ``(h, w)``) in the model's range, as :meth:`ServingGraph.score_resized` makes it in its graph
    (:func:`cbigan.scoring.localization.global_view_parts`); the LiteRT model takes it as an input."""
    from cbigan.core.imageops import region_views

    x = to_model_range(images_uint8, cfg.normalize)
    return region_views(x, tf.cast(regions, tf.int32), cfg.patch_size)


class ServingGraph:
    """The exported computation, also usable in-process (``predict`` on a run folder, benchmarks)."""

    def __init__(self, model, cfg: Config, threshold: float | None, region_only: bool | None = None):
        self.cfg = as_resolved(cfg)
        #: tiles: score only the tiles the maps inside the image's region need (:func:`localize`'s
        #: ``region_only``; the same scores, maps and reconstruction there); False: the whole canvas
        self.region_only = kind_of(self.cfg).name == "tiles" if region_only is None else bool(region_only)
        self.encoder, self.generator = model.ema_encoder, model.ema_generator
        self.features = feature_extractor(model.critic, self.cfg.feature_layer)
        self.threshold = None if threshold is None else float(threshold)
        self.grid = self.cfg.image_size // self.cfg.patch_size
        size = self.cfg.image_size
        spec = [tf.TensorSpec([None, size, size, 3], tf.uint8), tf.TensorSpec([None, 2], tf.int32)]
        # The networks are traced once, in these inner functions, and shared by every signature:
        # _single scores a whole batch in one pass (what the LiteRT model freezes), _core in chunks.
        self._single = tf.function(self.score_resized, input_signature=spec)
        self._core = tf.function(self.score_in_chunks, input_signature=spec)
        p = self.cfg.patch_size
        #: the LiteRT model of a run with global views: the views made outside it (:func:`global_views`)
        self._single_views = tf.function(
            self.score_resized, input_signature=spec + [tf.TensorSpec([None, p, p, 3], tf.float32)])

    def score_resized(self, images_uint8, regions, views=None):
        """Outputs for a batch already resized to [N, S, S, 3] uint8; ``regions`` [N, 2] int32 ``(h, w)``:
        the part of each that is the image (tiles; else ``(S, S)``), which the map rules score less
        ``cfg.score_margin`` at its border.

        Scores and maps come from :func:`cbigan.scoring.localization.localize`, the implementation evaluation
        and figures use, so served and in-framework results agree. ``views``: the global views made
        already (:func:`global_views`; a run with ``global_views`` only).
        """
        cfg = self.cfg
        lam = float(cfg.score_lambda)
        sigma, stride = map_settings(cfg)  # stride None: the patch size
        out = localize(self.encoder, self.generator, self.features, to_model_range(images_uint8, cfg.normalize),
                       patch=cfg.patch_size, lam=lam, sigma=sigma, stride=stride,
                       global_view=bool(cfg.global_views), regions=regions, region_only=self.region_only,
                       keep_grid=cfg.image_score not in MAP_RULES, views=views)
        glob = combine(out["global_r"], out["global_fd"], lam) if "global_r" in out else None
        weight = global_weight(cfg)
        score = rule_scores(cfg.image_score, lam, l_r=out["l_r"], l_fd=out["l_fd"], maps=out["anomaly_map"],
                            topk=cfg.score_topk, regions=regions, margin=cfg.score_margin, global_maps=glob,
                            global_weight=weight, fusion=fusion_stats(cfg))
        amap = anomaly_map(out["anomaly_map"], glob, regions, weight)  # the tiles' map (+ the global view's)
        thr = tf.constant(math.nan if self.threshold is None else self.threshold, tf.float32)
        n = tf.shape(score)[0]
        return {
            "score": score,
            "is_anomaly": tf.greater(score, thr),
            "threshold": tf.fill([n], thr),
            "anomaly_map": tf.ensure_shape(amap, [None, cfg.image_size, cfg.image_size]),
            "reconstruction": tf.ensure_shape((out["reconstruction"] + 1.0) * 127.5,
                                              [None, cfg.image_size, cfg.image_size, 3]),
        }

    def score_in_chunks(self, images_uint8, regions):
        """:meth:`score_resized` over the batch in chunks of at most :data:`cbigan.scoring.parts.PATCHES_PER_CALL`
        patches, two chunks at a time (:func:`cbigan.scoring.parts.in_chunks`), the outputs concatenated (the
        same values as one pass over the batch).

        A texture batch of 32 images is 2,048 patches: in one pass every activation of the networks is
        about 100 MB, far beyond the CPU caches, and memory grows with the batch; in chunks of 256
        patches the served rate rose by about 10% (``python -m cbigan.bench serve``) and the memory of
        a call stays bounded whatever the batch size.
        """
        size = self.cfg.image_size
        specs = {"score": (tf.float32, []), "is_anomaly": (tf.bool, []), "threshold": (tf.float32, []),
                 "anomaly_map": (tf.float32, [size, size]), "reconstruction": (tf.float32, [size, size, 3])}
        return in_chunks(self.score_resized, (images_uint8, regions),
                         kind_of(self.cfg).patches_per_image(self.cfg), specs)

    def _fit(self, images):
        """Raw pixels [N, H, W, 3] -> the kind's model-size uint8 images and the image's region of them."""
        return kind_of(self.cfg).fit(images, self.cfg)

    def serve_images(self, images):
        """Raw pixels [N, H, W, 3] (uint8 or 0..255 floats), any H, W."""
        images = validate_images(images)
        fitted, region = self._fit(images)
        regions = tf.tile(tf.reshape(tf.cast(tf.stack(region), tf.int32), [1, 2]), [tf.shape(fitted)[0], 1])
        out = dict(self._core(fitted, regions))
        size_hw = (tf.shape(images)[1], tf.shape(images)[2])
        for key in ("anomaly_map", "reconstruction"):  # tiles: back to the input's own size
            out[key] = kind_of(self.cfg).to_input_size(out[key], region, size_hw)
        return out

    def serve_bytes(self, image_bytes):
        """Encoded image files [N] (:data:`BYTES_FORMATS`), decoded to RGB in the graph exactly as
        :func:`cbigan.data.pipeline.load_image` decodes them (:func:`decode_image_bytes`)."""
        size = self.cfg.image_size
        image_bytes = tf.ensure_shape(image_bytes, [None])

        def decode(b):  # tiles: each image on its own canvas (the maps stay at the canvas resolution)
            fitted, region = self._fit(decode_image_bytes(b)[None])
            return fitted[0], tf.cast(tf.stack(region), tf.int32)

        x8, regions = tf.map_fn(decode, image_bytes, fn_output_signature=(
            tf.TensorSpec([size, size, 3], tf.uint8), tf.TensorSpec([2], tf.int32)))
        return self._core(x8, regions)

    def python_fn(self):
        """A ``tf.function`` of :meth:`serve_images` for in-process use (retraces per dtype only)."""
        return tf.function(self.serve_images,
                           input_signature=[tf.TensorSpec(None, tf.float32, name="images")])


def build_archive(model, cfg: Config, threshold: float | None):
    """A ``keras.export.ExportArchive`` with the three signatures (``serving_default`` first)."""
    import keras

    graph = ServingGraph(model, cfg, threshold)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", graph.serve_images,
                         input_signature=[tf.TensorSpec(None, tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", graph.serve_images,
                         input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", graph.serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return archive


# ---------------------------------------------------------------------------------- layout
def versions(model_dir: str | Path) -> list[int]:
    """The numeric version folders of a TF Serving model folder, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def metadata(cfg: Config, threshold_info: dict | None, run_dir: str | Path | None) -> dict:
    info = threshold_info or {"threshold": None, "rule": "not calibrated"}
    return {
        "format": EXPORT_FORMAT, "category": cfg.category, "kind": cfg.kind,
        "image_size": cfg.image_size, "scale": cfg.scale, "patch_size": cfg.patch_size, "score_lambda": cfg.score_lambda,
        "image_score": cfg.image_score, "score_topk": cfg.score_topk, "score_margin": cfg.score_margin,
        "global_views": cfg.global_views, "global_weight": global_weight(cfg) if cfg.global_views else None,
        "feature_layer": cfg.feature_layer, "threshold": info.get("threshold"), "threshold_info": info,
        "run_dir": None if run_dir is None else str(Path(run_dir).resolve()),
        "signatures": {
            "serving_default": "images float32 [N, H, W, 3] raw pixels 0..255",
            "serving_uint8": "images uint8 [N, H, W, 3]",
            "serving_bytes": f"image_bytes string [N] encoded files: {BYTES_FORMATS}",
        },
        "exif_orientation": EXIF_NOTE,
        "outputs": list(OUTPUTS),
        "tensorflow": tf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export_model(model, cfg: Config, export_dir: str | Path, *, threshold_info: dict | None = None,
                 model_name: str | None = None, version: int | None = None, overwrite: bool = False,
                 run_dir: str | Path | None = None) -> Path:
    """Write ``<export_dir>/<model_name>/<version>/`` and return that folder.

    ``version`` None: one more than the highest existing version, or, with ``overwrite``, the highest
    existing one (1 if none). An existing explicit version is refused unless ``overwrite``.
    """
    cfg = as_resolved(cfg)
    if threshold_info and "global_weight" in threshold_info:  # calibrated with this threshold
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "global_weight": float(threshold_info["global_weight"])})
    if threshold_info and "fusion" in threshold_info:  # the fused rules' statistics, calibrated with it
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "fusion": threshold_info["fusion"]})
    model_dir = Path(export_dir) / (model_name or cfg.category)
    existing = versions(model_dir)
    if version is None:
        version = (existing[-1] if overwrite else existing[-1] + 1) if existing else 1
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it or choose another "
                          f"--version")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {model_dir}: {e.strerror}; choose another --export-dir") from None
    threshold = None if threshold_info is None else threshold_info.get("threshold")
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_archive(model, cfg, threshold).write_out(str(tmp), verbose=False)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / METADATA).write_text(json.dumps(metadata(cfg, threshold_info, run_dir), indent=2) + "\n")
        old = None
        if target.exists():
            old = model_dir / f".old-{version}-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_threshold(run_dir: Path, cfg: Config, model, *, threshold: float | None = None,
                      recalibrate: bool = False, skip_bad_images: bool = False,
                      verbose: bool = True) -> dict:
    """The run's threshold record: a manual value, the stored one, or a fresh calibration.

    A run without ``threshold.json`` (trained before calibration existed), or ``recalibrate``, is
    calibrated now on its held-out images (the same seeded split as in training) and the result is
    written to the run folder.
    """
    from cbigan.core.runfolder import read_threshold, write_threshold
    from cbigan.scoring.threshold import calibrate_threshold, manual_threshold

    if threshold is not None:
        return manual_threshold(threshold, cfg)
    info = None if recalibrate else read_threshold(run_dir)
    if info is None:
        from cbigan.data.pipeline import load_train_set

        train_set = load_train_set(cfg, skip_bad=skip_bad_images)
        info = calibrate_threshold(model, cfg, train_set.val_images, n_images=train_set.n_images,
                                   regions=train_set.val_regions)
        try:
            write_threshold(run_dir, info)
        except OSError as e:  # a read-only run folder: this command uses the record all the same
            print(f"note: the calibrated threshold is not saved in {run_dir} ({e.strerror}); it is used "
                  f"for this command only")
        if verbose:
            print(f"calibrated threshold: {info['threshold']} ({info['rule']})")
    return info


def load_for_export(run_dir: str | Path, *, threshold: float | None = None, recalibrate: bool = False,
                    percentile: float | None = None, skip_bad_images: bool = False,
                    verbose: bool = True) -> tuple[Config, object, dict]:
    """``(cfg, model, threshold record)`` of a finished run folder, as every export format needs them
    (the SavedModel here, the LiteRT file in :mod:`cbigan.serving.litert`); ``percentile`` recalibrates at it."""
    import dataclasses

    from cbigan.model.gan import load_trained

    run_dir = Path(run_dir)
    cfg, model = load_trained(run_dir)
    if percentile is not None:
        cfg = dataclasses.replace(cfg, threshold_percentile=float(percentile))
        recalibrate = True
    info = resolve_threshold(run_dir, cfg, model, threshold=threshold, recalibrate=recalibrate,
                             skip_bad_images=skip_bad_images, verbose=verbose)
    return cfg, model, info


def export_run(run_dir: str | Path, export_dir: str | Path | None = None, *, model_name: str | None = None,
               version: int | None = None, overwrite: bool = False, threshold: float | None = None,
               recalibrate: bool = False, percentile: float | None = None,
               skip_bad_images: bool = False, verbose: bool = True) -> Path:
    """Export a finished run folder (config.json + model.weights.h5); returns the version folder."""
    run_dir = Path(run_dir)
    cfg, model, info = load_for_export(run_dir, threshold=threshold, recalibrate=recalibrate,
                                       percentile=percentile, skip_bad_images=skip_bad_images, verbose=verbose)
    return export_model(model, cfg, export_dir or run_dir / EXPORT, threshold_info=info,
                        model_name=model_name, version=version, overwrite=overwrite, run_dir=run_dir)


# ---------------------------------------------------------------------------------- loading
def find_saved_model(path: str | Path) -> Path:
    """The SavedModel folder meant by ``path``: a version folder, a model folder (latest version), an
    export folder holding one model, or a run folder (its ``export/``)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    for base in (path, path / "export"):
        if not base.is_dir():
            continue
        v = [n for n in versions(base) if (base / str(n) / "saved_model.pb").is_file()]
        if v:
            return base / str(v[-1])
        models = [d for d in sorted(base.iterdir()) if d.is_dir() and versions(d)]
        if len(models) == 1:
            return find_saved_model(models[0])
        if len(models) > 1:
            names = ", ".join(d.name for d in models)
            raise ExportError(f"{base} holds several models ({names}); pass one of them")
    runs = [d.name for d in sorted(path.iterdir()) if d.is_dir() and is_run_dir(d)] if path.is_dir() else []
    if runs:  # a category folder runs/<category>: the runs are one level down
        raise ExportError(f"{path} is a category folder holding the run(s) {', '.join(runs)}; pass one of them "
                          f"({path / runs[0]})")
    raise ExportError(f"no SavedModel under {path}; expected <export_dir>/<model_name>/<version>/"
                      f"saved_model.pb (write one with python -m cbigan.export RUN_DIR)")


def read_metadata(saved_model_dir: str | Path) -> dict:
    path = Path(saved_model_dir) / "assets.extra" / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


class LoadedExport:
    """A SavedModel loaded with ``tf.saved_model.load``, called through its ``serving_default`` signature."""

    def __init__(self, path: str | Path):
        self.path = find_saved_model(path)
        self.meta = read_metadata(self.path)
        self.module = tf.saved_model.load(str(self.path))
        self.signature = self.module.signatures["serving_default"]

    @property
    def threshold(self):
        return self.meta.get("threshold")

    def __call__(self, images) -> dict:
        out = self.signature(images=tf.cast(tf.convert_to_tensor(images), tf.float32))
        return {k: v.numpy() for k, v in out.items()}
