"""Run configuration, resolved once: the paper's defaults (:class:`Config`'s field defaults), the named
presets (:data:`PRESET_TABLE`), as data, and the one function that resolves a run's settings.

:func:`resolve` applies, in order, each layer of a run's settings, later ones winning:

1. ``paper``: the paper's defaults (:class:`Config`'s field defaults);
2. ``preset NAME``: the preset's values (:data:`PRESET_TABLE`);
3. ``data``: what the training images say (:func:`cbigan.core.kinds.infer_kind`: an unknown folder's kind,
   the tiles canvas), where no flag says it;
4. ``flag``: the values given explicitly;

then fills what is still open: the kind (``paper``: the category's in the paper's split), the preset's
per-kind values (``preset NAME``), the input kind's defaults (``kind NAME``, from the kind's class in
:mod:`cbigan.core.kinds`) and the paper's rules (``paper``: width 3, monitoring at every evaluation); checks
the result and returns a frozen :class:`Config` whose ``sources`` names each value's
layer. That configuration is the run's: training writes it to ``config.json`` (sources included) and
every module reads it as it is.

A configuration built by hand (``Config(...)``, tests, studies) is resolved by :func:`resolve_config`
(its values as given, source ``given``), and one read from an older ``config.json`` by
:func:`load_config` (source ``config.json`` where the file records none). Library entry points that
accept either take :func:`as_resolved`, which returns a resolved configuration unchanged.

``python train.py ... --print-config`` prints the table :func:`describe` makes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, dataclass, field
from pathlib import Path

# the MVTec AD category lists live with the input kinds (cbigan/core/kinds.py)
from cbigan.core.anomaly_score import IMAGE_SCORE_RULES, RULES_WITH_MAPS
from cbigan.core.kinds import OBJECTS, ROTATED_OBJECTS, TEXTURES, default_kind, infer_kind, kind_of  # noqa: F401  (re-exported)

CATEGORIES = TEXTURES + OBJECTS
#: ``--distribute`` choices (see :mod:`cbigan.model.distribute`); ``batch_size`` is always the global batch.
DISTRIBUTE = ("none", "mirrored", "multiworker")
#: ``--select`` rules: which snapshot is the model, without test labels (see :mod:`cbigan.scoring.selection`).
SELECTION_RULES = ("synthetic", "final")
#: ``--normalize`` choices (:func:`cbigan.core.imageops.to_model_range`): ``per_image`` standardizes every
#: image per channel, so a global brightness or contrast change does not change the score.
NORMALIZATIONS = ("none", "per_image")
#: ``--train-crops`` choices (tiles; :meth:`cbigan.core.kinds.InputKind.geometric_augment`): training crops
#: anywhere on the canvas (its mirrored padding included) or centred inside each image's own region.
TRAIN_CROPS = ("canvas", "image")
#: The paper's width multiplier c of the networks (3 to 48 channels; cbigan/model/networks.py).
PAPER_WIDTH = 3
#: Training precisions (``Config.precision``, ``--precision``): ``float32``, or Keras's
#: ``mixed_bfloat16`` (bfloat16 convolutions, float32 variables; :func:`cbigan.model.networks.precision_scope`).
#: The losses, the networks' outputs and f_D stay float32, and evaluation, selection and export run
#: float32 networks either way. An option, not a default (why: docs/decisions.md).
PRECISIONS = ("float32", "mixed_bfloat16")
#: ``--precision`` values: a precision, or ``auto``: chosen by the machine when training starts
#: (:func:`cbigan.training.machine.choose_precision`: ``mixed_bfloat16`` on a CPU with native bfloat16 and no
#: GPU, else ``float32``) and stored resolved in the run's ``config.json``.
PRECISION_CHOICES = PRECISIONS + ("auto",)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Defaults are the paper's / authors' code's; ``None``: chosen when
    the configuration is resolved (:func:`resolve`), by the preset, the input kind or the data.
    Frozen: change a value with :func:`dataclasses.replace`."""

    category: str = "grid"
    data_dir: str = "data/mvtec-ad"
    output_dir: str = "runs"
    run_name: str | None = None
    preset: str = "paper"
    # data
    kind: str | None = None            # a cbigan.core.kinds.KINDS name: "object", "texture"; None: from the category
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
                                       # objects and tiles)
    norm: str = "none"
    activation: str = "leaky_relu"
    feature_layer: str = "critic_features"
    # training
    alpha: float = 1e-4
    denoise: float = 0.0               # share of E+G training images given a synthetic defect whose clean
                                       # image G must give back (cbigan/data/defects.py); 0: the paper
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
    image_score: str | None = None     # image score rule (cbigan/core/anomaly_score.py): paper, map_max, map_topk
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
    select: str | None = None          # label-free snapshot choice (cbigan/scoring/selection.py): synthetic, final
                                       # (None: the kind's: synthetic, final for tiles)
    extra: dict = field(default_factory=dict)

    #: Where each value comes from (:func:`resolve`: "paper", "preset NAME", "kind NAME", "data",
    #: "flag", ...), filled when the configuration is resolved and stored in ``config.json``; not part of
    #: the configuration's identity (equality ignores it).
    sources: dict = field(default_factory=dict, compare=False)

    def resolved(self) -> "Config":
        """This configuration with every open field chosen and checked (:func:`resolve_config`:
        the values given are kept; the preset's per-kind values, the input kind's defaults and the paper's
        rules fill the rest). A run's configuration is resolved once, when it starts or loads."""
        return resolve_config(self)

    @classmethod
    def from_json(cls, path: str | Path) -> "Config":
        """The resolved configuration a run's ``config.json`` holds (an older one without some fields or
        their sources loads with what it trained with: :data:`BEFORE_THE_FIELD`)."""
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
#: ``global_views`` share (for the kinds that take global views, :meth:`cbigan.core.kinds.InputKind.default_global_views`).
#: Explicit flags win over all of them (:func:`resolve`). ``paper`` is the paper itself.
#:
#: ``fast`` is for minutes on a CPU: one critic batch per E+G batch, consistency and adversarial terms
#: weighted equally, a 10x larger E+G learning rate, smaller batches, a ~50-step EMA updated every step,
#: the last EMA weights as the model (``--select final``), the image score from the anomaly map
#: (``map_max``) and every image standardized per channel (``--normalize per_image``).
#:
#: ``fast`` per kind: objects at 64 px instead of 128 (4x less compute per image), no rotation, and
#: networks twice as wide (width 6); textures keep the paper's 3; tiles are widened too, since they
#: learn each image's global view (an object's view).
#:
#: ``global_views`` of each preset for tiles scored by a map rule (the global view adds to the map
#: rule's score; other kinds see whole images already): half of each batch for ``fast``; 0 for
#: ``paper`` (not in the paper).
#:
#: Why each value: docs/decisions.md ("Defaults and presets").
PRESET_TABLE: dict[str, dict] = {
    "paper": {"values": {}, "kinds": {}, "global_views": 0.0},
    "fast": {
        "values": {
            "d_iter": 1, "alpha": 0.5, "lr_d": 1e-4, "lr_eg": 1e-3, "batch_size": 16,
            "ema_decay": 0.98, "ema_every": 1, "eval_every": 50, "log_every": 50,
            # test-set monitoring (eval_log.csv test_*) every 500 steps, not at every evaluation: it
            # costs wall time and never chooses the model (why: docs/decisions.md)
            "monitor_every": 500,
            # the image score is the anomaly map's maximum, not the paper's sum (why: docs/decisions.md)
            "image_score": "map_max",
            # every image standardized per channel, so that a global brightness or contrast change
            # does not change the score (why: docs/decisions.md). Tiles standardize anyway (the
            # kind's default).
            "normalize": "per_image",
            # the last (EMA) weights are the model, no label-free snapshot choice (why:
            # docs/decisions.md)
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
    hand-built configuration; :func:`resolve` applies a preset with the flags instead)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(cfg, preset=name, **PRESETS[name])


# ---------------------------------------------------------------------------------- resolution
#: Sources (``Config.sources`` values). A preset's and a kind's carry their name: ``preset fast``.
PAPER, FLAG, DATA, GIVEN, STORED, OLDER, MACHINE = ("paper", "flag", "data", "given", "config.json",
                                                    "older run", "machine")
#: Fields that are bookkeeping, not settings (not in :func:`describe`'s table).
NOT_SETTINGS = ("extra", "sources")
FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in NOT_SETTINGS)


def preset_source(name: str) -> str:
    return f"preset {name}"


def kind_source(name: str) -> str:
    return f"kind {name}"


def paper_defaults() -> dict:
    """Every setting's value in the paper (``None``: chosen per input kind or from the data)."""
    out = {}
    for f in dataclasses.fields(Config):
        if f.name not in NOT_SETTINGS:
            out[f.name] = f.default_factory() if f.default is MISSING else f.default
    return out


def resolve(flags: dict, *, infer: bool = True) -> tuple[Config, str | None]:
    """The resolved configuration of a run from the values given explicitly (``flags``: field -> value;
    None values are not given), and the one-line note of :func:`cbigan.core.kinds.infer_kind` when the data
    chose the kind or the tiles canvas (else None). ``infer``: whether to read the training images'
    sizes (from ``data_dir``/``category``) at all. ValueError for an unknown preset or field, or a
    value out of range."""
    flags = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(flags) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")
    preset = flags.get("preset", PAPER)
    if preset not in PRESET_TABLE:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESET_TABLE)}")
    values = paper_defaults()
    sources = {name: PAPER for name in values}
    for name, value in PRESET_TABLE[preset]["values"].items():
        values[name], sources[name] = value, preset_source(preset)
    values.update(flags)
    sources.update({name: FLAG for name in flags})
    note = None
    if infer:
        values, sources, note = _infer(values, sources)
    return _fill(values, sources), note


def resolve_config(cfg: Config, *, infer: bool = False, source: str = GIVEN) -> Config:
    """A configuration built by hand, resolved: its values as given (they hold its preset's values
    already where it was built by :func:`apply_preset`; source: the one ``cfg.sources``
    names, else ``paper`` for a paper default, else ``source``), then the per-kind layers as in
    :func:`resolve`. ``infer``: let the training images choose an unknown folder's kind and the tiles
    canvas (:func:`cbigan.core.kinds.infer_kind`), as training does."""
    return resolve_given(cfg, infer=infer, source=source)[0]


def resolve_given(cfg: Config, *, infer: bool = False, source: str = GIVEN) -> tuple[Config, str | None]:
    """:func:`resolve_config`, and the note of :func:`cbigan.core.kinds.infer_kind` (or None)."""
    values = {name: getattr(cfg, name) for name in FIELDS}
    paper = paper_defaults()
    sources = {name: cfg.sources.get(name) or (PAPER if values[name] == paper[name] else source)
               for name in FIELDS if values[name] is not None}
    note = None
    if infer:
        values, sources, note = _infer(values, sources)
    return _fill(values, sources, extra=cfg.extra), note


def load_config(data: dict) -> Config:
    """The configuration a ``config.json`` holds (resolved values, and their ``sources`` since they were
    recorded). Fields it lacks take what a run trained with before they existed
    (:data:`BEFORE_THE_FIELD`, source ``older run``), then the kind's defaults; unknown
    keys go to ``extra``."""
    data = dict(data)
    stored = dict(data.pop("sources", None) or {})
    for name, value in BEFORE_THE_FIELD.items():
        if name not in data:
            data[name] = value
            stored[name] = OLDER
    known = {f.name for f in dataclasses.fields(Config)}
    extra = {k: v for k, v in data.items() if k not in known}
    cfg = Config(**{k: v for k, v in data.items() if k in known}, sources=stored)
    cfg.extra.update(extra)
    return resolve_config(cfg, source=STORED)


def is_resolved(cfg: Config) -> bool:
    """Whether ``cfg`` came out of resolution (every setting has a source)."""
    return all(name in cfg.sources for name in FIELDS)


def as_resolved(cfg: Config) -> Config:
    """``cfg`` itself when resolved (a run's configuration), else :func:`resolve_config` of it: for library
    entry points that also take a configuration built by hand."""
    return cfg if is_resolved(cfg) else resolve_config(cfg)


def with_sources(cfg: Config, source: str, **changes) -> Config:
    """``cfg`` with ``changes`` (field -> value) and their source set to ``source``."""
    return dataclasses.replace(cfg, **changes, sources={**cfg.sources, **{k: source for k in changes}})


def show(value) -> str:
    """A value as a user would type it: ``on``/``off``, ``0.0001``, ``10``, ``a b``, ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(show(v) for v in value)
    return str(value)


def describe(cfg: Config) -> str:
    """Every setting of ``cfg`` with its value and source, one a line, aligned (``--print-config``)."""
    rows = [(name, show(getattr(cfg, name)),
             cfg.sources.get(name, "")) for name in FIELDS]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    head = [f"{'setting':<{w0}}  {'value':<{w1}}  source"]
    return "\n".join(head + [f"{n:<{w0}}  {v:<{w1}}  {s}".rstrip() for n, v, s in rows])


# ---------------------------------------------------------------------------------- the layers
def _infer(values: dict, sources: dict) -> tuple[dict, dict, str | None]:
    """The data layer: :func:`cbigan.core.kinds.infer_kind` on the values so far."""
    draft = Config(**values)
    chosen, note = infer_kind(draft)
    if note is None:
        return values, sources, None
    values, sources = dict(values), dict(sources)
    for name in ("kind", "image_size"):
        if getattr(chosen, name) != values[name]:
            values[name], sources[name] = getattr(chosen, name), DATA
    return values, sources, note


def _fill(values: dict, sources: dict, extra: dict | None = None) -> Config:
    """Fill the fields still None (the kind, the preset's per-kind values, the kind's defaults, the paper's
    rules), check the result and return it frozen, with its sources."""
    v, s = dict(values), dict(sources)

    def fill(name, value, source):
        if v[name] is None:
            v[name], s[name] = value, source

    preset = PRESET_TABLE.get(v["preset"], {})
    fill("kind", default_kind(v["category"]), PAPER)  # the category's kind (the paper's split)
    kind = kind_of(v["kind"])  # ValueError for an unknown name
    for name, value in preset.get("kinds", {}).get(kind.name, {}).items():
        fill(name, value, preset_source(v["preset"]))
    for name, value in kind.defaults(v["category"], image_size=v["image_size"]).items():
        fill(name, value, kind_source(kind.name))
    fill("width", PAPER_WIDTH, PAPER)
    fill("score_margin", kind.default_score_margin(Config(**v)), kind_source(kind.name))
    for name in ("select", "image_score", "normalize", "train_crops"):
        fill(name, getattr(kind, f"default_{name}"), kind_source(kind.name))
    c = Config(**v)
    kind.validate(c)
    if not 0 <= c.val_split < 1:
        raise ValueError(f"val_split must be in [0, 1), got {c.val_split}")
    if not 0 <= c.alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {c.alpha}")
    share = preset.get("global_views", 0.0)
    views = kind.default_global_views(share, v["image_score"])
    fill("global_views", views, preset_source(v["preset"]) if views else PAPER)
    if not 0 <= v["global_views"] < 1:
        raise ValueError(f"global_views must be in [0, 1) (a share of each training batch), got {v['global_views']}")
    if v["global_views"] and not kind.takes_global_views:
        raise ValueError(f"global views are for --kind tiles (a {kind.name} model sees whole images already)")
    if v["global_views"] and v["image_score"] not in RULES_WITH_MAPS:
        raise ValueError(f"global views add to the anomaly map's image score: use --image-score "
                         f"{' or '.join(RULES_WITH_MAPS)}, not {v['image_score']}")
    if not 0 <= v["denoise"] <= 1:
        raise ValueError(f"denoise must be in [0, 1] (a share of the training images), got {v['denoise']}")
    for name, choices in (("select", SELECTION_RULES), ("normalize", NORMALIZATIONS), ("train_crops", TRAIN_CROPS),
                          ("image_score", IMAGE_SCORE_RULES)):
        if v[name] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v[name]!r}")
    if not 0 < v["score_topk"] <= 1:
        raise ValueError(f"score_topk must be in (0, 1], got {v['score_topk']}")
    if v["score_margin"] < 0:
        raise ValueError(f"score_margin must be >= 0 map pixels, got {v['score_margin']}")
    fill("monitor_every", v["eval_every"], PAPER)  # the paper's: every evaluation
    if v["monitor_every"] < 0:
        raise ValueError(f"monitor_every must be >= 0 steps (0: only at the end), got {v['monitor_every']}")
    if v["d_iter"] < 0:
        raise ValueError(f"d_iter must be >= 0, got {v['d_iter']}")
    if v["steps"] < 1:
        raise ValueError(f"steps must be >= 1 (a run of 0 steps would save and export an untrained model), "
                         f"got {v['steps']}")
    if v["minutes"] is not None and not v["minutes"] > 0:
        raise ValueError(f"minutes must be > 0 (omit it for no time budget), got {v['minutes']}")
    if v["intra_op_threads"] is not None and v["intra_op_threads"] < 0:
        raise ValueError(f"intra_op_threads must be >= 0 (0: TensorFlow's default), got {v['intra_op_threads']}")
    if v["precision"] not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {v['precision']!r}")
    if v["distribute"] not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {v['distribute']!r}")
    v["betas_d"], v["betas_eg"] = tuple(v["betas_d"]), tuple(v["betas_eg"])
    for name in FIELDS:  # open fields that stay open (run_name, minutes, intra_op_threads): the paper's
        s.setdefault(name, PAPER)
    return Config(**v, extra={} if extra is None else extra, sources={name: s[name] for name in FIELDS})
