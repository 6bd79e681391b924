"""Input kinds: everything that differs between scoring whole images and scoring patches.

One class per kind and one table, :data:`KINDS`, keyed by the name stored in ``Config.kind`` (and in
``config.json``). A kind holds its data defaults (:meth:`InputKind.defaults`), its checks
(:meth:`InputKind.validate`), how images become network inputs and per-patch outputs become images
again (:meth:`InputKind.to_network_inputs` / :meth:`InputKind.from_network_outputs`), its training
augmentation (:meth:`InputKind.augment`), its anomaly-map stride and the wording of figure captions.

* ``object``: the image is scored whole (patch size = image size, 128 by default); trained with
  +-45 degree rotations for the categories whose orientation does not tell a defect
  (:data:`ROTATED_OBJECTS`), unrotated otherwise.
* ``texture``: the image (512 by default) is cut into non-overlapping 64x64 patches; trained on random
  patch crops rotated by U(0, 45) degrees.

Adding a kind means adding one :class:`InputKind` subclass to :data:`KINDS`; nothing else branches on
the kind. This module imports neither TensorFlow nor any other project module at import time (so
:mod:`cbigan.core.config` can use it); the TensorFlow ops come from :mod:`cbigan.core.imageops`, imported inside
the methods that run them.
"""

from __future__ import annotations

#: MVTec AD categories of each kind (the default kind of a category: :func:`default_kind`).
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush",
           "transistor", "zipper")
#: Objects whose orientation does not tell a defect: trained with +-45 degree rotations (Sec. V-B).
ROTATED_OBJECTS = ("bottle", "hazelnut", "metal_nut", "screw")


class StrideError(ValueError):
    """A map stride outside 1..patch size (the message names the ``--stride`` flag)."""


def _example(sizes: dict, figures: dict, pick) -> tuple[str, int, int, float]:
    """The image a note names: among ``figures`` (path -> a figure), the one ``pick`` (``max`` / ``min``)
    chooses, as ``(file name, width, height, figure)`` with its size from ``sizes`` (path -> (h, w))."""
    from pathlib import Path

    path = pick(figures, key=figures.get)
    h, w = sizes[path]
    return Path(path).name, w, h, figures[path]


class InputKind:
    """The whole-image protocol; subclasses override what differs. Instances are stateless."""

    #: The name in ``Config.kind`` / ``config.json``.
    name: str = ""
    #: Categories whose default kind this is (:func:`default_kind`).
    categories: tuple = ()
    #: Images are cut into a grid of ``patch_size`` patches (else one patch: the whole image). Anomaly
    #: maps of patched kinds have a patch stride, and figures mark the highest-scoring patch.
    is_patched: bool = False

    @property
    def has_map_stride(self) -> bool:
        """Whether ``--stride`` (overlapping patches for the anomaly maps) means anything."""
        return self.is_patched

    # ------------------------------------------------------------------ configuration
    def defaults(self, category: str, image_size: int | None = None) -> dict:
        """``image_size``, ``patch_size`` and ``rotation`` of ``category`` where the config leaves them
        None. ``image_size``: the one already chosen (a flag or a preset), which the patch size may follow."""
        raise NotImplementedError

    def validate(self, cfg) -> None:
        """Raise ValueError when the resolved ``cfg``'s data fields do not fit this kind."""

    # ------------------------------------------------------------------ geometry
    def grid(self, cfg) -> int:
        """Patches along each side of an image."""
        return int(cfg.image_size) // int(cfg.patch_size)

    def patches_per_image(self, cfg) -> int:
        """Non-overlapping network inputs per image (the P of the per-patch scores [N, P])."""
        return self.grid(cfg) ** 2

    def map_stride(self, cfg, stride: int | None) -> int:
        """The anomaly-map patch stride: the patch size by default and for kinds without a stride;
        :class:`StrideError` when a requested stride is outside 1..patch size."""
        if not self.has_map_stride:
            return int(cfg.patch_size)
        if stride is None:
            return self.default_stride(cfg)
        stride = int(stride)
        if not 1 <= stride <= cfg.patch_size:
            raise StrideError(f"--stride must be between 1 and the patch size {cfg.patch_size}, got {stride}")
        return stride

    def default_stride(self, cfg) -> int:
        """The map stride when none is asked for: the patch size (non-overlapping patches)."""
        return int(cfg.patch_size)

    #: The label-free snapshot choice when the config does not say (``Config.select``).
    default_select: str = "synthetic"
    #: The image-score rule when the config does not say (``Config.image_score``): the paper's.
    default_image_score: str = "paper"
    #: The input normalization when the config does not say (``Config.normalize``): the paper's.
    default_normalize: str = "none"
    #: Where training crops lie when the config does not say (``Config.train_crops``): anywhere on the
    #: model-size image. Only tiles have a region smaller than that image.
    default_train_crops: str = "canvas"

    def default_score_margin(self, cfg) -> int:
        """Map pixels the map-based image scores leave out at the image's border when the config
        does not say (``Config.score_margin``): none here (why: docs/decisions.md)."""
        return 0

    #: Whether training batches may hold global views (whole images resized to one patch,
    #: ``Config.global_views``): only where a patch is not the whole image already (tiles).
    takes_global_views: bool = False

    def default_global_views(self, preset_share: float, image_score: str) -> float:
        """``Config.global_views`` when the config does not say: ``preset_share`` is the preset's share
        (:data:`cbigan.core.config.PRESET_TABLE`) for the kinds that take global views; none here."""
        return 0.0

    def input_notes(self, canvas: int | None, scale: float, sizes: dict) -> list[str]:
        """One-line notes about inputs (``sizes``: path -> (height, width)) a model of this kind will see
        differently from its training images (:func:`cbigan.serving.predict.input_notes`): an image at least
        :data:`ELONGATED` times longer than wide is squashed to the model's square (a thin crack along it
        halves or more), where objects and textures are trained on square-ish images."""
        ratio = {p: max(hw) / max(1, min(hw)) for p, hw in sizes.items()}
        long = {p: r for p, r in ratio.items() if r >= ELONGATED}
        if not long:
            return []
        name, w, h, r = _example(sizes, long, max)
        return [f"{len(long)} of {len(sizes)} images are elongated (e.g. {name}: {w}x{h} px, {r:.2g}:1) and are "
                f"squashed to the {self.name} model's square, which thins defects along them; a model trained "
                f"with --kind tiles keeps their aspect ratio"]

    def fit(self, images, cfg):
        """Decoded images of one size [N, H, W, C] (uint8) -> ``(model-size uint8 images [N, S, S, C],
        (h, w))``: the kind's resize, in the graph (training, evaluation and the export run this one op).
        ``(h, w)``: the region of the result that holds the image (the whole of it here: a square resize,
        :func:`cbigan.core.imageops.resize_uint8`)."""
        from cbigan.core.imageops import resize_uint8

        size = int(cfg.image_size)
        return resize_uint8(images, size), (size, size)

    def fit_is_identity(self, h: int, w: int, cfg) -> bool:
        """Whether :meth:`fit` returns uint8 images of ``h`` x ``w`` unchanged (region: the whole image),
        so a caller may skip it: a square resize to the size they already have."""
        return int(h) == int(w) == int(cfg.image_size)

    def to_input_size(self, t, region, size_hw):
        """Model-size outputs [N, S, S, ...] of images fitted by :meth:`fit` -> what the export returns
        for inputs of ``size_hw``: here unchanged (maps at the model resolution, as evaluation has them)."""
        return t

    def fit_mask(self, mask, cfg):
        """A {0, 1} mask [H, W] of an image -> [S, S] uint8 at the model resolution, as :meth:`fit` places
        the image (nearest neighbour; 0 outside the image's region)."""
        import tensorflow as tf

        size = int(cfg.image_size)
        return tf.cast(tf.image.resize(tf.cast(mask, tf.float32)[..., None], (size, size),
                                       method="nearest")[..., 0], tf.uint8)

    def best_patch_box(self, cfg, index: int):
        """(top, left, size) of the non-overlapping patch ``index`` to outline in figures, or None."""
        return None

    def describe_stride(self, stride: int) -> str:
        """Caption fragment naming the map stride ('' where the kind has none)."""
        return ""

    # ------------------------------------------------------------------ tensors (TensorFlow)
    def to_network_inputs(self, x, cfg):
        """Images [N, S, S, C] -> network inputs [N * P, p, p, C] (P = :meth:`patches_per_image`)."""
        return x

    def from_network_outputs(self, t, cfg):
        """Per-input outputs [N * P, p, p, ...] -> per-image [N, S, S, ...] (inverse of the above)."""
        return t

    def model_inputs(self, images_uint8, cfg):
        """Resized uint8 images [N, S, S, C] -> float32 network inputs [N * P, p, p, C]: the pixel range
        and ``cfg.normalize`` (:func:`cbigan.core.imageops.to_model_range`), then :meth:`to_network_inputs`.
        The preprocessing of scoring and previews."""
        from cbigan.core.imageops import to_model_range

        return self.to_network_inputs(to_model_range(images_uint8, cfg.normalize), cfg)

    def geometric_augment(self, images_uint8, cfg, seed, regions=None):
        """The paper's geometric training augmentation: uint8 images -> float32 0..255 network-sized
        inputs. ``seed``: a stateless seed (shape [2]); the same seed gives the same batch. ``regions``:
        [N, 2] (h, w), each image's own part of the model-size image (:meth:`fit`), or None: all of it."""
        import tensorflow as tf

        return tf.cast(images_uint8, tf.float32)

    def augment(self, images_uint8, cfg, seed, stats=None, regions=None):
        """One training batch: :meth:`geometric_augment` of resized uint8 images, then the pixel range and
        ``cfg.normalize`` with the statistics of the whole images (as at scoring time) -> float32.
        ``stats``: those images' :func:`cbigan.core.imageops.image_stats`, when computed once beforehand
        (:func:`cbigan.data.pipeline.train_dataset`); else computed here. ``regions``: see :meth:`geometric_augment`."""
        from cbigan.core.imageops import image_stats, to_model_range

        x = self.geometric_augment(images_uint8, cfg, seed, regions)
        if cfg.normalize != "none" and stats is None:
            stats = image_stats(images_uint8)
        return to_model_range(x, cfg.normalize, stats)

    def __repr__(self) -> str:
        return f"<input kind {self.name!r}>"


class ObjectKind(InputKind):
    """Objects are scored whole: 128 px, rotated +-45 degrees where orientation is no defect."""

    name = "object"
    categories = OBJECTS

    def defaults(self, category: str, image_size: int | None = None) -> dict:
        size = 128 if image_size is None else image_size
        return {"image_size": 128, "patch_size": size,
                "rotation": 45.0 if category in ROTATED_OBJECTS else 0.0}

    def validate(self, cfg) -> None:
        if cfg.patch_size != cfg.image_size:
            raise ValueError("objects are scored whole: patch_size must equal image_size")

    def geometric_augment(self, images_uint8, cfg, seed, regions=None):
        if cfg.rotation > 0:
            from cbigan.core.imageops import rotate_objects

            return rotate_objects(images_uint8, cfg.rotation, seed)
        return super().geometric_augment(images_uint8, cfg, seed)


class TextureKind(InputKind):
    """Textures: 512 px images cut into 64 px patches; trained on rotated random patch crops."""

    name = "texture"
    categories = TEXTURES
    is_patched = True

    def defaults(self, category: str, image_size: int | None = None) -> dict:
        return {"image_size": 512, "patch_size": 64, "rotation": 45.0}

    def validate(self, cfg) -> None:
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"texture image_size {cfg.image_size} is not a multiple of patch_size "
                             f"{cfg.patch_size}")

    def best_patch_box(self, cfg, index: int):
        grid, p = self.grid(cfg), int(cfg.patch_size)
        return ((index // grid) * p, (index % grid) * p, p)

    def describe_stride(self, stride: int) -> str:
        return f", patch stride {stride}"

    def to_network_inputs(self, x, cfg):
        from cbigan.core.imageops import to_patches

        return to_patches(x, cfg.patch_size)

    def from_network_outputs(self, t, cfg):
        from cbigan.core.imageops import from_patches

        return from_patches(t, self.grid(cfg))

    def geometric_augment(self, images_uint8, cfg, seed, regions=None):
        """Random ``patch_size`` crops rotated by up to ``rotation`` degrees; with ``train_crops`` "image"
        and ``regions``, centred inside each image's region (tiles: not on the mirrored padding)."""
        from cbigan.core.imageops import rotated_texture_crops

        inside = regions if cfg.train_crops == "image" else None
        return rotated_texture_crops(images_uint8, cfg.patch_size, cfg.rotation, seed, inside)


class TilesKind(TextureKind):
    """Native-resolution tiles of images of any size and aspect ratio (beyond the paper).

    Every image is scaled by one factor (``cfg.scale``, 1.0 = native resolution, smaller when needed to
    fit) into a square canvas of ``image_size`` (default 512) and the rest of the canvas is the image
    mirrored (:func:`cbigan.core.imageops.fit_to_canvas`): no aspect ratio is ever distorted and small defects
    keep their pixels. Trained on random ``patch_size`` crops centred inside the image (``train_crops``
    "image"; "canvas": anywhere on the canvas) (no rotation by default);
    scored on overlapping tiles (map stride ``patch_size / 2`` by default) stitched into the anomaly map,
    whose image's region is cut out and brought back to the input's own size for outputs and pixel
    metrics; the image score is best taken from the map (``--image-score map_max`` or ``map_topk``).
    """

    name = "tiles"
    categories = ()
    #: The last weights: choosing a snapshot would score the map of every held-out image and of its
    #: synthetic-defect copy at every evaluation, which on large canvases takes most of a short run's
    #: time (why: docs/decisions.md).
    default_select = "final"
    #: The anomaly map's maximum: tiles summed over a whole canvas drown a small defect (why:
    #: docs/decisions.md).
    default_image_score = "map_max"
    #: Every image standardized per channel: images of one set taken under other lighting scale the
    #: residual and the map with it; per-image standardization evens them out (why: docs/decisions.md).
    default_normalize = "per_image"
    #: Crops centred inside each image, not on the canvas's mirrored padding (which is most of the
    #: canvas for a small image); for images that fill their canvas both are the same crops (why:
    #: docs/decisions.md).
    default_train_crops = "image"

    def defaults(self, category: str, image_size: int | None = None) -> dict:
        return {"image_size": 512, "patch_size": 64, "rotation": 0.0}

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if not cfg.scale > 0:
            raise ValueError(f"scale must be > 0, got {cfg.scale}")

    def default_stride(self, cfg) -> int:
        return max(1, int(cfg.patch_size) // 2)

    takes_global_views = True

    def default_global_views(self, preset_share: float, image_score: str) -> float:
        """The preset's share where the image score is a map rule (the global view adds to the map's
        score), else none."""
        from cbigan.core.anomaly_score import RULES_WITH_MAPS

        return preset_share if image_score in RULES_WITH_MAPS else 0.0

    def input_notes(self, canvas: int | None, scale: float, sizes: dict) -> list[str]:
        """An image whose longer side times ``scale`` exceeds the ``canvas`` is shrunk to fit it
        (:func:`cbigan.core.imageops.scaled_size`), so its tiles see a coarser scale than training did and small
        defects may vanish."""
        if not canvas:
            return []
        shrunk = {p: float(canvas) / max(hw) for p, hw in sizes.items() if max(hw) * scale > canvas}
        if not shrunk:
            return []
        name, w, h, by = _example(sizes, shrunk, min)
        return [f"{len(shrunk)} of {len(sizes)} images are larger than the model's {canvas} px canvas and are "
                f"scaled down to fit it (e.g. {name}: {w}x{h} px, by {by:.2g}), so "
                f"its tiles see a coarser scale than the training images did; crop or resize them to the "
                f"training images' scale, or train with --image-size covering them"]

    def default_score_margin(self, cfg) -> int:
        """Half a tile: the image's edge and the seam with the mirrored canvas raise the map there on
        normal images (why: docs/decisions.md)."""
        return max(0, int(cfg.patch_size) // 2)

    def geometric_augment(self, images_uint8, cfg, seed, regions=None):
        """Tile crops (:meth:`TextureKind.geometric_augment`); with ``global_views`` > 0 and ``regions``,
        the first ``round(global_views * N)`` images of the batch give their global view instead (the
        whole region resized to one tile: :func:`cbigan.core.imageops.region_views`)."""
        x = super().geometric_augment(images_uint8, cfg, seed, regions)
        n_global = int(round(float(cfg.global_views) * int(cfg.batch_size)))
        if n_global <= 0 or regions is None:
            return x
        import tensorflow as tf

        from cbigan.core.imageops import region_views

        views = region_views(images_uint8[:n_global], regions[:n_global], int(cfg.patch_size))
        return tf.concat([views, x[n_global:]], 0)

    def fit(self, images, cfg):
        import tensorflow as tf

        from cbigan.core.imageops import fit_to_canvas

        x, hw = fit_to_canvas(images, int(cfg.image_size), float(cfg.scale))
        return tf.cast(x, tf.uint8), hw

    def fit_is_identity(self, h: int, w: int, cfg) -> bool:
        return float(cfg.scale) == 1.0 and super().fit_is_identity(h, w, cfg)

    def to_input_size(self, t, region, size_hw):
        """The image's region of the canvas, resized (bilinear) to the input's own size."""
        import tensorflow as tf

        crop = t[:, :region[0], :region[1]]
        one = crop.shape.rank == 3
        x = tf.image.resize(crop[..., None] if one else crop, tf.stack([size_hw[0], size_hw[1]]), method="bilinear")
        return x[..., 0] if one else x

    def fit_mask(self, mask, cfg):
        import tensorflow as tf

        from cbigan.core.imageops import scaled_size

        size = int(cfg.image_size)
        h, w = scaled_size(tf.shape(mask)[0], tf.shape(mask)[1], size, float(cfg.scale))
        m = tf.image.resize(tf.cast(mask, tf.float32)[..., None], tf.stack([h, w]), method="nearest")[..., 0]
        return tf.cast(tf.pad(m, [[0, size - h], [0, size - w]]), tf.uint8)


#: Every input kind by name (``Config.kind``). Adding a kind: one more entry here.
KINDS: dict[str, InputKind] = {k.name: k for k in (ObjectKind(), TextureKind(), TilesKind())}
#: The kind of a category no entry of :data:`KINDS` lists.
FALLBACK_KIND = "object"


def default_kind(category: str) -> str:
    """The name of the kind ``category`` is by default: the kind listing it, else ``object``."""
    for name, kind in KINDS.items():
        if category in kind.categories:
            return name
    return FALLBACK_KIND


#: An unknown category's training images vary in size when the 95th percentile of their long (or
#: short) sides is more than this many times the 5th (magnetic tile: 702 sizes among 761 images); one
#: odd image among many does not count.
SIZE_SPREAD = 1.1
#: ... and are elongated when half or more of them have a long side at least this many times the short
#: one (a 500x1250 strip: 2.5), where resizing to a square halves a thin crack or more.
ELONGATED = 2.0
#: The largest canvas the automatic choice of tiles gives (larger images are scaled down to fit it).
AUTO_CANVAS_MAX = 1024
#: Sizes are read from the headers of at most about this many training images, evenly spaced.
SIZES_READ = 2000


def tiles_canvas(sizes, patch_size: int = 64, scale: float = 1.0) -> tuple[int | None, float]:
    """The tiles canvas for images of ``sizes`` ((height, width) pairs in pixels) and the factor the
    largest of them is scaled by to fit it: the largest side times ``scale``, rounded up to a multiple of
    ``patch_size``, at most :data:`AUTO_CANVAS_MAX` (nor below one patch); ``(None, 1.0)`` for no sizes."""
    sides = [max(int(h), int(w)) for h, w in sizes if int(h) > 0 and int(w) > 0]
    if not sides:
        return None, 1.0
    patch, longest = int(patch_size), max(sides) * float(scale)
    side = -(-int(round(longest)) // patch) * patch
    canvas = max(patch, min(side, AUTO_CANVAS_MAX // patch * patch))
    return canvas, min(1.0, canvas / longest)


def kind_for_sizes(sizes, patch_size: int = 64, scale: float = 1.0) -> tuple[str, int | None, str]:
    """The kind for an unknown category from its training images' sizes: ``("tiles", canvas, why)``
    when they vary in size (:data:`SIZE_SPREAD`) or are elongated (:data:`ELONGATED`), which resizing
    to one square would distort (why: docs/decisions.md); else ``(FALLBACK_KIND, None, "")``.

    ``sizes``: (height, width) pairs in pixels. ``canvas``: :func:`tiles_canvas`.
    """
    sizes = [(int(h), int(w)) for h, w in sizes if int(h) > 0 and int(w) > 0]
    if not sizes:
        return FALLBACK_KIND, None, ""
    long_sides = sorted(max(h, w) for h, w in sizes)
    short_sides = sorted(min(h, w) for h, w in sizes)

    def spread(sides):  # 95th over 5th percentile (nearest rank)
        return sides[round(0.95 * (len(sides) - 1))] / sides[round(0.05 * (len(sides) - 1))]

    by_ratio = sorted(sizes, key=lambda hw: max(hw) / min(hw))
    h, w = by_ratio[len(by_ratio) // 2]  # the image of median aspect ratio
    if max(spread(long_sides), spread(short_sides)) > SIZE_SPREAD:
        why = (f"vary in size ({short_sides[0]} to {long_sides[-1]} px a side, {len(set(sizes))} sizes "
               f"among {len(sizes)})")
    elif max(h, w) / min(h, w) >= ELONGATED:
        why = f"are elongated (e.g. {w}x{h} px, {max(h, w) / min(h, w):.2g}:1)"
    else:
        return FALLBACK_KIND, None, ""
    return TilesKind.name, tiles_canvas(sizes, patch_size, scale)[0], why


def infer_kind(cfg) -> tuple[object, str | None]:
    """``cfg`` with its kind and tiles canvas chosen from its training images' sizes where it leaves
    them open, and a one-line note saying so (else ``(cfg, None)``, unchanged):

    * an unknown category (no kind lists it) with no kind, ``image_size`` or ``patch_size`` given (an
      explicit geometry is the caller's choice): :func:`kind_for_sizes`;
    * ``kind`` "tiles" without ``image_size``: the canvas of :func:`tiles_canvas` (the largest image at
      its own resolution, up to :data:`AUTO_CANVAS_MAX`), not the kind's fixed default.

    Nothing when the category's ``train/good`` folder is missing (loading names it).
    """
    import dataclasses

    from cbigan.core.layout import TRAIN, category_root, good_folder, image_sizes, list_images

    guess = (cfg.kind is None and cfg.image_size is None and cfg.patch_size is None
             and not any(cfg.category in k.categories for k in KINDS.values()))
    canvas_only = cfg.kind == TilesKind.name and cfg.image_size is None
    if not (guess or canvas_only):
        return cfg, None
    folder = good_folder(category_root(cfg.data_dir, cfg.category) / TRAIN)
    if not folder.is_dir():
        return cfg, None
    paths = list_images(folder)
    step = max(1, len(paths) // SIZES_READ)  # headers only, and of at most about SIZES_READ images
    sizes = image_sizes(paths[::step])
    patch = cfg.patch_size or KINDS[TilesKind.name].defaults(cfg.category)["patch_size"]
    if guess:
        name, _, why = kind_for_sizes(sizes, patch, cfg.scale)
        if name == FALLBACK_KIND:
            return cfg, None
    canvas, fit = tiles_canvas(sizes, patch, cfg.scale)
    if canvas is None:
        return cfg, None
    where = "each image at its own resolution" if cfg.scale == 1 else f"each image at {cfg.scale:g}x its resolution"
    if fit < 1:
        where += f", the largest scaled down to {cfg.scale * fit:.2g}x to fit"
    if guess:
        note = (f"note: the training images in {folder} {why}: --kind tiles (no resizing to a square: "
                f"{patch} px tiles of {where} on a {canvas} px canvas); pass --kind object to resize every "
                f"image to one square instead")
    else:
        note = (f"note: --kind tiles on a {canvas} px canvas, the largest training image's side ({where}; "
                f"--image-size chooses another)")
    return dataclasses.replace(cfg, kind=TilesKind.name, image_size=canvas), note


def kind_of(cfg_or_name) -> InputKind:
    """The :class:`InputKind` of a config (its ``kind``, or its category's default when None), of a
    kind name, or the kind itself. ValueError for a name not in :data:`KINDS`."""
    if isinstance(cfg_or_name, InputKind):
        return cfg_or_name
    if hasattr(cfg_or_name, "kind"):
        name = cfg_or_name.kind
        if name is None:
            name = default_kind(cfg_or_name.category)
    else:
        name = cfg_or_name
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"kind must be {' or '.join(repr(k) for k in KINDS)}, got {name!r}")
    return kind
