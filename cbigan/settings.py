"""Settings resolved once: every value of a run, and where it comes from.

:func:`resolve` applies, in order, each layer of a run's settings, later ones winning:

1. ``paper``: the paper's defaults (:class:`cbigan.config.Config`'s field defaults);
2. ``preset NAME``: the preset's values (:data:`cbigan.config.PRESET_TABLE`);
3. ``data``: what the training images say (:func:`cbigan.kinds.infer_kind`: an unknown folder's kind,
   the tiles canvas), where no flag says it;
4. ``flag``: the values given explicitly;

then fills what is still open: the kind (``paper``: the category's in the paper's split), the preset's
per-kind values (``preset NAME``), the input kind's defaults (``kind NAME``, from the kind's class in
:mod:`cbigan.kinds`) and the paper's rules (``paper``: width 3, monitoring at every evaluation); checks
the result and returns a frozen :class:`~cbigan.config.Config` whose ``sources`` names each value's
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
from dataclasses import MISSING

from .anomaly_score import IMAGE_SCORE_RULES, MAP_RULES
from .config import (BEFORE_THE_FIELD, DISTRIBUTE, NORMALIZATIONS, PAPER_WIDTH, PRECISION_CHOICES, PRESET_TABLE,
                     SELECTION_RULES, TRAIN_CROPS, Config)
from .kinds import default_kind, infer_kind, kind_of

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
    None values are not given), and the one-line note of :func:`cbigan.kinds.infer_kind` when the data
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
    already where it was built by :func:`cbigan.config.apply_preset`; source: the one ``cfg.sources``
    names, else ``paper`` for a paper default, else ``source``), then the per-kind layers as in
    :func:`resolve`. ``infer``: let the training images choose an unknown folder's kind and the tiles
    canvas (:func:`cbigan.kinds.infer_kind`), as training does."""
    values = {name: getattr(cfg, name) for name in FIELDS}
    paper = paper_defaults()
    sources = {name: cfg.sources.get(name) or (PAPER if values[name] == paper[name] else source)
               for name in FIELDS if values[name] is not None}
    if infer:
        values, sources, _ = _infer(values, sources)
    return _fill(values, sources, extra=cfg.extra)


def load_config(data: dict) -> Config:
    """The configuration a ``config.json`` holds (resolved values, and their ``sources`` since they were
    recorded). Fields it lacks take what a run trained with before they existed
    (:data:`cbigan.config.BEFORE_THE_FIELD`, source ``older run``), then the kind's defaults; unknown
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


def describe(cfg: Config) -> str:
    """Every setting of ``cfg`` with its value and source, one a line, aligned (``--print-config``)."""
    from .cli import show

    rows = [(name, "-" if getattr(cfg, name) is None else show(getattr(cfg, name)),
             cfg.sources.get(name, "")) for name in FIELDS]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    head = [f"{'setting':<{w0}}  {'value':<{w1}}  source"]
    return "\n".join(head + [f"{n:<{w0}}  {v:<{w1}}  {s}".rstrip() for n, v, s in rows])


# ---------------------------------------------------------------------------------- the layers
def _infer(values: dict, sources: dict) -> tuple[dict, dict, str | None]:
    """The data layer: :func:`cbigan.kinds.infer_kind` on the values so far."""
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
    if v["global_views"] and v["image_score"] not in MAP_RULES:
        raise ValueError(f"global views add to the anomaly map's image score: use --image-score "
                         f"{' or '.join(MAP_RULES)}, not {v['image_score']}")
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
    fill("monitor_every", v["eval_every"], s.get("eval_every", PAPER))  # every evaluation
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
    return Config(**v, extra=dict(extra or {}), sources={name: s[name] for name in FIELDS})
