"""Figure builders: pure functions from arrays and tables to matplotlib figures (headless, Agg).

Nothing here reads a run folder or touches TensorFlow: :mod:`cbigan.reporting.plots` gathers the data (logs,
scores, reconstructions) and calls these. Every builder returns a :class:`matplotlib.figure.Figure`
of a fixed size in inches (no ``bbox_inches="tight"``), so a figure saved at ``dpi`` is exactly
``size * dpi`` pixels; the ``*_size`` helpers say what that size is.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

DIFF_CMAP = "inferno"
MASK_ON_INPUT = "red"      # as the red boxes of the paper's Fig. 5
MASK_ON_DIFF = "cyan"      # visible on the inferno colour map
ANOMALOUS = "crimson"
GOOD_COLOR, DEFECT_COLOR = "tab:blue", "tab:orange"


def to_display(x) -> np.ndarray:
    """[-1, 1] floats -> [0, 1] floats for imshow."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------- recon grid
@dataclass
class ReconPanel:
    """One run's output for one test image."""

    reconstruction: np.ndarray          # [S, S, 3] floats in [-1, 1]
    diff: np.ndarray                    # [S, S] channel mean of |x - G(E(x))|
    score: float
    anomalous: bool | None = None       # score > the run's calibrated threshold (None: no threshold)
    patch_box: tuple | None = None      # (y, x, side) of the highest-scoring patch (textures)


@dataclass
class ReconRow:
    """One test image and what each compared run made of it."""

    image: np.ndarray                   # [S, S, 3] uint8
    defect_type: str
    name: str
    mask: np.ndarray | None = None      # [S, S] in {0, 1}, None when there is no ground truth
    panels: list = field(default_factory=list)


# Layout of the recon grid, in inches.
PANEL = 1.9          # side of one image
PANEL_TITLE = 0.3    # room above each image for its title
GAP = 0.08           # between the two columns of one run
GROUP_GAP = 0.3      # before each run's pair of columns
LEFT, BOTTOM = 0.12, 0.36
HEADER = 0.85        # figure title and column headers
COLORBAR = 0.95      # colour bar and its label, right of the grid


def recon_size(n_rows: int, n_runs: int = 1) -> tuple[float, float]:
    """(width, height) in inches of :func:`recon_figure` with ``n_rows`` images and ``n_runs`` runs."""
    n_cols = 1 + 2 * n_runs
    width = LEFT + n_cols * PANEL + n_runs * (GAP + GROUP_GAP) + COLORBAR
    height = HEADER + n_rows * (PANEL + PANEL_TITLE) + BOTTOM
    return width, height


def _column_x(n_runs: int) -> list[float]:
    """Left edge (inches) of every image column: input, then (reconstruction, difference) per run."""
    xs = [LEFT]
    x = LEFT + PANEL
    for _ in range(n_runs):
        x += GROUP_GAP
        xs.append(x)
        x += PANEL + GAP
        xs.append(x)
        x += PANEL
    return xs


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_linewidth(0.5)


def _outline(ax, mask, color):
    """The mask's outline, with a thin dark halo so that it shows on any background."""
    if mask is not None and np.any(mask):
        cs = ax.contour(np.asarray(mask, np.float32), levels=[0.5], colors=color, linewidths=1.1)
        cs.set_path_effects([patheffects.withStroke(linewidth=2.2, foreground="black", alpha=0.6)])


def _panel_grid(fig, xs, width, height, bottom, n_rows):
    """``axes_at(col, row)``: a square panel at column x ``xs[col]``, rows from the top (inches)."""
    def axes_at(col: int, row: int):
        y = bottom + (n_rows - 1 - row) * (PANEL + PANEL_TITLE)
        return fig.add_axes((xs[col] / width, y / height, PANEL / width, PANEL / height))

    return axes_at


def _input_panel(ax, row):
    """The input image with its ground-truth outline, titled with its type and name."""
    ax.imshow(row.image)
    _outline(ax, row.mask, MASK_ON_INPUT)
    _bare(ax)
    ax.set_title(_short(f"{row.defect_type} · {row.name}", 30), fontsize=8)


def recon_figure(rows: list[ReconRow], run_labels: list[str], title: str = "",
                 diff_max: float | None = None, note: str = ""):
    """The grid of the paper's Figs. 4 and 5: input | reconstruction, difference (per run).

    One row per test image. The input shows the ground-truth mask outline (red) when there is one; each
    difference map shares one colour scale (``diff_max``, default the 99.5th percentile of all maps
    shown) so rows and runs compare fairly, with the mask outline (cyan) and, for textures, the
    highest-scoring patch (dashed white box) whose score is the image score. The score is each
    reconstruction's title, in red when above the run's calibrated threshold.
    """
    n_runs = len(run_labels)
    width, height = recon_size(len(rows), n_runs)
    fig = plt.figure(figsize=(width, height))
    if diff_max is None:
        all_diffs = [np.ravel(p.diff) for r in rows for p in r.panels]
        diff_max = float(np.percentile(np.concatenate(all_diffs), 99.5)) if all_diffs else 1.0
    diff_max = max(diff_max, 1e-6)
    xs = _column_x(n_runs)

    axes_at = _panel_grid(fig, xs, width, height, BOTTOM, len(rows))
    image_handle = None
    for r, row in enumerate(rows):
        _input_panel(axes_at(0, r), row)
        for k, panel in enumerate(row.panels):
            ax = axes_at(1 + 2 * k, r)
            ax.imshow(to_display(panel.reconstruction))
            _bare(ax)
            text = f"score {panel.score:.4g}"
            if panel.anomalous is not None:
                text += " · anomalous" if panel.anomalous else " · normal"
            ax.set_title(text, fontsize=8, color=ANOMALOUS if panel.anomalous else "black")
            ax = axes_at(2 + 2 * k, r)
            image_handle = ax.imshow(panel.diff, cmap=DIFF_CMAP, vmin=0.0, vmax=diff_max)
            if row.mask is not None and np.shape(row.mask) == np.shape(panel.diff):
                _outline(ax, row.mask, MASK_ON_DIFF)
            if panel.patch_box is not None:
                y, x, side = panel.patch_box
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), side, side, fill=False, ec="white",
                                       ls="--", lw=1.0))
            _bare(ax)

    # column headers: input, then one labelled pair per run
    top = (BOTTOM + len(rows) * (PANEL + PANEL_TITLE)) / height
    fig.text((xs[0] + PANEL / 2) / width, top + 0.06 / height, "input", ha="center", va="bottom",
             fontsize=9)
    for k, label in enumerate(run_labels):
        x_rec, x_diff = xs[1 + 2 * k], xs[2 + 2 * k]
        fig.text((x_rec + PANEL / 2) / width, top + 0.06 / height, "reconstruction G(E(x))",
                 ha="center", va="bottom", fontsize=9)
        fig.text((x_diff + PANEL / 2) / width, top + 0.06 / height, "|x − G(E(x))|", ha="center",
                 va="bottom", fontsize=9)
        fig.text((x_rec + PANEL + GAP / 2) / width, top + 0.3 / height, _short(label, 48),
                 ha="center", va="bottom", fontsize=9.5, fontweight="bold")
    if title:
        fig.text(0.5, 1 - 0.06 / height, title, ha="center", va="top", fontsize=11)
    _footnote_and_colorbar(fig, note, image_handle, len(rows), xs, width, height, BOTTOM,
                           "mean |x − G(E(x))| over RGB\n(pixels in [−1, 1])")
    return fig


def _footnote_and_colorbar(fig, note, handle, n_rows, xs, width, height, bottom, label):
    """Grey footnote along the bottom, and a colour bar right of the last column spanning <= 2 rows
    (sizes in inches, the panel grid of :func:`recon_figure` and :func:`maps_figure`)."""
    if note:
        note = textwrap.fill(note, width=max(40, int((width - 2 * LEFT) * 17)))
        fig.text(LEFT / width, 0.03 / height, note, ha="left", va="bottom", fontsize=7, color="0.35")
    if handle is not None:
        rows_spanned = min(n_rows, 2)
        cb_h = rows_spanned * (PANEL + PANEL_TITLE) - PANEL_TITLE
        y0 = bottom + (n_rows - rows_spanned) * (PANEL + PANEL_TITLE)
        x0 = xs[-1] + PANEL + 0.12
        cax = fig.add_axes((x0 / width, y0 / height, 0.12 / width, cb_h / height))
        cb = fig.colorbar(handle, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(label, fontsize=7)


# ---------------------------------------------------------------------------------- curves
CURVES_SIZE = (12.0, 8.0)

#: Panels of the training-curve figure: (title, [(column, legend label)]).
CURVE_PANELS = (
    ("adversarial losses", [("loss_d", "L_D critic (incl. GP)"), ("loss_eg", "L_EG adversarial"),
                            ("loss_total", "E,G total (1−α)L_EG + αL_C"), ("gp", "gradient penalty")]),
    ("consistency losses", [("loss_c", "L_C = L_Rx + L_Rz"), ("loss_rx", "L_Rx = |x − G(E(x))|"),
                            ("loss_rz", "L_Rz = |z − E(G(z))|")]),
    ("critic scores", [("d_real", "D(x, E(x)) real"), ("d_fake", "D(G(z), z) fake")]),
)


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average with a span of ``n`` points (NaNs kept out)."""
    out = np.empty_like(y, dtype=np.float64)
    a, s = 2.0 / (n + 1.0), np.nan
    for i, v in enumerate(y):
        if np.isfinite(v):
            s = v if not np.isfinite(s) else a * v + (1 - a) * s
        out[i] = s
    return out


def wants_symlog(values) -> float | None:
    """The linear threshold for a symmetric-log axis when ``values`` span > 2 orders of magnitude."""
    v = np.abs(np.asarray(values, np.float64).ravel())
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return None
    hi, lo = float(v.max()), float(np.percentile(v, 5))
    if hi / lo <= 100.0:
        return None
    return max(lo, hi * 1e-3)


#: Losses one kind of update reports. A logging window with no update of that kind (when
#: ``log_every`` is shorter than the critic/E-G cycle of ``d_iter + 1`` steps) logs them all as exactly 0.
UPDATE_GROUPS = (("loss_d", "gp", "d_real", "d_fake"),
                 ("loss_eg", "loss_c", "loss_rx", "loss_rz", "loss_total"))


def drop_idle_rows(table) -> dict:
    """Columns as float arrays, with NaN where a window had no update of that kind (all exactly 0)."""
    out = {k: np.asarray(table[k], np.float64) for k in table.keys()}
    for group in UPDATE_GROUPS:
        cols = [c for c in group if c in out]
        if cols:
            idle = np.all([out[c] == 0.0 for c in cols], axis=0)
            for c in cols:
                out[c] = np.where(idle, np.nan, out[c])
    return out


def _symlog(ax, lin: float):
    """Symmetric-log y axis, linear within +-``lin``; ticks at 0 and at the powers of ten beyond it
    (none inside the squeezed linear region, where their labels would overlap)."""
    ax.set_yscale("symlog", linthresh=lin)
    lo, hi = ax.get_ylim()
    top = max(abs(lo), abs(hi))
    ks = range(int(np.ceil(np.log10(lin))) + 1, int(np.floor(np.log10(top))) + 1) if top > lin else []
    ticks = [0.0] + [sign * 10.0 ** k for k in ks for sign in (1, -1) if lo <= sign * 10.0 ** k <= hi]
    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("symmetric log scale", fontsize=8)


def _plot_series(ax, steps, columns, table):
    plotted = []
    smooth_n = max(1, len(steps) // 40)
    for i, (col, label) in enumerate(columns):
        if col not in table:
            continue
        y = np.asarray(table[col], np.float64)
        if not np.any(np.isfinite(y)):
            continue
        keep = np.isfinite(y)
        x, y = np.asarray(steps)[keep], y[keep]
        color = f"C{i}"
        if smooth_n > 1:
            ax.plot(x, y, color=color, alpha=0.25, lw=0.7)
            ax.plot(x, _smooth(y, smooth_n), color=color, lw=1.4, label=label)
        else:
            ax.plot(x, y, color=color, lw=1.4, marker="o" if len(y) < 20 else None, ms=3,
                    label=label)
        plotted.append(y)
    if plotted:
        values = np.concatenate(plotted)
        lin = wants_symlog(values)
        if lin is not None and np.all(values[np.isfinite(values)] > 0):
            ax.set_yscale("log")
            ax.set_ylabel("log scale", fontsize=8)
        elif lin is not None:
            _symlog(ax, lin)
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                color="0.5")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plotted


def curves_figure(train_log, eval_log=None, title: str = ""):
    """2x2 panels from ``train_log.csv`` / ``eval_log.csv`` tables (pandas DataFrames or dicts).

    Losses and critic scores over steps (raw values faint, a moving average on top when there are
    many rows; a log y axis where a panel spans orders of magnitude, symmetric-log where it also
    holds values <= 0; windows without an
    update of a kind left out, see :func:`drop_idle_rows`), and the monitoring
    metrics (test auROC and max balanced accuracy; mean held-out score on a log axis at the right).
    """
    fig, axes = plt.subplots(2, 2, figsize=CURVES_SIZE, layout="constrained")
    train_log = drop_idle_rows(train_log) if train_log is not None else None
    steps = train_log.get("step") if train_log is not None else None
    for ax, (name, cols) in zip(axes.flat[:3], CURVE_PANELS):
        ax.set_title(name)
        if steps is None or not len(steps):
            ax.text(0.5, 0.5, "no train_log.csv", ha="center", va="center", transform=ax.transAxes)
            continue
        _plot_series(ax, steps, cols, train_log)
    if steps is not None and len(steps) and {"d_real", "d_fake"} <= set(train_log.keys()):
        ax = axes.flat[2]
        gap = train_log["d_real"] - train_log["d_fake"]
        keep = np.isfinite(gap)
        ax.plot(steps[keep], _smooth(gap[keep], max(1, len(steps) // 40)), color="k", lw=1.0, ls="--",
                label="real − fake (Wasserstein estimate)")
        ax.legend(fontsize=8, loc="best")

    ax = axes.flat[3]
    ax.set_title("monitoring (test labels: never used for model selection by default)", fontsize=10)
    if eval_log is None or "step" not in eval_log or not len(eval_log["step"]):
        ax.text(0.5, 0.5, "no eval_log.csv", ha="center", va="center", transform=ax.transAxes)
    else:
        es = np.asarray(eval_log["step"])
        marker = "o" if len(es) < 30 else None
        for col, label, color in (("test_auroc", "test auROC", "C0"),
                                  ("test_max_balanced_accuracy", "test max balanced accuracy", "C1")):
            if col in eval_log:  # rows without monitoring (--monitor-every) are empty: left out
                ys = np.asarray(eval_log[col], np.float64)
                ax.plot(es[np.isfinite(ys)], ys[np.isfinite(ys)], color=color, marker=marker, ms=3, label=label)
        ax.set_ylim(0.0, 1.02)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_ylabel("metric")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if "val_score_mean" in eval_log:
            v = np.asarray(eval_log["val_score_mean"], np.float64)
            if np.any(np.isfinite(v)):
                ax2 = ax.twinx()
                ax2.plot(es, v, color="C2", marker=marker, ms=3, ls="--")
                if np.nanmin(v) > 0 and np.nanmax(v) / np.nanmin(v) > 10:
                    ax2.set_yscale("log")
                else:
                    ax2.ticklabel_format(axis="y", style="plain", useOffset=False)
                ax2.set_ylabel("mean score of held-out good images", color="C2")
                ax2.tick_params(axis="y", colors="C2")
                handles += ax2.get_lines()[:1]
                labels += ["held-out mean score (right)"]
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------- ROC
ROC_SIZE = (6.0, 6.0)


@dataclass
class ScoreSet:
    """The test scores of one run, for ROC curves and histograms."""

    name: str
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list | None = None
    threshold: float | None = None


def roc_figure(sets: list[ScoreSet], title: str = "ROC"):
    """One ROC curve per run (auROC in the legend); a dot marks each calibrated threshold."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=ROC_SIZE, layout="constrained")
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="chance")
    cmap = plt.get_cmap("tab10" if len(sets) <= 10 else "tab20")
    for i, s in enumerate(sets):
        labels, scores = np.asarray(s.labels).astype(int), np.asarray(s.scores, np.float64)
        color = cmap(i % cmap.N)
        if len(set(labels.tolist())) < 2:
            ax.plot([], [], color=color, label=f"{s.name} (one class only: no curve)")
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc_score(labels, scores)
        ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{s.name} (auROC {auc:.3f})")
        if s.threshold is not None:
            pred = scores > s.threshold
            ax.plot(np.mean(pred[labels == 0]), np.mean(pred[labels == 1]), "o", color=color,
                    mec="black", ms=6)
    if any(s.threshold is not None for s in sets):
        ax.plot([], [], "o", color="white", mec="black", label="at the calibrated threshold")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (good images flagged)")
    ax.set_ylabel("true positive rate (defective images flagged)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8 if len(sets) <= 8 else 6, loc="lower right")
    ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------- histograms
HIST_PANEL = (5.0, 3.6)


def hist_size(n_sets: int) -> tuple[float, float]:
    cols = min(n_sets, 3)
    rows = -(-n_sets // cols)
    return HIST_PANEL[0] * cols, HIST_PANEL[1] * rows


def hist_figure(sets: list[ScoreSet], by_type: bool = False, title: str = ""):
    """Score histograms of good vs defective test images, one panel per run.

    Bins are shared by both classes (log-spaced when the scores span > 2 orders of magnitude); the
    calibrated threshold is a dashed line when the run has one. ``by_type`` stacks the defective
    images by defect type.
    """
    n = max(1, len(sets))
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=hist_size(n), layout="constrained", squeeze=False)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, sets):
        labels = np.asarray(s.labels).astype(int)
        scores = np.asarray(s.scores, np.float64)
        finite = scores[np.isfinite(scores)]
        if not len(finite):
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(s.name, fontsize=9)
            continue
        lo, hi = float(finite.min()), float(finite.max())
        if s.threshold is not None:
            lo, hi = min(lo, s.threshold), max(hi, s.threshold)
        log = lo > 0 and hi / lo > 100
        n_bins = int(np.clip(np.sqrt(len(finite)) * 2, 10, 60))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
        good = scores[labels == 0]
        ax.hist(good, bins=bins, color=GOOD_COLOR, alpha=0.55, label=f"good (n={len(good)})")
        if by_type and s.defect_types is not None:
            types = np.asarray(s.defect_types)
            names = sorted(set(types[labels == 1].tolist()))
            data = [scores[(labels == 1) & (types == t)] for t in names]
            if data:
                ax.hist(data, bins=bins, stacked=True, alpha=0.7,  # C0 (blue) is good's
                        color=[f"C{1 + i % 9}" for i in range(len(names))],
                        label=[f"{t} (n={len(d)})" for t, d in zip(names, data)])
        else:
            bad = scores[labels == 1]
            ax.hist(bad, bins=bins, color=DEFECT_COLOR, alpha=0.55, label=f"defective (n={len(bad)})")
        if s.threshold is not None:
            ax.axvline(s.threshold, color="k", ls="--", lw=1.2,
                       label=f"calibrated threshold {s.threshold:.4g}")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("anomaly score A(x)")
        ax.set_ylabel("test images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        subtitle = s.name
        if len(set(labels.tolist())) == 2:
            from sklearn.metrics import roc_auc_score

            subtitle += f"  (auROC {roc_auc_score(labels, scores):.3f})"
        ax.set_title(subtitle, fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------- anomaly maps
@dataclass
class MapRow:
    """One test image and its anomaly map (:mod:`cbigan.scoring.localization`), both at the same size."""

    image: np.ndarray                   # [H, W, 3] uint8
    amap: np.ndarray                    # [H, W] float
    defect_type: str
    name: str
    score: float
    mask: np.ndarray | None = None      # [H, W] in {0, 1}; None when there is no ground truth
    anomalous: bool | None = None       # image score > the calibrated threshold (None: no threshold)


MAP_COLUMNS = ("input", "anomaly map", "map over input")
MAPS_BOTTOM = 0.62   # room for a three-line note under the grid


def maps_size(n_rows: int) -> tuple[float, float]:
    """(width, height) in inches of :func:`maps_figure` with ``n_rows`` images."""
    width = LEFT + 3 * PANEL + 2 * GROUP_GAP + COLORBAR
    height = HEADER + n_rows * (PANEL + PANEL_TITLE) + MAPS_BOTTOM
    return width, height


def map_range(maps, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    """A shared colour scale for maps: the ``lo`` and ``hi`` percentiles of all their pixels."""
    values = np.concatenate([np.ravel(m) for m in maps]) if len(maps) else np.zeros(1)
    vmin, vmax = (float(v) for v in np.percentile(values, [lo, hi]))
    return vmin, max(vmax, vmin + 1e-6)


def maps_figure(rows: list[MapRow], title: str = "", note: str = "", vrange: tuple | None = None,
                colorbar_label: str = "anomaly map value\n(see the note below)"):
    """Anomaly maps over images: input (red: ground-truth outline) | map (cyan outline) | overlay.

    One row per test image; every map shares one colour scale (``vrange``, default the 1st to 99.5th
    percentile of all maps shown). The overlay blends the map into the input, more opaque where the map
    is higher. Titles: the image's type and name, and its image score (red when above the threshold).
    """
    width, height = maps_size(len(rows))
    fig = plt.figure(figsize=(width, height))
    vmin, vmax = vrange if vrange is not None else map_range([r.amap for r in rows])
    xs = [LEFT + k * (PANEL + GROUP_GAP) for k in range(3)]
    cmap = plt.get_cmap(DIFF_CMAP)

    axes_at = _panel_grid(fig, xs, width, height, MAPS_BOTTOM, len(rows))
    handle = None
    for r, row in enumerate(rows):
        _input_panel(axes_at(0, r), row)
        ax = axes_at(1, r)
        handle = ax.imshow(row.amap, cmap=DIFF_CMAP, vmin=vmin, vmax=vmax)
        _outline(ax, row.mask, MASK_ON_DIFF)
        _bare(ax)
        text = f"score {row.score:.4g}"
        if row.anomalous is not None:
            text += " · anomalous" if row.anomalous else " · normal"
        ax.set_title(text, fontsize=8, color=ANOMALOUS if row.anomalous else "black")
        ax = axes_at(2, r)
        level = np.clip((np.asarray(row.amap, np.float32) - vmin) / (vmax - vmin), 0.0, 1.0)
        heat = cmap(level)[..., :3]
        alpha = (0.15 + 0.6 * level)[..., None]
        base = np.asarray(row.image, np.float32) / 255.0
        ax.imshow(np.clip((1 - alpha) * base + alpha * heat, 0.0, 1.0))
        _outline(ax, row.mask, MASK_ON_INPUT)
        _bare(ax)

    top = (MAPS_BOTTOM + len(rows) * (PANEL + PANEL_TITLE)) / height
    for x, name in zip(xs, MAP_COLUMNS):
        fig.text((x + PANEL / 2) / width, top + 0.06 / height, name, ha="center", va="bottom", fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.06 / height, textwrap.fill(title, 90), ha="center", va="top", fontsize=10)
    _footnote_and_colorbar(fig, note, handle, len(rows), xs, width, height, MAPS_BOTTOM, colorbar_label)
    return fig
