"""The MVTec AD folder layout (no TensorFlow): folder and file names, and listing without decoding.

A category folder holds ``train/good`` (defect-free training images), ``test/good`` and
``test/<defect type>`` (test images), and optionally ``ground_truth/<defect type>/<name>_mask.png``
(pixel masks of the defective test images), as defined by Bergmann et al., "MVTec AD", CVPR 2019.
Decoding lives in :mod:`cbigan.data`; this module only names and lists files.

What real folders hold besides that, and how it is read (one place for every command):

* names starting with ``.`` (``.DS_Store``, AppleDouble ``._000.png`` sidecars, ``.ipynb_checkpoints``)
  are operating-system or tool metadata, never data: :func:`list_images`, :func:`list_folders` and
  :func:`is_hidden` skip them in train, test, ground truth and ``predict``'s folder search;
* the good folder is ``good`` in any letter case (``test/Good``): :func:`is_good`, :func:`good_folder`;
  a test folder without one is refused (:func:`check_good_test_folder`) instead of labelling every
  image defective;
* a mask is found by the image's stem, named ``<stem>_mask`` (MVTec AD) or ``<stem>`` (BTAD, VisA),
  with any extension of :data:`IMAGE_EXTENSIONS`, in any letter case (:class:`MaskFinder`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError, exception_reason

#: File extensions read as images (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
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


def category_dir(data_dir: str | Path, category: str) -> Path:
    """The folder of ``category``; raises a one-line :class:`DataError` when it is missing."""
    root = category_root(data_dir, category)
    if not good_folder(root / TRAIN).is_dir():
        raise DataError(
            f"no training images for category '{category}': {root / TRAIN / GOOD} does not exist; "
            f"put the MVTec AD folder there (https://www.mvtec.com/company/research/datasets/mvtec-ad), "
            f"pass --data-dir DIR, or add --download")
    return root


def is_image_name(name: str) -> bool:
    """Whether a file name is read as an image: a supported extension, in any letter case, and not
    hidden (an AppleDouble ``._000.png`` is metadata, not a PNG)."""
    return not is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension, hidden names skipped), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_name(p.name))


def load_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) in pixels of an image, read from its header without decoding (Pillow);
    :class:`DataError` naming the file when Pillow cannot open it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as e:  # noqa: BLE001  (any decoder failure is this file's)
        raise DataError(f"cannot read image {path}: {exception_reason(e)}; replace or remove the file") from None


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


def test_image_paths(data_dir: str | Path, category: str) -> tuple[list[Path], list[str]] | None:
    """(paths, defect types) of every test image, folder by folder in name order, without decoding;
    None when the category has no ``test`` folder. The good folder's type is ``good`` whatever its
    letter case (:func:`is_good`); hidden folders are skipped."""
    root = category_root(data_dir, category) / TEST
    if not root.is_dir():
        return None
    paths, types = [], []
    for sub in list_folders(root):
        for p in list_images(sub):
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

    def find(self, image: str | Path, defect_type: str) -> Path | None:
        """The mask file of a defective test image, or None; :class:`DataError` when two files fit."""
        stem = Path(image).stem.lower()
        files = self._files(defect_type)
        hits = sorted(set(files.get(stem, []) + files.get(stem + MASK_SUFFIX, [])))
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
