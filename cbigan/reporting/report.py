"""The inspection report of a run: one self-contained ``<run>/report.html``.

``python evaluate.py RUN --report`` (and ``train.py --evaluate``) writes it after evaluating. It opens
from a file, with no network access: every image is embedded (base64 PNG / JPEG) and the style is
inline. It holds

* the run's configuration and how the model was chosen (``summary.json``: ``model``, ``selected_step``);
* the image metrics per lambda (``metrics.csv``) and the calibrated threshold (``threshold.json``);
* the ROC curve and the score histogram with the threshold (:func:`cbigan.reporting.figures.roc_figure`,
  :func:`cbigan.reporting.figures.hist_figure`);
* one row per test image (``<tr class="image-row">``), false negatives and false positives at the
  threshold first, then by descending score: thumbnail, anomaly-map overlay with the mask outline,
  defect type, score and verdict. The maps are the evaluation's (``pixel_maps.npz``) when the category
  has ground truth, else ``|x - G(E(x))|`` (channel mean). Thumbnails are small JPEGs (long side
  ``thumb`` px), so 500 images stay a few MB. Each image and its map are shown at the image's own
  aspect ratio: a tiles run's mirrored canvas padding is cut off (:func:`own_part`, from the test
  set's regions), so a 500x1250 strip shows as a strip.

Two halves: :func:`gather` reads the run folder (and runs the model when maps must be computed) into
a :class:`ReportData` of plain values; :func:`render_html` turns that into the page and touches no
file. :func:`write_report` does both and writes the file atomically (:mod:`cbigan.core.runfolder`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbigan.core.anomaly_score import describe_rule, fusion_stats, global_weight
from cbigan.core.layout import GOOD
from cbigan.core.runfolder import (
    METRICS_CSV, PIXEL_NPZ, REPORT_HTML, SCORES_CSV, calibrated_threshold, read_config, read_summary,
    write_text_atomic)

#: Side of the thumbnails and overlays in the image table, in pixels.
THUMB = 96
#: Config fields shown in the report's configuration table.
CONFIG_FIELDS = ("category", "kind", "preset", "alpha", "image_size", "patch_size", "rotation", "steps",
                 "minutes", "batch_size", "d_iter", "lr_d", "lr_eg", "latent_dim", "width", "ema_decay",
                 "score_lambda", "feature_layer", "val_split", "threshold_percentile", "select", "seed")
#: Summary fields shown under "how the model was chosen".
SUMMARY_FIELDS = ("model", "selected_step", "steps", "stopped_because", "wall_seconds", "selected_on_test",
                  "resumed_from_step")
OUTCOMES = {"FN": "false negative", "FP": "false positive", "TP": "true positive", "TN": "true negative",
            "": "no threshold"}


# ---------------------------------------------------------------------------------- plain data
@dataclass
class ImageRow:
    """One test image of the report."""

    name: str                      # e.g. "red_square/003.png"
    defect_type: str
    label: int                     # 0 good, 1 defective
    score: float
    anomalous: bool | None         # score > threshold (None: no calibrated threshold)
    thumb: bytes                   # JPEG
    overlay: bytes | None = None   # JPEG: the anomaly map over the image, mask outlined

    @property
    def outcome(self) -> str:
        """``FN``, ``FP``, ``TP``, ``TN``, or ``""`` without a threshold."""
        if self.anomalous is None:
            return ""
        return ("T" if bool(self.anomalous) == bool(self.label) else "F") + ("P" if self.anomalous else "N")


@dataclass
class ReportData:
    title: str
    config: list                                  # [(name, value)]
    selection: list                               # [(name, value)] from summary.json
    metrics_columns: list                         # metrics.csv header
    metrics_rows: list                            # [[value, ...]], one per lambda
    threshold: float | None = None
    threshold_rule: str = ""
    score_lambda: float | None = None
    figures: dict = field(default_factory=dict)   # caption -> PNG bytes
    images: list = field(default_factory=list)    # [ImageRow]
    map_note: str = ""
    notes: list = field(default_factory=list)


def order_rows(rows: list) -> list:
    """False negatives, then false positives, then the rest; by descending score within each."""
    rank = {"FN": 0, "FP": 1}
    return sorted(rows, key=lambda r: (rank.get(r.outcome, 2), -r.score if math.isfinite(r.score) else 0.0))


# ---------------------------------------------------------------------------------- HTML (pure)
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;
     background:#fff;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f3f3f3} .kv td:first-child{color:#555}
.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:16px} .figs figure{margin:0} .figs img{max-height:340px;width:auto}
.cols{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start} .scroll{overflow-x:auto}
figcaption{font-size:12px;color:#555}
.images img{display:block;image-rendering:auto}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;font-size:12px;font-weight:600}
.FN{background:#ffd6d6;color:#8a0000} .FP{background:#ffe9c7;color:#7a4a00}
.TP{background:#d9f2dc;color:#17541f} .TN{background:#e6eef8;color:#1d3f6b} .none{background:#eee}
tr.error td{background:#fff8f5} .note{color:#555;font-size:13px}
"""


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "-"
        return f"{float(v):.4g}"
    return str(v)


def _kv_table(pairs) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def render_html(d: ReportData) -> str:
    """The whole page from plain data (no file access)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(d.title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(d.title)}</h1>"]
    rows = order_rows(d.images)
    n_fn = sum(r.outcome == "FN" for r in rows)
    n_fp = sum(r.outcome == "FP" for r in rows)
    if d.threshold is not None:
        n_bad, n_good = sum(r.label == 1 for r in rows), sum(r.label == 0 for r in rows)
        rates = (f" (recall {1 - n_fn / n_bad:.0%} of the defective images" if n_bad else " (")
        rates += (f", false alarms on {n_fp / n_good:.0%} of the good ones)" if n_good else ")")
        parts.append(f'<p class="note">{len(rows)} test images; at the calibrated threshold '
                     f'{d.threshold:.6g}: <span class="badge FN">{n_fn} false negative(s)</span> '
                     f'<span class="badge FP">{n_fp} false positive(s)</span>{e(rates)}</p>')
    else:
        parts.append(f'<p class="note">{len(rows)} test images; no calibrated threshold (--val-split 0 '
                     f'or threshold.json missing): no verdicts</p>')
    for note in d.notes:
        parts.append(f'<p class="note">{e(note)}</p>')
    half = -(-len(d.config) // 2)
    parts.append('<div class="cols"><div><h2>Configuration</h2><div class="cols">' + _kv_table(d.config[:half])
                 + _kv_table(d.config[half:]) + "</div></div>")
    parts.append("<div><h2>How the model was chosen</h2>" + (_kv_table(d.selection) if d.selection else
                                                             '<p class="note">no summary.json</p>') + "</div></div>")
    parts.append("<h2>Image metrics per lambda</h2>")
    if d.metrics_rows:
        head = "".join(f"<th>{e(str(c))}</th>" for c in d.metrics_columns)
        body = "".join("<tr>" + "".join(f'<td class="num">{e(_fmt(v))}</td>' for v in r) + "</tr>"
                       for r in d.metrics_rows)
        parts.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
    else:
        parts.append('<p class="note">no metrics.csv</p>')
    if d.threshold is not None:
        parts.append(f'<p class="note">threshold {d.threshold:.6g}'
                     + (f" (lambda {d.score_lambda:g})" if d.score_lambda is not None else "")
                     + f": {e(d.threshold_rule)}</p>")
    if d.figures:
        parts.append('<h2>Scores</h2><div class="figs">')
        for caption, png in d.figures.items():
            parts.append(f'<figure><img alt="{e(caption)}" src="{data_uri(png, "image/png")}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Test images</h2>")
    parts.append('<p class="note">False negatives and false positives at the threshold first, then by '
                 'descending score. ' + e(d.map_note) + "</p>")
    parts.append('<table class="images"><tr><th>#</th><th>image</th><th>anomaly map</th><th>name</th>'
                 "<th>defect type</th><th>score</th><th>verdict</th><th>outcome</th></tr>")
    for i, r in enumerate(rows, 1):
        verdict = "-" if r.anomalous is None else ("anomalous" if r.anomalous else "normal")
        badge = r.outcome or "none"
        overlay = (f'<img alt="map" src="{data_uri(r.overlay, "image/jpeg")}">' if r.overlay is not None
                   else "-")
        cls = "image-row error" if r.outcome in ("FN", "FP") else "image-row"
        parts.append(
            f'<tr class="{cls}" data-outcome="{badge}"><td class="num">{i}</td>'
            f'<td><img alt="{e(r.name)}" src="{data_uri(r.thumb, "image/jpeg")}"></td><td>{overlay}</td>'
            f"<td>{e(r.name)}</td><td>{e(r.defect_type)}</td><td class=\"num\">{r.score:.6g}</td>"
            f'<td>{verdict}</td><td><span class="badge {badge}">{e(OUTCOMES[r.outcome])}</span></td></tr>')
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- pictures
def thumb_size(height: int, width: int, side: int = THUMB) -> tuple[int, int]:
    """(width, height) of a thumbnail of an ``height`` x ``width`` image: its long side ``side`` px, its
    aspect ratio kept."""
    scale = side / max(int(height), int(width), 1)
    return max(1, round(int(width) * scale)), max(1, round(int(height) * scale))


def own_part(image: np.ndarray, region, *maps):
    """``image`` cut to its own part ``region`` = (h, w), the top-left of a tiles run's canvas whose rest
    is mirrored padding, and each of ``maps`` (anomaly map, mask, or None) cut to the same part at its
    own resolution. Without a region, or for a region covering the whole canvas, as they are."""
    if region is None:
        return (image, *maps)
    H, W = np.asarray(image).shape[:2]
    h, w = min(int(region[0]), H), min(int(region[1]), W)
    if (h, w) == (H, W) or h <= 0 or w <= 0:
        return (image, *maps)
    out = [np.asarray(image)[:h, :w]]
    for m in maps:
        if m is None:
            out.append(None)
            continue
        mh, mw = np.asarray(m).shape[:2]
        out.append(np.asarray(m)[:max(1, round(h * mh / H)), :max(1, round(w * mw / W))])
    return tuple(out)


def jpeg(image: np.ndarray, side: int = THUMB, quality: int = 85) -> bytes:
    """An [H, W, 3] uint8 image as a JPEG whose long side is ``side`` pixels (aspect ratio kept)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    size = thumb_size(im.size[1], im.size[0], side)
    if im.size != size:
        im = im.resize(size, Image.LANCZOS if max(im.size) > side else Image.NEAREST)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def overlay(image: np.ndarray, amap: np.ndarray, vrange: tuple, mask: np.ndarray | None = None,
            side: int = THUMB, alpha: float = 0.55) -> bytes:
    """The anomaly map (inferno, shared scale ``vrange``) over the image, the mask outlined in cyan,
    long side ``side`` pixels, the map's aspect ratio kept (the outline is drawn after downscaling, so it
    stays visible)."""
    import matplotlib

    from PIL import Image

    lo, hi = vrange
    a = np.clip((np.asarray(amap, np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = (matplotlib.colormaps["inferno"](a)[..., :3] * 255).astype(np.float32)
    img = np.asarray(image, np.float32)
    if img.shape[:2] != heat.shape[:2]:
        img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize(heat.shape[1::-1]), np.float32)
    mixed = Image.fromarray(((1 - alpha) * img + alpha * heat).clip(0, 255).astype(np.uint8))
    size = thumb_size(heat.shape[0], heat.shape[1], side)
    mixed = np.asarray(mixed.resize(size, Image.LANCZOS)).copy()
    if mask is not None and np.any(mask):
        small = np.asarray(Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).resize(
            size, Image.NEAREST)) > 0
        mixed[_outline(small)] = (0, 255, 255)
    return jpeg(mixed, side)


def figure_png(fig, dpi: int = 80) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- gathering
def _image_name(path: str, defect_type: str) -> str:
    return f"{defect_type}/{Path(str(path)).name}"


def gather(run_dir: str | Path, thumb: int = THUMB, data_dir: str | None = None,
           eval_dir: str | Path | None = None) -> ReportData:
    """Everything the report shows, read from an evaluated run folder (``evaluate.py RUN`` first).

    ``eval_dir``: where the evaluation files are (``evaluate.py RUN --out DIR``; default: the run folder);
    the configuration, the threshold and the weights are the run folder's. Maps: ``pixel_maps.npz`` of the
    evaluation when it covers the same test images, else the run's model computes ``|x - G(E(x))|`` now.
    """
    import pandas as pd

    from cbigan.data.pipeline import load_test_set
    from cbigan.core.errors import EvaluationError
    from cbigan.reporting.figures import ScoreSet, hist_figure, map_range, roc_figure
    from cbigan.core.results import ImageResults

    run_dir = Path(run_dir)
    ev_dir = run_dir if eval_dir is None else Path(eval_dir)
    cfg = read_config(run_dir)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    scores_path = ev_dir / SCORES_CSV
    if not scores_path.is_file():
        raise EvaluationError(f"{run_dir} is not evaluated yet; run: python evaluate.py {run_dir}")
    scores = pd.read_csv(scores_path)
    summary = read_summary(run_dir) or {}
    thr = calibrated_threshold(run_dir)
    evaluation_lambda = None
    try:
        from cbigan.core.runfolder import read_evaluation

        evaluation_lambda = float(read_evaluation(ev_dir)["score_lambda"])
    except (EvaluationError, KeyError, TypeError, ValueError):
        evaluation_lambda = float(cfg.score_lambda)
    threshold = None
    if thr is not None and math.isclose(float(thr["score_lambda"]), evaluation_lambda):
        threshold = float(thr["threshold"])
    notes = [describe_rule(cfg.image_score, bool(cfg.global_views), fusion_stats(cfg))]
    if thr is not None and threshold is None:
        notes.append(f"the threshold was calibrated for lambda {thr['score_lambda']:g} but the scores use "
                     f"{evaluation_lambda:g}: no verdicts")
    if summary.get("selected_on_test"):
        notes.append("WARNING: this model was selected with test labels (--select-on-test): its test "
                     "metrics are optimistic")

    metrics_columns, metrics_rows = [], []
    if (ev_dir / METRICS_CSV).is_file():
        m = pd.read_csv(ev_dir / METRICS_CSV)
        metrics_columns = list(m.columns)
        metrics_rows = [[(v.item() if hasattr(v, "item") else v) for v in row] for row in m.itertuples(index=False)]

    labels = scores["label"].to_numpy().astype(int)
    values = scores["score"].to_numpy(np.float64)
    types = scores["defect_type"].astype(str).tolist()
    sset = ScoreSet(f"{cfg.category}/{run_dir.name}", labels, values, types, threshold)
    figures = {"ROC curve (the dot: the calibrated threshold)": figure_png(roc_figure([sset], title="ROC")),
               "score histogram (dashed: the calibrated threshold)": figure_png(hist_figure([sset], title=""))}

    from cbigan.data.pipeline import DataError

    try:
        test = load_test_set(cfg, skip_bad=True)
    except DataError as e:
        raise EvaluationError(f"report of {run_dir}: {e}") from None
    index = {_image_name(p, t): i for i, (p, t) in enumerate(zip(test.paths, test.defect_types))}
    order = [index.get(_image_name(p, t)) for p, t in zip(scores["path"], types)]
    missing = sum(i is None for i in order)
    if missing:
        notes.append(f"{missing} scored image(s) are no longer in the test folder: shown without pictures")

    maps, masks, map_note = None, test.masks, ""
    if (ev_dir / PIXEL_NPZ).is_file():
        try:
            px = ImageResults.load_maps(ev_dir / PIXEL_NPZ, global_weight(cfg), fusion_stats(cfg))
            if [_image_name(p, Path(str(p)).parent.name) for p in px.paths] == \
                    [_image_name(p, Path(str(p)).parent.name) for p in test.paths]:
                maps, masks = px.maps(evaluation_lambda), px.masks
                map_note = (f"Anomaly maps of the evaluation (lambda {evaluation_lambda:g}, sigma {px.sigma:g}), "
                            f"mask outlines in cyan.")
        except (OSError, ValueError, KeyError):
            maps = None
    if maps is None and len(test.images):
        from cbigan.reporting.plots import RunFolderView

        _, diffs, _ = RunFolderView(run_dir, data_dir=data_dir).reconstruct(test.images)
        maps = diffs
        map_note = ("Maps: |x - G(E(x))| (channel mean) of the model"
                    + (", mask outlines in cyan." if masks is not None else "; the category has no masks."))
    regions = test.regions if test.regions is not None and len(test.regions) == len(test.images) else None
    if maps is not None and regions is not None:  # each map cut to its image's own part (tiles)
        maps = [own_part(img, reg, m)[1] for img, reg, m in zip(test.images, regions, maps)]
    vrange = map_range(list(maps)) if maps is not None and len(maps) else (0.0, 1.0)

    rows = []
    blank = jpeg(np.full((thumb, thumb, 3), 200, np.uint8), thumb)
    for k, i in enumerate(order):
        s = float(values[k])
        anomalous = None if threshold is None else bool(s > threshold)
        if i is None:
            rows.append(ImageRow(_image_name(scores["path"][k], types[k]), types[k], int(labels[k]), s,
                                 anomalous, blank))
            continue
        mask = masks[i] if masks is not None and types[k] != GOOD else None
        image, mask = own_part(test.images[i], None if regions is None else regions[i], mask)
        rows.append(ImageRow(_image_name(test.paths[i], test.defect_types[i]), types[k], int(labels[k]), s,
                             anomalous, jpeg(image, thumb),
                             overlay(image, maps[i], vrange, mask, thumb) if maps is not None else None))

    config = [(f, getattr(cfg, f)) for f in CONFIG_FIELDS if hasattr(cfg, f)]
    selection = [(f, summary[f]) for f in SUMMARY_FIELDS if f in summary]
    return ReportData(
        title=f"{cfg.category} / {run_dir.name}: inspection report", config=config, selection=selection,
        metrics_columns=metrics_columns, metrics_rows=metrics_rows, threshold=threshold,
        threshold_rule=(thr or {}).get("rule", ""), score_lambda=evaluation_lambda, figures=figures,
        images=rows, map_note=map_note, notes=notes)


def write_report(run_dir: str | Path, thumb: int = THUMB, data_dir: str | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Gather and render the report of an evaluated run into ``report.html`` beside its evaluation files:
    ``out_dir`` (``evaluate.py RUN --out DIR``), else the run folder."""
    out = Path(run_dir if out_dir is None else out_dir)
    return write_text_atomic(out / REPORT_HTML, render_html(gather(run_dir, thumb, data_dir, eval_dir=out)))
