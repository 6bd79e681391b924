"""MVTec AD layout reader and tf.data pipelines.

A category folder holds ``train/good``, ``test/<good|defect>`` and optionally
``ground_truth/<defect>/<name>_mask.png`` (names, hidden files, the good folder's letter case and the
other accepted mask names: :mod:`cbigan.core.layout`). Images are decoded with Pillow (PNG, JPEG, BMP, TIFF;
RGB, grayscale, palette, RGBA, CMYK, 16-bit: :func:`to_rgb_array`), resized once with :func:`resize_uint8` (the same op the
exported SavedModel runs) and kept in memory as uint8; augmentation (the input kind's,
:mod:`cbigan.core.kinds`) runs batched in the graph. Patch tiling and the rotation ops live in
:mod:`cbigan.core.imageops` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from cbigan.core.config import CATEGORIES, Config, as_resolved
from cbigan.core.errors import DataError, exception_reason
from cbigan.core.imageops import (from_patches, rotate_objects, rotated_texture_crops,  # noqa: F401  (re-exported)
                       resize_uint8, to_model_range, to_patches)
from cbigan.core.kinds import kind_of
from cbigan.core.layout import (GOOD, GROUND_TRUTH, IMAGE_EXTENSIONS, TEST, TRAIN,  # noqa: F401  (re-exported)
                     MaskFinder, category_dir, check_good_test_folder, exif_orientation, good_folder,
                     has_ground_truth, list_images, load_image_size, mask_path, scan_images, test_category_dir,
                     test_image_paths, warn_skipped)

#: The official MVTec AD archive (all 15 categories) and its SHA-256; ``--download`` extracts one
#: category from it. Override with CBIGAN_MVTEC_URL / CBIGAN_MVTEC_SHA256 (e.g. a mirror).
MVTEC_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
             "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"


# ---------------------------------------------------------------------------------- files
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: A 16-bit image whose values all lie below this uses under 1/16 of the 16-bit range (12-bit data?).
LOW_RANGE_16BIT = 4096


def load_image(path: str | Path, low_range: list | None = None) -> np.ndarray:
    """Decode any supported image file to uint8 RGB (H, W, 3); :class:`DataError` names a bad file.

    Every failure while decoding this one file (Pillow raises OSError, ValueError, EOFError,
    struct.error, zlib.error, DecompressionBombError, RuntimeError, ... depending on the damage) is
    a :class:`DataError` naming it, so callers can list or skip it. 16-bit grayscale: see
    :func:`gray16_top`; one whose values use under 1/16 of the range without an sBIT chunk is
    appended to ``low_range`` when given, else warned about. 32-bit integer and floating-point
    images: :func:`to_rgb_array`. The EXIF orientation is applied, as every photo viewer shows the
    picture (:func:`apply_orientation`): a phone photo stored sideways is read upright.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            orientation = exif_orientation(im)
            sixteen = im.mode.startswith("I;16") or _is_int16_in_int32(im)
            sbit = png_significant_bits(path) if im.format == "PNG" and sixteen else None
            rgb = apply_orientation(to_rgb_array(im, sbit), orientation)
            low = (sixteen and gray16_top(np.asarray(im), sbit) == 65535
                   and int(np.asarray(im).max(initial=0)) < LOW_RANGE_16BIT)
    except Exception as e:  # noqa: BLE001  (any decoder failure is this file's, see the docstring)
        raise DataError(f"cannot read image {path}: {exception_reason(e)}; replace or remove the file") from None
    if low:
        if low_range is not None:
            low_range.append(path)
        else:
            warnings.warn(low_range_message([path]), stacklevel=2)
    return rgb


def low_range_message(paths) -> str:
    names = ", ".join(str(p) for p in list(paths)[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return (f"{len(paths)} 16-bit image(s) use under 1/16 of the 16-bit range (every value below "
            f"{LOW_RANGE_16BIT}; 12-bit camera data?) and have no PNG sBIT chunk declaring their bits, so "
            f"they are scaled by 65535 and keep at most 16 gray levels: {names}; save them with an sBIT "
            f"chunk (e.g. 12 bits) or rescaled to the full 16-bit range")


def png_significant_bits(path: str | Path) -> int | None:
    """The significant bits of the first (gray) sample declared by a PNG's ``sBIT`` chunk, or None
    (no chunk, or not a PNG). The chunk precedes ``PLTE`` and ``IDAT``; Pillow does not expose it."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            n, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = f.read(1)
                return data[0] if data else None
            if kind in (b"PLTE", b"IDAT", b"IEND"):
                return None
            f.seek(n + 4, os.SEEK_CUR)


def gray16_top(a: np.ndarray, significant_bits: int | None) -> int:
    """The 16-bit gray value that becomes 255: 65535, or ``2**s - 1`` for data stored in the low ``s``
    bits.

    A PNG ``sBIT`` chunk of ``s`` < 16 bits with every value at most ``2**s - 1`` and not all of them
    multiples of ``2**(16 - s)`` is data in the low bits (a Mono12 camera writes 0..4095): it is
    scaled by ``2**s - 1`` so its gray levels survive. Data already scaled to 16 bits, as the PNG
    specification asks (values shifted to the top bits), and files without sBIT use 65535. The export's
    ``serving_bytes`` applies the same rule in its graph (:func:`cbigan.serving.export.decode_image_bytes`).
    """
    s = significant_bits
    if s is None or not 1 <= s < 16 or a.size == 0:
        return 65535
    top = (1 << s) - 1
    a = np.asarray(a)
    if int(a.max()) <= top and np.any(a & ((1 << (16 - s)) - 1)):
        return top
    return 65535


def scale_to_uint8(a: np.ndarray, top: int) -> np.ndarray:
    """``round(a * 255 / top)`` (halves up) in integers, clipped to 0..255: the 16-bit -> 8-bit rule,
    computed identically in the export's graph."""
    a = np.asarray(a, np.int64)
    return np.clip((2 * 255 * a + top) // (2 * top), 0, 255).astype(np.uint8)


#: EXIF orientation -> the flips and turns that show the stored pixels upright (Pillow's
#: ``ImageOps.exif_transpose``): (transpose rows and columns, flip vertically, flip horizontally), in that order.
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                7: (True, True, True), 8: (True, True, False)}


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """An [H, W, ...] array as a viewer shows an image of that EXIF ``orientation`` (1: unchanged)."""
    transpose, flip_v, flip_h = ORIENTATIONS.get(int(orientation), ORIENTATIONS[1])
    if transpose:
        a = np.swapaxes(a, 0, 1)
    if flip_v:
        a = a[::-1]
    if flip_h:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def _is_int16_in_int32(im: Image.Image) -> bool:
    """A 32-bit integer gray image whose values fit 16 bits (16-bit data Pillow reads as mode ``I``)."""
    if im.mode != "I":
        return False
    a = np.asarray(im)
    return a.size > 0 and int(a.min()) >= 0 and 255 < int(a.max()) <= 65535


def gray_levels(a: np.ndarray) -> np.ndarray:
    """A 32-bit integer or floating-point gray image -> uint8, its levels kept; ValueError (the file is
    refused by name) for values it cannot place in a range.

    Integers: 0..255 as they are, up to 65535 as 16-bit (:func:`gray16_top`), beyond that scaled by
    ``2**b - 1`` for the ``b`` bits their maximum needs (so they keep at least 128 levels); negative
    values are refused. Floats: 0..1 (scaled by 255), else 0..255, else 0..65535; negative, NaN or
    infinite values and larger ones are refused.
    """
    a = np.asarray(a)
    if a.size == 0:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("floating-point image with NaN or infinite values; save it as 8- or 16-bit PNG")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"floating-point image with values {lo:g}..{hi:g} outside 0..1, 0..255 and "
                             f"0..65535; rescale it to one of them or save it as 8- or 16-bit PNG")
        top = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
        return np.clip(np.floor(a / top * 255.0 + 0.5), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise ValueError(f"integer image with negative values ({lo}..{hi}); save it as 8- or 16-bit PNG")
    top = 255 if hi <= 255 else 65535 if hi <= 65535 else (1 << hi.bit_length()) - 1
    return scale_to_uint8(a, top)


def to_rgb_array(im: Image.Image, significant_bits: int | None = None) -> np.ndarray:
    """Pillow image of any mode -> uint8 RGB array. 16-bit, 32-bit and float images are rescaled to 8 bit.

    16-bit grayscale (also a 32-bit integer one whose values fit 16 bits): :func:`gray16_top` with the
    PNG's declared ``significant_bits``, rounded to the nearest 8-bit level. 16-bit colour PNGs keep
    Pillow's reading (the high byte of each sample). Other 32-bit integer and float images:
    :func:`gray_levels`. EXIF orientation is not applied here (:func:`load_image` does).
    """
    if im.mode.startswith("I;16") or _is_int16_in_int32(im):
        a = np.asarray(im).astype(np.uint16)
        return np.repeat(scale_to_uint8(a, gray16_top(a, significant_bits))[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        return np.repeat(gray_levels(np.asarray(im))[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


#: Formats whose compression changes pixel values: a mask saved so rings around every edge.
LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")


def load_mask(path: Path, lossy: list | None = None) -> np.ndarray:
    """Binary mask (H, W) uint8 in {0, 1}: every non-zero pixel is a defect, so 0/255, 0/1 and
    class-id masks (1..k) all work. Palette masks are read by index (class ids), colour masks by any
    non-zero channel; an alpha channel is ignored; the EXIF orientation is applied as for images.

    A mask in a lossy format (JPEG: :data:`LOSSY_FORMATS`) is binarized at half its range instead
    (128 of 255), since compression rings around every edge; it is appended to ``lossy`` when given,
    else warned about (:func:`lossy_mask_message`)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt = im.mode, im.format
            orientation = exif_orientation(im)
            a = np.asarray(im)
    except Exception as e:  # noqa: BLE001  (any decoder failure is this file's)
        raise DataError(f"cannot read mask {path}: {exception_reason(e)}; replace or remove the file") from None
    is_lossy = fmt in LOSSY_FORMATS
    if is_lossy:
        half = (np.iinfo(a.dtype).max + 1) // 2 if np.issubdtype(a.dtype, np.integer) else 0.5
        a = a >= half
    if a.ndim == 3:
        if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
            a = a[..., :-1]
        a = a.any(axis=2)
    if is_lossy:
        if lossy is not None:
            lossy.append(Path(path))
        else:
            warnings.warn(lossy_mask_message([path]), stacklevel=2)
    return apply_orientation((a != 0).astype(np.uint8), orientation)


def lossy_mask_message(paths) -> str:
    paths = list(paths)
    names = ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return (f"{len(paths)} mask(s) are saved in a lossy format (JPEG), whose compression rings around every "
            f"edge: they are binarized at half their range (a pixel is a defect at 128 of 255 or more) "
            f"instead of at any non-zero value: {names}; save masks as PNG to keep them exact")


# ---------------------------------------------------------------------------------- preprocessing
def load_resized(paths, size, desc: str = "images", skip_bad: bool = False, regions: list | None = None):
    """Decode and resize every file; all unreadable files are listed in one error (or skipped).

    ``size``: a side (square resize, :func:`resize_uint8`) or a :class:`Config`, whose input kind fits
    the images (:meth:`cbigan.core.kinds.InputKind.fit`: a square resize, or tiles on a canvas).
    ``regions``: a list that receives, per image kept, the ``(h, w)`` of the model-size image that
    holds the image (the whole of it but for tiles)."""
    from tqdm import tqdm

    side = size.image_size if isinstance(size, Config) else size
    # filled in place: a list of the images and a stack of it would hold them twice at the peak
    images, n = np.empty((len(paths), side, side, 3), np.uint8), 0
    bad, low_range = [], []
    # no bar for a few files, nor when the output is not a terminal (log files of background runs)
    for p in tqdm(paths, desc=f"loading {desc}", unit="img", leave=False,
                  disable=True if len(paths) < 50 else None):
        try:
            a = load_image(p, low_range)
        except DataError as e:
            bad.append((Path(p), str(e)))
            continue
        if isinstance(size, Config):
            fitted, hw = kind_of(size).fit(a[None], size)
            images[n] = np.asarray(fitted)[0]
            if regions is not None:
                regions.append((int(hw[0]), int(hw[1])))
        else:
            images[n] = resize_uint8(a[None], size)[0].numpy()
            if regions is not None:
                regions.append((int(size), int(size)))
        n += 1
    if low_range:
        warnings.warn(low_range_message(low_range), stacklevel=2)
    if bad and not skip_bad:
        names = ", ".join(str(p) for p, _ in bad)
        raise DataError(f"{len(bad)} unreadable image(s): {names} (first: {bad[0][1]}); remove or replace "
                        f"them (or pass --skip-bad-images)")
    return (images if n == len(images) else images[:n].copy()), [p for p, _ in bad]


# ---------------------------------------------------------------------------------- datasets
@dataclass
class TrainSet:
    images: np.ndarray        # [N, S, S, 3] uint8, resized
    paths: list
    val_images: np.ndarray    # held-out train/good images (threshold, model selection)
    val_paths: list
    skipped: list
    val_regions: np.ndarray | None = None  # [N_val, 2] (h, w): the part of each that is the image (tiles)
    regions: np.ndarray | None = None      # [N, 2] (h, w) of each training image, likewise

    @property
    def n_images(self) -> int:
        """Images found in train/good: trained on, held out and skipped as unreadable."""
        return len(self.paths) + len(self.val_paths) + len(self.skipped)


def split_train_val(paths: list, val_split: float, seed: int):
    """Seeded, disjoint split of train/good paths into (train, held-out)."""
    paths = list(paths)
    n_val = int(round(len(paths) * val_split))
    if val_split > 0 and n_val == 0 and len(paths) >= 2:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(paths))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(paths) if i not in val_idx]
    val = [p for i, p in enumerate(paths) if i in val_idx]
    return train, val


def load_train_set(cfg: Config, skip_bad: bool = False) -> TrainSet:
    cfg = as_resolved(cfg)
    root = category_dir(cfg.data_dir, cfg.category)
    good = good_folder(root / TRAIN)
    paths, other = scan_images(good)  # day or lot sub-folders included
    warn_skipped(other, str(good))
    if not paths:
        raise DataError(f"no images in {good}; expected image files there "
                        f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}, any letter case)")
    train_paths, val_paths = split_train_val(paths, cfg.val_split, cfg.seed)
    regions, val_regions = [], []
    images, bad1 = load_resized(train_paths, cfg, "train images", skip_bad, regions)
    val_images, bad2 = load_resized(val_paths, cfg, "held-out images", skip_bad, val_regions)
    bad = set(bad1 + bad2)
    if len(images) == 0:
        raise DataError(f"no readable training images in {good}")
    return TrainSet(images, [p for p in train_paths if p not in bad], val_images,
                    [p for p in val_paths if p not in bad], sorted(bad),
                    np.array(val_regions, np.int32).reshape(-1, 2), np.array(regions, np.int32).reshape(-1, 2))


@dataclass
class TestSet:
    images: np.ndarray        # [N, S, S, 3] uint8
    labels: np.ndarray        # [N] 0 good, 1 defective
    defect_types: list        # "good" or the defect folder name
    paths: list
    masks: np.ndarray | None  # [N, S, S] uint8 in {0, 1}; None when the category has no ground truth
    has_mask: np.ndarray      # [N] bool: a mask file existed (good images count as having an empty one)
    skipped: list = field(default_factory=list)  # unreadable test images left out (skip_bad)
    regions: np.ndarray | None = None  # [N, 2] (h, w): the part of each model-size image that is the image

    def __len__(self):
        return len(self.labels)


def load_test_set(cfg: Config, skip_bad: bool = False, with_masks: bool = True) -> TestSet:
    """The test images of ``cfg``'s category at model size, their labels (test/good 0, any other folder 1)
    and, with ``with_masks`` and a ``ground_truth`` folder, their defect masks (``with_masks=False``:
    image-level use only, masks neither read nor checked). :class:`DataError` for a missing or empty test folder,
    unreadable images (unless ``skip_bad``) or a mask of another size than its image."""
    cfg = as_resolved(cfg)
    root = test_category_dir(cfg.data_dir, cfg.category)  # the training images are not needed
    test_root = root / TEST
    other = []
    found = test_image_paths(cfg.data_dir, cfg.category, other)
    warn_skipped(other, str(test_root))
    if found is None:
        raise DataError(f"no test folder {test_root}; the MVTec layout needs test/good and test/<defect>")
    paths, types = found
    if not paths:
        raise DataError(f"no test images under {test_root}")
    check_good_test_folder(cfg.data_dir, cfg.category)  # else every image would be labelled defective
    regions = []
    images, bad = load_resized(paths, cfg, "test images", skip_bad, regions)
    keep = [i for i, p in enumerate(paths) if p not in set(bad)]
    paths = [paths[i] for i in keep]
    types = [types[i] for i in keep]
    labels = np.array([0 if t == GOOD else 1 for t in types], np.int64)
    masks, has_mask = None, np.array([t == GOOD for t in types])
    if with_masks and has_ground_truth(cfg.data_dir, cfg.category):
        finder = MaskFinder(root / GROUND_TRUTH)
        masks = np.zeros((len(paths), cfg.image_size, cfg.image_size), np.uint8)
        missing, empty, lossy = {}, [], []
        for i, (p, t) in enumerate(zip(paths, types)):
            if t == GOOD:
                continue
            mp = finder.find(p, t, within=Path(p).parent.relative_to(test_root / t))
            if mp is None:
                missing.setdefault(t, []).append(p)
                continue
            m = load_mask(mp, lossy)
            h, w = load_image_size(p)
            if m.shape != (h, w):
                raise DataError(f"mask {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is "
                                f"{w}x{h}; masks must have their image's size (fix the mask, or evaluate.py --no-pixel "
                                f"for image-level metrics only)")
            if not m.any():
                empty.append(mp)
            masks[i] = np.asarray(kind_of(cfg).fit_mask(m, cfg))
            has_mask[i] = True
        warn_missing_masks(finder, missing)
        if lossy:
            warnings.warn(lossy_mask_message(lossy), stacklevel=2)
        if empty:
            warnings.warn(f"{len(empty)} mask file(s) have no defect pixel (every non-zero pixel is a defect, "
                          f"these are all zero): {', '.join(str(p) for p in empty)}; their images add only "
                          f"normal pixels to the pixel metrics", stacklevel=2)
    return TestSet(images, labels, types, paths, masks, has_mask, sorted(bad), np.array(regions, np.int32))


def warn_missing_masks(finder: MaskFinder, missing: dict) -> None:
    """One warning per defect type naming its images without a mask, the names looked for, and the
    files of ``ground_truth/<type>`` that matched no image."""
    for t, images in missing.items():
        folder = finder.folder(t)
        where = str(folder) if folder is not None else f"{finder.root / t} (no such folder)"
        looked = "; ".join(f"{Path(p).name}: {MaskFinder.looked_for(p)}" for p in images)
        others = ", ".join(p.name for p in finder.unmatched(t)) or "none"
        warnings.warn(f"{len(images)} defective test image(s) of type '{t}' have no mask in {where} "
                      f"(looked for {looked}; any image extension, any letter case); files there that "
                      f"match no image: {others}; these images are left out of the pixel metrics",
                      stacklevel=3)



# ---------------------------------------------------------------------------------- training batches
def shuffled_indices(step, batch: int, n: int, seed: int):
    """Image indices of batch ``step``: consecutive slices of a fresh permutation per pass over the data.

    A pure function of (seed, step), so the data stream of a resumed run is the uninterrupted one's.
    """
    step = tf.cast(step, tf.int64)
    k = step * batch + tf.range(batch, dtype=tf.int64)
    epoch, pos = k // n, k % n
    first = epoch[0]
    perms = tf.map_fn(
        lambda e: tf.argsort(tf.random.stateless_uniform((n,), tf.stack([tf.constant(seed, tf.int64), e]))),
        tf.range(first, epoch[-1] + 1), fn_output_signature=tf.int32)
    return tf.gather_nd(perms, tf.stack([epoch - first, pos], axis=1))


def pool_stats(images: np.ndarray, chunk: int = 32):
    """:func:`cbigan.core.imageops.image_stats` of every image [N, H, W, C] (uint8), ``chunk`` at a time:
    ``(mean, std)``, each a float32 tensor [N, 1, 1, C]."""
    from cbigan.core.imageops import image_stats

    parts = [image_stats(images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return tuple(tf.concat([p[k] for p in parts], 0) for k in (0, 1))


def train_dataset(images: np.ndarray, cfg: Config, start_step: int = 0,
                  regions: np.ndarray | None = None) -> tf.data.Dataset:
    """Infinite, shuffled, augmented batches of [-1, 1] images from the in-memory uint8 array.

    ``regions``: [N, 2] (h, w) of each image's own part (:attr:`TrainSet.regions`), where the kind's
    crops may be confined to it (``cfg.train_crops`` "image"); None: the whole of every image.

    Batch ``i`` depends only on (seed, start_step + i): shuffling and augmentation use stateless
    random ops, so resuming at a step reproduces the batches an uninterrupted run would have seen.
    """
    cfg = as_resolved(cfg)
    augment = kind_of(cfg).augment  # the input kind's training augmentation (cbigan/core/kinds.py)
    images = np.ascontiguousarray(images)
    shape = images.shape[1:]

    def gather(idx):
        # the batch is gathered from the NumPy array itself: a TensorFlow copy of the whole pool
        # (tf.convert_to_tensor) took twice the pool's size again at its peak (1.5 GB more for magnetic
        # tile's 640 px canvases)
        out = tf.numpy_function(lambda i: images[i], [idx], tf.uint8, stateful=False)
        out.set_shape((None, *shape))
        return out

    n = len(images)
    # per-image normalization: each whole image's statistics once, not for every batch (on 640 px tile
    # canvases that took about as long as the train step itself)
    stats = pool_stats(images) if cfg.normalize != "none" else None
    if regions is not None:
        regions = tf.convert_to_tensor(np.asarray(regions, np.int32).reshape(n, 2))

    def batch_at(step):
        idx = shuffled_indices(step, cfg.batch_size, n, cfg.seed)
        aug_seed = tf.stack([tf.constant(cfg.seed + 7919, tf.int64), step])
        batch_stats = None if stats is None else (tf.gather(stats[0], idx), tf.gather(stats[1], idx))
        batch_regions = None if regions is None else tf.gather(regions, idx)
        return augment(gather(idx), cfg, aug_seed, stats=batch_stats, regions=batch_regions)

    ds = tf.data.Dataset.counter(start_step, dtype=tf.int64)
    ds = ds.map(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------- download
def download_category(category: str, data_dir: str | Path, url: str | None = None,
                      sha256: str | None = None) -> Path:
    """Fetch the MVTec AD archive, check its SHA-256, and extract ``category`` atomically.

    The archive is written to a ``.part`` file and only used after the checksum matches; the category
    is extracted into a temporary folder beside the target and renamed into place, so an interrupted
    download never leaves a half category behind.
    """
    url = url or os.environ.get("CBIGAN_MVTEC_URL", MVTEC_URL)
    sha256 = (sha256 or os.environ.get("CBIGAN_MVTEC_SHA256", MVTEC_SHA256)).lower()
    data_dir = Path(data_dir).expanduser()
    target = data_dir / category
    if (target / TRAIN / GOOD).is_dir():
        return target
    from cbigan.core.layout import check_not_category_folder
    from cbigan.core.runfolder import check_writable

    check_not_category_folder(data_dir, category)  # not data/bottle/bottle
    check_writable(data_dir, "--data-dir DIR", "the downloaded category")
    if url == MVTEC_URL and category not in CATEGORIES:
        # checked before fetching about 5 GB: the official archive holds only MVTec AD's 15 categories
        raise DataError(f"'{category}' is not an MVTec AD category, so --download cannot fetch it (one of: "
                        f"{', '.join(CATEGORIES)}); for your own images make {target}/train/good yourself")
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / (Path(url.split("?")[0]).name or "mvtec.tar.xz")
    if not archive.is_file() or _sha256(archive) != sha256:
        part = archive.with_name(archive.name + ".part")
        try:
            _fetch(url, part)
        except OSError as e:
            raise DataError(f"download of {url} failed: {e}; check the network or download by hand "
                            f"into {data_dir}") from None
        got = _sha256(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                            f"the download is corrupt, try again")
        os.replace(part, archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=data_dir))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if _category_member(m.name, category)]
            if not members:
                raise DataError(f"the archive {archive} has no folder '{category}'; check the category name")
            tar.extractall(tmp, members=members, filter="data")
        found = next(p for p in tmp.rglob(category) if (p / TRAIN / GOOD).is_dir())
        os.replace(found, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _category_member(name: str, category: str) -> bool:
    parts = Path(name).parts
    return category in parts[:2]


def _fetch(url: str, dest: Path) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
