"""Run configuration: the paper's defaults (:class:`Config`'s field defaults) and the named presets
(:data:`PRESET_TABLE`), as data.

A run's :class:`Config` is resolved once (:func:`cbigan.settings.resolve`: the paper's defaults, the
preset, the input kind, what the data says, the flags) and written to ``config.json`` in the run folder
with each value's source, so every later tool (evaluate, export, predict, plots) rebuilds exactly the
model that was trained. Everything that differs between input kinds is in :mod:`cbigan.kinds`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# the MVTec AD category lists live with the input kinds (cbigan/kinds.py)
from .anomaly_score import IMAGE_SCORE_RULES
from .kinds import OBJECTS, ROTATED_OBJECTS, TEXTURES, default_kind, kind_of  # noqa: F401  (re-exported)

CATEGORIES = TEXTURES + OBJECTS
#: ``--distribute`` choices (see :mod:`cbigan.distribute`); ``batch_size`` is always the global batch.
DISTRIBUTE = ("none", "mirrored", "multiworker")
#: ``--select`` rules: which snapshot is the model, without test labels (see :mod:`cbigan.selection`).
SELECTION_RULES = ("synthetic", "final")
#: ``--normalize`` choices (:func:`cbigan.imageops.to_model_range`): ``per_image`` standardizes every
#: image per channel, so a global brightness or contrast change does not change the score.
NORMALIZATIONS = ("none", "per_image")
#: ``--train-crops`` choices (tiles; :meth:`cbigan.kinds.InputKind.geometric_augment`): training crops
#: anywhere on the canvas (its mirrored padding included) or centred inside each image's own region.
TRAIN_CROPS = ("canvas", "image")
#: The paper's width multiplier c of the networks (3 to 48 channels; cbigan/networks.py).
PAPER_WIDTH = 3
#: Training precisions (``Config.precision``, ``--precision``): ``float32``, or Keras's
#: ``mixed_bfloat16`` (bfloat16 convolutions, float32 variables; :func:`cbigan.networks.precision_scope`).
#: The losses, the networks' outputs and f_D stay float32, and evaluation, selection and export run
#: float32 networks either way (evidence: results/benchmarks.md, "bfloat16").
PRECISIONS = ("float32", "mixed_bfloat16")
#: ``--precision`` values: a precision, or ``auto``: chosen by the machine when training starts
#: (:func:`cbigan.training.choose_precision`: ``mixed_bfloat16`` on a CPU with native bfloat16 and no
#: GPU, else ``float32``) and stored resolved in the run's ``config.json``.
PRECISION_CHOICES = PRECISIONS + ("auto",)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Defaults are the paper's / authors' code's; ``None``: chosen when
    the configuration is resolved (:mod:`cbigan.settings`), by the preset, the input kind or the data.
    Frozen: change a value with :func:`dataclasses.replace`."""

    category: str = "grid"
    data_dir: str = "data/mvtec-ad"
    output_dir: str = "runs"
    run_name: str | None = None
    preset: str = "paper"
    # data
    kind: str | None = None            # a cbigan.kinds.KINDS name: "object", "texture"; None: from the category
    image_size: int | None = None      # side after resizing: 128 objects, 512 textures
    patch_size: int | None = None      # network input: 128 objects, 64 textures
    rotation: float | None = None      # max degrees: objects +-rotation, textures 0..rotation
    scale: float = 1.0                 # tiles: one scale factor for every image (1.0: native resolution)
    val_split: float = 0.1             # share of train/good held out (threshold, model selection)
    normalize: str | None = None       # input normalization: "none" (paper) or "per_image" (lighting drift);
                                       # None: the kind's ("none"; "per_image" for tiles)
    train_crops: str | None = None     # tiles: "canvas" (anywhere) or "image" (centred in the image's
                                       # region); None: the kind's ("canvas"; "image" for tiles). The
                                       # same crops for objects and textures
    global_views: float | None = None  # tiles: share of each training batch that is whole images resized to
                                       # one tile (the global view, scored beside the tiles); 0: none;
                                       # None: the preset's share for tiles with a map rule, else 0
    # networks
    latent_dim: int = 64
    width: int | None = None           # width multiplier c; None: the paper's 3 (--preset fast: 6 for
                                       # objects)
    norm: str = "none"
    activation: str = "leaky_relu"
    feature_layer: str = "critic_features"
    # training
    alpha: float = 1e-4
    denoise: float = 0.0               # share of E+G training images given a synthetic defect whose clean
                                       # image G must give back (cbigan/defects.py); 0: the paper
    d_iter: int = 5
    gp_weight: float = 10.0
    batch_size: int = 32
    steps: int = 1_200_000
    minutes: float | None = None
    lr_d: float = 1e-4
    lr_eg: float = 1e-4
    betas_d: tuple = (0.0, 0.9)
    betas_eg: tuple = (0.0, 0.1)
    ema_decay: float = 0.999
    ema_every: int = 10
    ema_warmup: bool = True
    seed: int = 42
    distribute: str = "none"           # "none", "mirrored" (this host's GPUs), "multiworker" (TF_CONFIG)
    intra_op_threads: int | None = None  # TF intra-op threads, 0 = TF's default; None: chosen at train start
    precision: str = "float32"         # training arithmetic: "float32" or "mixed_bfloat16" (bfloat16
                                       # computation, float32 variables, losses and outputs; evaluation
                                       # and export run float32 networks either way)
    # scoring and bookkeeping
    score_lambda: float = 0.1
    image_score: str | None = None     # image score rule (cbigan/anomaly_score.py): paper, map_max, map_topk
                                       # (None: the kind's: paper, map_max for tiles)
    score_topk: float = 0.01           # map_topk: share of the map's pixels averaged
    score_margin: int | None = None    # map rules: map pixels left out at the image's border (None: the kind's)
    threshold_percentile: float = 99.0
    eval_every: int = 1000
    monitor_every: int | None = None   # steps between test-set monitoring (eval_log.csv test_*): at the
                                       # first evaluation past each multiple, and at the end; 0: only
                                       # at the end; None: every evaluation
    log_every: int = 100
    preview_every: int = 1000
    select_on_test: bool = False
    select: str | None = None          # label-free snapshot choice (cbigan/selection.py): synthetic, final
                                       # (None: the kind's: synthetic, final for tiles)
    extra: dict = field(default_factory=dict)

    #: Where each value comes from (:mod:`cbigan.settings`: "paper", "preset NAME", "kind NAME", "data",
    #: "flag", ...), filled when the configuration is resolved and stored in ``config.json``; not part of
    #: the configuration's identity (equality ignores it).
    sources: dict = field(default_factory=dict, compare=False)

    def resolved(self) -> "Config":
        """This configuration with every open field chosen and checked (:func:`cbigan.settings.resolve_config`:
        the values given are kept; the preset's per-kind values, the input kind's defaults and the paper's
        rules fill the rest). A run's configuration is resolved once, when it starts or loads."""
        from .settings import resolve_config

        return resolve_config(self)

    @classmethod
    def from_json(cls, path: str | Path) -> "Config":
        """The resolved configuration a run's ``config.json`` holds (an older one without some fields or
        their sources loads with what it trained with: :data:`BEFORE_THE_FIELD`)."""
        from .settings import load_config

        return load_config(json.loads(Path(path).read_text()))


#: What a run whose ``config.json`` predates a field trained with: the crops anywhere on the canvas, no
#: global views (their defaults changed since). Loading and resuming such a run keep these.
BEFORE_THE_FIELD = {"train_crops": "canvas", "global_views": 0.0}


def default_run_name(cfg: Config) -> str:
    """Stable for a given command line, so running the same command again resumes the same run."""
    return f"{cfg.preset}-alpha{cfg.alpha:g}-seed{cfg.seed}"


def method_name(alpha: float) -> str:
    """``EGBAD`` for alpha 0 (plain BiGAN), ``autoencoder`` for alpha 1, ``CBiGAN`` in between."""
    return {0.0: "EGBAD", 1.0: "autoencoder"}.get(float(alpha), "CBiGAN")


#: The named presets, as data: each preset's ``values`` (overrides of the paper's defaults, for every
#: input kind), its per-kind ``kinds`` values (used where the kind's default would apply) and its
#: ``global_views`` share (for the kinds that take global views, :meth:`cbigan.kinds.InputKind.default_global_views`).
#: Explicit flags win over all of them (:func:`cbigan.settings.resolve`). ``paper`` is the paper itself.
#:
#: ``fast`` is for minutes on a CPU (evidence: results/NOTES.md): one critic batch per E+G batch,
#: consistency and adversarial terms weighted equally, a 10x larger E+G learning rate, smaller
#: batches, a ~50-step EMA updated every step, the last EMA weights as the model (``--select final``), and
#: the image score from the anomaly map (``map_max``; evidence: results/small_defects).
#:
#: ``fast`` per kind: objects at 64 px instead of 128 (4x less compute per image), no rotation, and
#: networks twice as wide (width 6: bottle 0.904 vs 0.871 image auROC at 15 CPU minutes, 3 seeds);
#: textures keep the paper's 3 (leather sample 0.932 vs 1.000 at width 6, one seed, with a third fewer
#: steps; fourth study). ``fast`` tiles are widened too since they learn each image's global view (an
#: object's view): magnetic tile 0.801 (0.801-0.812) vs 0.772 (median of 3 seeds each) at width 3, AUPRO
#: 0.619 (twelfth study; without the global view width 6 had not helped tiles: 0.712 vs 0.715)
#: (results/small_defects).
#:
#: ``global_views`` of each preset for tiles scored by a map rule (the global view adds to the map
#: rule's score; other kinds see whole images already). ``fast``: half of each batch; magnetic tile
#: image auROC 0.772 (median of 3 seeds, width 3) vs 0.735 with a quarter and 0.713 with none, bottle as
#: tiles 0.841 vs 0.815 vs 0.730, the leather sample 1.000 (results/small_defects, eleventh study); three
#: quarters: 0.777 and 0.837, no better (twelfth study). Not in the paper: 0 for ``paper``.
PRESET_TABLE: dict[str, dict] = {
    "paper": {"values": {}, "kinds": {}, "global_views": 0.0},
    "fast": {
        "values": {
            "d_iter": 1, "alpha": 0.5, "lr_d": 1e-4, "lr_eg": 1e-3, "batch_size": 16,
            "ema_decay": 0.98, "ema_every": 1, "eval_every": 50, "log_every": 50,
            # scoring the whole test set at every snapshot cost more than the selection itself
            # (results/benchmarks.md, the loop); monitoring never chooses the model
            "monitor_every": 500,
            # the image score from the anomaly map's maximum: median image auROC over bottle, the
            # leather sample and magnetic tile 0.810 vs 0.705 for the paper's sum (3 seeds each,
            # results/small_defects/recipes.md)
            "image_score": "map_max",
            # every image standardized per channel: with the test images 8% darker or brighter, the
            # worst image auROC of bottle 0.856 vs 0.837 and of the leather sample 1.000 vs 0.909, and
            # false alarms at the calibrated threshold 0% vs 75-100% with 8% darker images; as trained,
            # bottle 0.875 vs 0.904, the leather sample 1.000 vs 0.977 (3 seeds each,
            # results/small_defects, sixth study). Tiles standardize anyway (the kind's default).
            "normalize": "per_image",
            # the last (EMA) weights are the model: on bottle the held-out synthetic-defect auROC peaks
            # early (median at 81% of the run) while the test auROC still rises; the snapshot it chose
            # scored 0.878 vs 0.887 for the last weights (median of 15 runs, worst -0.094), magnetic
            # tile as an object -0.003, the leather sample the same (results/small_defects, ninth study)
            "select": "final",
        },
        "kinds": {"object": {"image_size": 64, "rotation": 0.0, "width": 6}, "tiles": {"width": 6}},
        "global_views": 0.5,
    },
}
#: Views of :data:`PRESET_TABLE` (read-only use): each preset's overrides for every kind, its per-kind
#: values and its global-views share.
PRESETS: dict[str, dict] = {name: p["values"] for name, p in PRESET_TABLE.items()}
PRESET_DATA: dict[str, dict[str, dict]] = {name: p["kinds"] for name, p in PRESET_TABLE.items()}
PRESET_GLOBAL_VIEWS: dict[str, float] = {name: p["global_views"] for name, p in PRESET_TABLE.items()}


def apply_preset(cfg: Config, name: str) -> Config:
    """``cfg`` with ``preset`` ``name`` and that preset's values for every kind set (as given values: a
    hand-built configuration; :func:`cbigan.settings.resolve` applies a preset with the flags instead)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(cfg, preset=name, **PRESETS[name])
