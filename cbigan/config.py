"""Run configuration: the paper's defaults, per-category data presets and named training presets.

A :class:`Config` is resolved once (category preset, then named preset, then explicit flags) and
written to ``config.json`` in the run folder, so every later tool (evaluate, export, predict, plots)
rebuilds exactly the model that was trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# the MVTec AD category lists live with the input kinds (cbigan/kinds.py)
from .anomaly_score import IMAGE_SCORE_RULES, RULES_WITH_MAPS
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


@dataclass
class Config:
    """Everything that defines a run. Defaults are the paper's / authors' code's."""

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
                                       # None: PRESET_GLOBAL_VIEWS for tiles with a map rule, else 0
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

    def resolved(self) -> "Config":
        """Fill the category-dependent fields left as None."""
        c = dataclasses.replace(self)
        if c.kind is None:
            c.kind = default_kind(c.category)
        kind = kind_of(c)  # the input kind (cbigan/kinds.py): ValueError for an unknown name
        for name, value in PRESET_DATA.get(c.preset, {}).get(c.kind, {}).items():
            if getattr(c, name) is None:
                setattr(c, name, value)
        for name, value in kind.defaults(c.category, image_size=c.image_size).items():
            if getattr(c, name) is None:
                setattr(c, name, value)
        if c.width is None:
            c.width = PAPER_WIDTH
        if c.score_margin is None:
            c.score_margin = kind.default_score_margin(c)
        if c.select is None:
            c.select = kind.default_select
        if c.image_score is None:
            c.image_score = kind.default_image_score
        if c.normalize is None:
            c.normalize = kind.default_normalize
        if c.train_crops is None:
            c.train_crops = kind.default_train_crops
        kind.validate(c)
        if not 0 <= c.val_split < 1:
            raise ValueError(f"val_split must be in [0, 1), got {c.val_split}")
        if not 0 <= c.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {c.alpha}")
        if c.global_views is None:
            c.global_views = (PRESET_GLOBAL_VIEWS.get(c.preset, 0.0)
                              if c.kind == "tiles" and c.image_score in RULES_WITH_MAPS else 0.0)
        if not 0 <= c.global_views < 1:
            raise ValueError(f"global_views must be in [0, 1) (a share of each training batch), got {c.global_views}")
        if c.global_views and c.kind != "tiles":
            raise ValueError(f"global views are for --kind tiles (a {c.kind} model sees whole images already)")
        if c.global_views and c.image_score not in RULES_WITH_MAPS:
            raise ValueError(f"global views add to the anomaly map's image score: use --image-score "
                             f"{', '.join(RULES_WITH_MAPS)}, not {c.image_score}")
        if not 0 <= c.denoise <= 1:
            raise ValueError(f"denoise must be in [0, 1] (a share of the training images), got {c.denoise}")
        if c.select not in SELECTION_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECTION_RULES)}, got {c.select!r}")
        if c.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {c.normalize!r}")
        if c.train_crops not in TRAIN_CROPS:
            raise ValueError(f"train_crops must be one of {', '.join(TRAIN_CROPS)}, got {c.train_crops!r}")
        if c.image_score not in IMAGE_SCORE_RULES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORE_RULES)}, got {c.image_score!r}")
        if not 0 < c.score_topk <= 1:
            raise ValueError(f"score_topk must be in (0, 1], got {c.score_topk}")
        if c.score_margin < 0:
            raise ValueError(f"score_margin must be >= 0 map pixels, got {c.score_margin}")
        if c.monitor_every is None:
            c.monitor_every = c.eval_every
        if c.monitor_every < 0:
            raise ValueError(f"monitor_every must be >= 0 steps (0: only at the end), got {c.monitor_every}")
        if c.d_iter < 0:
            raise ValueError(f"d_iter must be >= 0, got {c.d_iter}")
        if c.steps < 1:
            raise ValueError(f"steps must be >= 1 (a run of 0 steps would save and export an untrained model), "
                             f"got {c.steps}")
        if c.minutes is not None and not c.minutes > 0:
            raise ValueError(f"minutes must be > 0 (omit it for no time budget), got {c.minutes}")
        if c.intra_op_threads is not None and c.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0 (0: TensorFlow's default), got {c.intra_op_threads}")
        if c.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {c.precision!r}")
        if c.distribute not in DISTRIBUTE:
            raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {c.distribute!r}")
        c.betas_d, c.betas_eg = tuple(c.betas_d), tuple(c.betas_eg)
        return c

    @classmethod
    def from_json(cls, path: str | Path) -> "Config":
        data = json.loads(Path(path).read_text())
        for name, value in BEFORE_THE_FIELD.items():
            data.setdefault(name, value)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in data.items() if k not in known}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        cfg.extra.update(extra)
        return cfg.resolved()


#: What a run whose ``config.json`` predates a field trained with: the crops anywhere on the canvas, no
#: global views (their defaults changed since). Loading and resuming such a run keep these.
BEFORE_THE_FIELD = {"train_crops": "canvas", "global_views": 0.0}


def default_run_name(cfg: Config) -> str:
    """Stable for a given command line, so running the same command again resumes the same run."""
    return f"{cfg.preset}-alpha{cfg.alpha:g}-seed{cfg.seed}"


def method_name(alpha: float) -> str:
    """``EGBAD`` for alpha 0 (plain BiGAN), ``autoencoder`` for alpha 1, ``CBiGAN`` in between."""
    return {0.0: "EGBAD", 1.0: "autoencoder"}.get(float(alpha), "CBiGAN")


#: Named presets: overrides applied on top of the paper defaults. ``paper`` is the paper itself.
#: ``fast`` is for minutes on a CPU (evidence: results/NOTES.md): one critic batch per E+G batch,
#: consistency and adversarial terms weighted equally, a 10x larger E+G learning rate, smaller
#: batches, a ~50-step EMA updated every step, the last EMA weights as the model (``--select final``), and
#: the image score from the anomaly map (``map_max``; evidence: results/small_defects).
PRESETS: dict[str, dict] = {
    "paper": {},
    "fast": {"d_iter": 1, "alpha": 0.5, "lr_d": 1e-4, "lr_eg": 1e-3, "batch_size": 16,
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
             "select": "final"},
}
#: Per-kind settings of a preset, used where the category default would apply (explicit flags win).
#: ``fast`` objects: 64 px instead of 128 (4x less compute per image), no rotation, and networks twice
#: as wide (width 6: bottle 0.904 vs 0.871 image auROC at 15 CPU minutes, 3 seeds); textures keep the
#: paper's 3 (leather sample 0.932 vs 1.000 at width 6, one seed, with a third fewer steps; fourth
#: study). ``fast`` tiles are widened too since they learn each image's global view (an object's view):
#: magnetic tile 0.801 (0.801-0.812) vs 0.772 (median of 3 seeds each) at width 3, AUPRO 0.619 (twelfth
#: study; without the global view width 6 had not helped tiles: 0.712 vs 0.715) (results/small_defects).
#: ``global_views`` of each preset for tiles scored by a map rule (the global view adds to the map
#: rule's score; other kinds see whole images already). ``fast``: half of each batch; magnetic tile
#: image auROC 0.772 (median of 3 seeds, width 3) vs 0.735 with a quarter and 0.713 with none, bottle as
#: tiles 0.841 vs 0.815 vs 0.730, the leather sample 1.000 (results/small_defects, eleventh study); three
#: quarters: 0.777 and 0.837, no better (twelfth study). Not in the paper: 0 for ``paper``.
PRESET_GLOBAL_VIEWS: dict[str, float] = {"fast": 0.5}
PRESET_DATA: dict[str, dict[str, dict]] = {
    "fast": {"object": {"image_size": 64, "rotation": 0.0, "width": 6}, "tiles": {"width": 6}},
}


def apply_preset(cfg: Config, name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(cfg, preset=name, **PRESETS[name])
