"""The MVTec AD folder layout (no TensorFlow): folder and file names, and listing without decoding.

A category folder holds ``train/good`` (defect-free training images), ``test/good`` and
``test/<defect type>`` (test images), and optionally ``ground_truth/<defect type>/<name>_mask.png``
(pixel masks of the defective test images), as defined by Bergmann et al., "MVTec AD", CVPR 2019.
Decoding lives in :mod:`cbigan.data.pipeline`; this module only names and lists files.

What real folders hold besides that, and how it is read (one place for every command):

* names starting with ``.`` (``.DS_Store``, AppleDouble ``._000.png`` sidecars, ``.ipynb_checkpoints``)
  are operating-system or tool metadata, never data: :func:`list_images`, :func:`list_folders` and
  :func:`is_hidden` skip them in train, test, ground truth and ``predict``'s folder search;
* the good folder is ``good`` in any letter case (``test/Good``): :func:`is_good`, :func:`good_folder`;
  a test folder without one is refused (:func:`check_good_test_folder`) instead of labelling every
  image defective;
* a mask is found by the image's stem, named ``<stem>_mask`` (MVTec AD) or ``<stem>`` (BTAD, VisA),
  with any extension of :data:`IMAGE_EXTENSIONS`, in any letter case (:class:`MaskFinder`);
* every file Pillow decodes is an image (:data:`IMAGE_EXTENSIONS`: PNG, JPEG and JFIF, WebP, BMP, TIFF,
  GIF, ...), in any letter case, also in sub-folders (day or lot folders of ``train/good`` and
  ``test/<type>``), symlinked folders followed, each real folder once (:func:`scan_images`); other
  files there are named with the reason (:func:`skipped_message`);
* a ``--data-dir`` that is itself a category folder is recognized and the message says to pass its
  parent (:func:`category_dir`, :func:`test_category_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cbigan.core.errors import DataError, exception_reason

#: Formats Pillow registers but cannot decode by itself (stubs needing a plugin), or that are not
#: pictures: files with these extensions are not taken for images.
NOT_IMAGES = {"BUFR", "GRIB", "HDF5", "FITS", "EPS", "MPEG", "WMF", "IPTC"}


def _pillow_extensions() -> tuple:
    try:
        from PIL import Image

        Image.init()
        found = {e.lower() for e, f in Image.registered_extensions().items()
                 if f in Image.OPEN and f not in NOT_IMAGES}
    except Exception:  # noqa: BLE001  (no Pillow: the common formats)
        found = set()
    common = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    return common + tuple(sorted(found - set(common) | {".jfif", ".jpe", ".webp"}))


#: File extensions read as images (lower case; matched case-insensitively): every extension of a
#: format Pillow decodes (PNG, JPEG/JFIF, WebP, BMP, TIFF, GIF, PPM, TGA, ...), the common ones first.
IMAGE_EXTENSIONS = _pillow_extensions()
#: The folder of defect-free images, under ``train`` and ``test``.
GOOD = "good"
TRAIN, TEST, GROUND_TRUTH = "train", "test", "ground_truth"
#: Suffix of a mask file's stem: ``ground_truth/<type>/<image stem>_mask.png``.
MASK_SUFFIX = "_mask"


def category_root(data_dir: str | Path, category: str) -> Path:
    return Path(data_dir).expanduser() / category


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is metadata, not data: it starts with ``.`` (``._000.png``,
    ``.DS_Store``, ``.ipynb_checkpoints``)."""
    return str(name).startswith(".")


def is_good(name: str) -> bool:
    """Whether a folder name is the defect-free folder: ``good`` in any letter case."""
    return str(name).lower() == GOOD


def list_folders(folder: str | Path) -> list[Path]:
    """Sub-folders of ``folder`` that are not hidden, sorted by name ([] when it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_hidden(d.name))


def good_folder(parent: str | Path) -> Path:
    """``parent/good``, or the sub-folder whose name is ``good`` in another letter case (``Good``);
    ``parent/good`` itself when there is none."""
    parent = Path(parent)
    if (parent / GOOD).is_dir():
        return parent / GOOD
    return next((d for d in list_folders(parent) if is_good(d.name)), parent / GOOD)


def looks_like_category(folder: str | Path) -> bool:
    """Whether ``folder`` itself holds the layout (a ``train`` or ``test`` folder)."""
    folder = Path(folder).expanduser()
    return (folder / TRAIN).is_dir() or (folder / TEST).is_dir()


def check_not_category_folder(data_dir: str | Path, category: str) -> None:
    """A one-line :class:`DataError` when ``data_dir/category`` is missing but ``data_dir`` is itself
    a category folder (``--data-dir data/part`` for category ``part``): says to pass its parent."""
    data_dir = Path(data_dir).expanduser()
    if not category_root(data_dir, category).is_dir() and looks_like_category(data_dir):
        parent = data_dir.resolve().parent
        name = data_dir.resolve().name
        hint = (f"pass its parent: --data-dir {parent}" if name == category else
                f"pass its parent and its name: --data-dir {parent} --category {name}")
        raise DataError(f"--data-dir {data_dir} is itself a category folder (it holds "
                        f"{TRAIN if (data_dir / TRAIN).is_dir() else TEST}/), not the folder of categories: "
                        f"{category_root(data_dir, category)} does not exist; {hint}")


def category_dir(data_dir: str | Path, category: str) -> Path:
    """The folder of ``category``; raises a one-line :class:`DataError` when it is missing."""
    root = category_root(data_dir, category)
    if not good_folder(root / TRAIN).is_dir():
        check_not_category_folder(data_dir, category)
        raise DataError(
            f"no training images for category '{category}': {root / TRAIN / GOOD} does not exist; "
            f"put the MVTec AD folder there (https://www.mvtec.com/company/research/datasets/mvtec-ad), "
            f"pass --data-dir DIR, or add --download")
    return root


def test_category_dir(data_dir: str | Path, category: str) -> Path:
    """The folder of ``category`` for evaluation, which needs only ``test/`` (and ``ground_truth/``):
    a one-line :class:`DataError` when there is no ``test`` folder (a category folder passed as
    ``--data-dir`` is named as such)."""
    root = category_root(data_dir, category)
    if not (root / TEST).is_dir():
        check_not_category_folder(data_dir, category)
        raise DataError(f"no test images for category '{category}': {root / TEST} does not exist; the "
                        f"evaluation needs {root}/test/good and test/<defect type> (training images are "
                        f"not needed), or pass --data-dir DIR holding the folder {category}")
    return root


def is_image_name(name: str) -> bool:
    """Whether a file name is read as an image: a supported extension, in any letter case, and not
    hidden (an AppleDouble ``._000.png`` is metadata, not a PNG)."""
    return not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def scan_images(folder: str | Path, recursive: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(images, skipped)`` of ``folder``: image files (:func:`is_image_name`) sorted by their path
    relative to ``folder``, and ``(path, reason)`` of the other files found there. With ``recursive``
    sub-folders are searched too (day or lot folders), symlinked ones followed, each real folder once;
    hidden files and folders are neither (metadata, :func:`is_hidden`). The one listing of every
    command (training, evaluation, masks, ``predict``)."""
    folder = Path(folder)
    images, skipped, seen = [], [], set()
    if not folder.is_dir():
        return images, skipped
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a symlink loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d)) if recursive else []
        for name in files:
            p = Path(top) / name
            if is_hidden(name) or not p.is_file():
                continue
            if is_image_name(name):
                images.append(p)
            else:
                skipped.append((p, f"not an image file ({p.suffix or 'no extension'}; read: "
                                   f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:8])}, ... any case)"))
    key = lambda p: tuple(q.lower() for q in p.relative_to(folder).parts)  # noqa: E731
    return sorted(images, key=lambda p: (key(p), str(p))), sorted(skipped, key=lambda t: key(t[0]))


def skipped_message(skipped, where: str = "") -> str:
    """One line naming the files that were not read and why (``skipped``: ``(path, reason)``)."""
    reasons: dict[str, list] = {}
    for p, why in skipped:
        reasons.setdefault(why.split(" (")[0], []).append(str(p))
    parts = []
    for why, paths in reasons.items():
        names = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        parts.append(f"{why}: {names}")
    return (f"{len(skipped)} file(s){' in ' + where if where else ''} not read as images: " + "; ".join(parts)
            + f" (images are files Pillow decodes: {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:10])}, "
              f"..., any letter case)")


def warn_skipped(skipped, where: str = "") -> None:
    """:func:`skipped_message` as one warning, when any file was skipped."""
    if skipped:
        import warnings

        warnings.warn(skipped_message(skipped, where), stacklevel=3)


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files in ``folder`` and (``recursive``) its sub-folders: :func:`scan_images`' images."""
    return scan_images(folder, recursive)[0]


def load_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) in pixels of an image, read from its header without decoding (Pillow);
    :class:`DataError` naming the file when Pillow cannot open it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif_orientation(im) in (5, 6, 7, 8):  # shown turned by 90 degrees: as decoded
                w, h = h, w
            return h, w
    except Exception as e:  # noqa: BLE001  (any decoder failure is this file's)
        raise DataError(f"cannot read image {path}: {exception_reason(e)}; replace or remove the file") from None


#: The EXIF tag of the orientation a viewer shows a picture in (1 upright, 6 turned 90 degrees clockwise...).
EXIF_ORIENTATION = 0x0112


def exif_orientation(im) -> int:
    """The EXIF orientation (1..8) of an open Pillow image; 1 when it has none."""
    try:
        o = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001  (a damaged EXIF block: shown as stored)
        return 1
    return o if 1 <= o <= 8 else 1


def image_sizes(paths) -> list[tuple[int, int]]:
    """:func:`load_image_size` of each image; files Pillow cannot open (unreadable, truncated, a
    decompression bomb) are left out: loading them later names them."""
    sizes = []
    for path in paths:
        try:
            sizes.append(load_image_size(path))
        except DataError:
            continue
    return sizes


def test_image_paths(data_dir: str | Path, category: str,
                     skipped: list | None = None) -> tuple[list[Path], list[str]] | None:
    """(paths, defect types) of every test image, folder by folder in name order, without decoding;
    None when the category has no ``test`` folder. The good folder's type is ``good`` whatever its
    letter case (:func:`is_good`); hidden folders are skipped; images in sub-folders of a type folder
    (lots, days) are of that type. ``skipped``: a list that receives ``(path, reason)`` of the files
    not read (not images, or directly in ``test/`` outside a type folder)."""
    root = category_root(data_dir, category) / TEST
    if not root.is_dir():
        return None
    paths, types = [], []
    if skipped is not None:
        skipped.extend((p, "not in a folder test/<good or defect type>") for p in sorted(root.iterdir())
                       if p.is_file() and not is_hidden(p.name))
    for sub in list_folders(root):
        found, other = scan_images(sub)
        if skipped is not None:
            skipped.extend(other)
        for p in found:
            paths.append(p)
            types.append(GOOD if is_good(sub.name) else sub.name)
    return paths, types


def check_good_test_folder(data_dir: str | Path, category: str) -> None:
    """A one-line :class:`DataError` when ``test`` has no good folder (in any letter case) with images:
    without one every test image would be labelled defective. Says which folders were found and where
    the normal test images go."""
    root = category_root(data_dir, category) / TEST
    folders = list_folders(root)
    good = [d for d in folders if is_good(d.name)]
    if any(list_images(d) for d in good):
        return
    found = ", ".join(f"{d.name} ({len(list_images(d))} images)" for d in folders) or "none"
    what = f"{good[0]} has no images" if good else f"{root / GOOD} is missing"
    raise DataError(f"{what} (folders found under {root}: {found}): the defect-free test images go in "
                    f"test/good and every other folder under test/ is read as a defect type (label 1); move "
                    f"the normal test images (e.g. a NORMAL or OK folder) to {root / GOOD}")


def has_ground_truth(data_dir: str | Path, category: str) -> bool:
    """Whether the category folder has a ``ground_truth`` folder (no decoding)."""
    return (category_root(data_dir, category) / GROUND_TRUTH).is_dir()


def mask_path(data_dir: str | Path, category: str, image: Path, defect_type: str) -> Path:
    """The MVTec AD name of a defective test image's mask: ``ground_truth/<type>/<stem>_mask.png``
    (the mask may have another of the accepted names: :class:`MaskFinder`)."""
    return category_root(data_dir, category) / GROUND_TRUTH / defect_type / f"{Path(image).stem}{MASK_SUFFIX}.png"


class MaskFinder:
    """The masks of one ``ground_truth`` folder, found by the test image's stem.

    The mask of ``test/<type>/<stem>.<ext>`` is the file of ``ground_truth/<type>`` (the type folder in
    any letter case) named ``<stem>_mask`` or ``<stem>``, with any extension of
    :data:`IMAGE_EXTENSIONS`, compared case-insensitively; hidden files are skipped. Two files that both
    fit are refused (:class:`DataError` naming both). :meth:`unmatched` lists the files no image took.
    """

    def __init__(self, ground_truth: str | Path):
        self.root = Path(ground_truth)
        self._folders = {d.name.lower(): d for d in reversed(list_folders(self.root))}
        self._index: dict[str, dict[str, list[Path]]] = {}
        self._used: set[Path] = set()

    def folder(self, defect_type: str) -> Path | None:
        """``ground_truth/<defect_type>`` (any letter case), or None when there is none."""
        exact = self.root / defect_type
        return exact if exact.is_dir() else self._folders.get(str(defect_type).lower())

    def _files(self, defect_type: str) -> dict[str, list[Path]]:
        key = str(defect_type).lower()
        if key not in self._index:
            folder = self.folder(defect_type)
            index: dict[str, list[Path]] = {}
            for p in list_images(folder) if folder is not None else []:
                index.setdefault(p.stem.lower(), []).append(p)
            self._index[key] = index
        return self._index[key]

    @staticmethod
    def looked_for(image: str | Path) -> str:
        """The names a mask of ``image`` may have, for messages."""
        stem = Path(image).stem
        return f"{stem}{MASK_SUFFIX}.* or {stem}.*"

    def find(self, image: str | Path, defect_type: str, within: str | Path | None = None) -> Path | None:
        """The mask file of a defective test image, or None; :class:`DataError` when two files fit.

        ``within``: the image's sub-folder of ``test/<type>`` (a lot folder): where masks of the same
        name in several sub-folders fit, the one in the same sub-folder is taken."""
        stem = Path(image).stem.lower()
        files = self._files(defect_type)
        hits = sorted(set(files.get(stem, []) + files.get(stem + MASK_SUFFIX, [])))
        if len(hits) > 1 and within is not None:
            folder = self.folder(defect_type)
            same = [h for h in hits if folder is not None
                    and h.parent.relative_to(folder).as_posix().lower() == Path(within).as_posix().lower()]
            hits = same or hits
        if len(hits) > 1:
            raise DataError(f"the mask of {image} is ambiguous: {' and '.join(str(p) for p in hits)} both "
                            f"fit; keep one of them")
        if hits:
            self._used.add(hits[0])
            return hits[0]
        return None

    def unmatched(self, defect_type: str) -> list[Path]:
        """Files of ``ground_truth/<defect_type>`` that no :meth:`find` call returned, sorted."""
        return sorted(p for ps in self._files(defect_type).values() for p in ps if p not in self._used)
