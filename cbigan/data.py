"""MVTec AD layout reader and tf.data pipelines.

A category folder holds ``train/good``, ``test/<good|defect>`` and optionally
``ground_truth/<defect>/<name>_mask.png``. Images are decoded with Pillow (PNG, JPEG, BMP, TIFF; RGB,
grayscale, palette, RGBA, CMYK, 16-bit), resized once with :func:`resize_uint8` (the same op the
exported SavedModel runs) and kept in memory as uint8; augmentation runs batched in the graph.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from .config import Config

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"

#: The official MVTec AD archive (all 15 categories) and its SHA-256; ``--download`` extracts one
#: category from it. Override with CBIGAN_MVTEC_URL / CBIGAN_MVTEC_SHA256 (e.g. a mirror).
MVTEC_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
             "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"


class DataError(RuntimeError):
    """A problem with the user's data, with a one-line message that says what to do."""


# ---------------------------------------------------------------------------------- files
def category_dir(data_dir: str | Path, category: str) -> Path:
    """The folder of ``category``; raises a one-line :class:`DataError` when it is missing."""
    root = Path(data_dir).expanduser() / category
    if not (root / "train" / GOOD).is_dir():
        raise DataError(
            f"no training images for category '{category}': {root / 'train' / GOOD} does not exist; "
            f"put the MVTec AD folder there (https://www.mvtec.com/company/research/datasets/mvtec-ad), "
            f"pass --data-dir DIR, or add --download")
    return root


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: str | Path) -> np.ndarray:
    """Decode any supported image file to uint8 RGB (H, W, 3); :class:`DataError` names a bad file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_array(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}; "
                        f"replace or remove the file") from None


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> uint8 RGB array. 16-bit and float images are rescaled to 8 bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def load_mask(path: Path) -> np.ndarray:
    """Binary mask (H, W) uint8 in {0, 1}."""
    try:
        with Image.open(path) as im:
            return (np.asarray(im.convert("L")) > 127).astype(np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e}; replace or remove the file") from None


# ---------------------------------------------------------------------------------- preprocessing
def resize_uint8(images, size: int):
    """Resize a uint8 (or 0..255 float) batch [N, H, W, 3] to [N, size, size, 3] uint8.

    Bilinear with antialiasing, then rounded: the single resize used for training, evaluation and
    inside the exported SavedModel, so in-framework and served scores agree.
    """
    x = tf.cast(images, tf.float32)
    x = tf.image.resize(x, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def to_model_range(images_uint8):
    """uint8 pixels -> float32 in [-1, 1]."""
    return tf.cast(images_uint8, tf.float32) / 127.5 - 1.0


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


def load_resized(paths, size: int, desc: str = "images", skip_bad: bool = False):
    """Decode and resize every file; all unreadable files are listed in one error (or skipped)."""
    from tqdm import tqdm

    out, bad = [], []
    # no bar for a few files, nor when the output is not a terminal (log files of background runs)
    for p in tqdm(paths, desc=f"loading {desc}", unit="img", leave=False,
                  disable=True if len(paths) < 50 else None):
        try:
            a = load_image(p)
        except DataError as e:
            bad.append((Path(p), str(e)))
            continue
        out.append(resize_uint8(a[None], size)[0].numpy())
    if bad and not skip_bad:
        names = ", ".join(str(p) for p, _ in bad)
        raise DataError(f"{len(bad)} unreadable image(s): {names}; remove or replace them "
                        f"(or pass --skip-bad-images)")
    images = np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)
    return images, [p for p, _ in bad]


# ---------------------------------------------------------------------------------- datasets
@dataclass
class TrainSet:
    images: np.ndarray        # [N, S, S, 3] uint8, resized
    paths: list
    val_images: np.ndarray    # held-out train/good images (threshold, model selection)
    val_paths: list
    skipped: list


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
    cfg = cfg.resolved()
    root = category_dir(cfg.data_dir, cfg.category)
    paths = list_images(root / "train" / GOOD)
    if not paths:
        raise DataError(f"no images in {root / 'train' / GOOD}; expected PNG/JPEG/BMP files there")
    train_paths, val_paths = split_train_val(paths, cfg.val_split, cfg.seed)
    images, bad1 = load_resized(train_paths, cfg.image_size, "train images", skip_bad)
    val_images, bad2 = load_resized(val_paths, cfg.image_size, "held-out images", skip_bad)
    bad = set(bad1 + bad2)
    if len(images) == 0:
        raise DataError(f"no readable training images in {root / 'train' / GOOD}")
    return TrainSet(images, [p for p in train_paths if p not in bad], val_images,
                    [p for p in val_paths if p not in bad], sorted(bad))


@dataclass
class TestSet:
    images: np.ndarray        # [N, S, S, 3] uint8
    labels: np.ndarray        # [N] 0 good, 1 defective
    defect_types: list        # "good" or the defect folder name
    paths: list
    masks: np.ndarray | None  # [N, S, S] uint8 in {0, 1}; None when the category has no ground truth
    has_mask: np.ndarray      # [N] bool: a mask file existed (good images count as having an empty one)

    def __len__(self):
        return len(self.labels)


def load_test_set(cfg: Config, skip_bad: bool = False) -> TestSet:
    cfg = cfg.resolved()
    root = category_dir(cfg.data_dir, cfg.category)
    test_root = root / "test"
    if not test_root.is_dir():
        raise DataError(f"no test folder {test_root}; the MVTec layout needs test/good and test/<defect>")
    paths, types = [], []
    for sub in sorted(d for d in test_root.iterdir() if d.is_dir()):
        for p in list_images(sub):
            paths.append(p)
            types.append(sub.name)
    if not paths:
        raise DataError(f"no test images under {test_root}")
    images, bad = load_resized(paths, cfg.image_size, "test images", skip_bad)
    keep = [i for i, p in enumerate(paths) if p not in set(bad)]
    paths = [paths[i] for i in keep]
    types = [types[i] for i in keep]
    labels = np.array([0 if t == GOOD else 1 for t in types], np.int64)
    gt_root = root / "ground_truth"
    masks, has_mask = None, np.array([t == GOOD for t in types])
    if gt_root.is_dir():
        masks = np.zeros((len(paths), cfg.image_size, cfg.image_size), np.uint8)
        for i, (p, t) in enumerate(zip(paths, types)):
            if t == GOOD:
                continue
            mp = gt_root / t / f"{p.stem}_mask.png"
            if not mp.is_file():
                continue
            m = load_mask(mp)
            h, w = load_image_size(p)
            if m.shape != (h, w):
                raise DataError(f"mask {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is "
                                f"{w}x{h}; masks must have their image's size")
            masks[i] = tf.image.resize(m[..., None].astype(np.float32), (cfg.image_size,) * 2,
                                       method="nearest")[..., 0].numpy().astype(np.uint8)
            has_mask[i] = True
    return TestSet(images, labels, types, paths, masks, has_mask)


def load_image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


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


def rotated_texture_crops(images, patch: int, max_degrees: float, seed):
    """Random ``patch`` crops of each image, rotated by U(0, max_degrees) **degrees**.

    The crop centre is drawn so that the rotated square lies inside the image: no empty corner.
    ``seed`` is a stateless seed (shape [2]): the same seed gives the same crops.
    """
    images = tf.cast(images, tf.float32)
    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    angles = tf.random.stateless_uniform((n,), seeds[0], 0.0, max_degrees) * (math.pi / 180.0)
    half_extent = (patch / 2.0) * (tf.abs(tf.cos(angles)) + tf.abs(tf.sin(angles)))
    lo = half_extent
    hi = size - half_extent
    u = tf.random.stateless_uniform((n, 2), seeds[1])
    centers = lo[:, None] + u * (hi - lo)[:, None] - 0.5
    transforms = _rotation_matrix_transforms(angles, centers, patch)
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


def augment_batch(images_uint8, cfg: Config, seed):
    """The paper's training augmentation for one batch of resized uint8 images -> [-1, 1] floats."""
    if cfg.kind == "texture":
        x = rotated_texture_crops(images_uint8, cfg.patch_size, cfg.rotation, seed)
    elif cfg.rotation > 0:
        x = rotate_objects(images_uint8, cfg.rotation, seed)
    else:
        x = tf.cast(images_uint8, tf.float32)
    return x / 127.5 - 1.0


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


def train_dataset(images: np.ndarray, cfg: Config, start_step: int = 0) -> tf.data.Dataset:
    """Infinite, shuffled, augmented batches of [-1, 1] images from the in-memory uint8 array.

    Batch ``i`` depends only on (seed, start_step + i): shuffling and augmentation use stateless
    random ops, so resuming at a step reproduces the batches an uninterrupted run would have seen.
    """
    cfg = cfg.resolved()
    pool = tf.convert_to_tensor(images)
    n = len(images)

    def batch_at(step):
        idx = shuffled_indices(step, cfg.batch_size, n, cfg.seed)
        aug_seed = tf.stack([tf.constant(cfg.seed + 7919, tf.int64), step])
        return augment_batch(tf.gather(pool, idx), cfg, aug_seed)

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
    if (target / "train" / GOOD).is_dir():
        return target
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
        found = next(p for p in tmp.rglob(category) if (p / "train" / GOOD).is_dir())
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
