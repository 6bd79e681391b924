"""The paper's Tables II (max balanced accuracy) and III (auROC) with our runs beside the published rows.

Columns follow the paper: the textures (carpet, grid, leather, tile, wood) and their mean, the objects
(bottle ... zipper) and their mean, and the overall mean over all categories (the paper's overall mean
is the mean of the 15 categories, not the mean of the two group means). One row per method of ours,
built from the newest evaluated run (``evaluation.json``, written by :mod:`cbigan.reporting.evaluation`) of every
category with that method label, and below them the published rows, kept as data in
``results/published/`` (one CSV per table, with the source of every row).

A category a row lacks is left empty; means are then taken over the categories present only, and the
table says so (``(k/n)`` beside the mean in the printed and Markdown tables, ``n_textures`` and
``n_objects`` columns and a ``note`` in the CSV).

Beyond the paper: when evaluated runs have pixel-level metrics (categories with ground-truth masks, see
:mod:`cbigan.scoring.pixel_metrics`), two more tables are written, pixel auROC and AUPRO, with no published rows;
categories outside MVTec AD (e.g. ``magnetic_tile``) are extra columns there, right of the means (which
stay over MVTec AD categories only), and columns no run has are left out of the printed/Markdown tables.

This module needs only pandas: no TensorFlow import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cbigan.core.config import OBJECTS, TEXTURES
from cbigan.core.errors import EvaluationError
from cbigan.core.kinds import KINDS
from cbigan.core.runfolder import EVALUATION_JSON, is_run_dir, read_evaluation, write_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_DIR = REPO / "results" / "published"
CATEGORY_COLUMNS = [*TEXTURES, *OBJECTS]
MEAN_COLUMNS = ["textures_mean", "objects_mean", "overall_mean"]
#: The paper's column order.
COLUMNS = [*TEXTURES, "textures_mean", *OBJECTS, "objects_mean", "overall_mean"]
HEADERS = {"textures_mean": "textures mean", "objects_mean": "objects mean", "overall_mean": "overall mean"}


@dataclass(frozen=True)
class TableSpec:
    key: str          # "table2" / "table3"
    metric: str       # column of evaluation.json
    stem: str         # file name of the published CSV and of the outputs
    title: str


TABLES = {
    "table2": TableSpec("table2", "max_balanced_accuracy", "table2_max_balanced_accuracy",
                        "Table II: maximum balanced accuracy (TPR + TNR) / 2 over thresholds"),
    "table3": TableSpec("table3", "auroc", "table3_auroc", "Table III: area under the ROC curve (auROC)"),
}
#: Localization tables (beyond the paper: no published rows), written when runs have pixel metrics.
PIXEL_TABLES = {
    "pixel_auroc": TableSpec("pixel_auroc", "pixel_auroc", "pixel_auroc",
                             "Pixel-level auROC (beyond the paper)"),
    "aupro": TableSpec("aupro", "aupro", "aupro",
                       "AUPRO: per-region overlap up to FPR 0.3, normalised (beyond the paper)"),
}
#: Image-level tables of the categories outside the paper's (any folder in the MVTec AD layout: a
#: magnetic tile, a user's own parts), our rows only; written when such runs exist.
OTHER_TABLES = {
    "other_auroc": TableSpec("other_auroc", "auroc", "other_auroc",
                             "Image auROC, categories outside the paper's tables"),
    "other_mba": TableSpec("other_mba", "max_balanced_accuracy", "other_max_balanced_accuracy",
                           "Image max balanced accuracy, categories outside the paper's tables"),
}
#: Non-value columns of a built table.
META_COLUMNS = ("method", "source", "group", "n_textures", "n_objects", "note", "runs")


# ---------------------------------------------------------------------------------- collecting runs
def _has_map_stride(kind_name) -> bool:
    """Whether an evaluation's input kind (its ``kind`` field) has a map stride; False if unknown."""
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    return kind is not None and kind.has_map_stride


def _evaluation_files(root: Path) -> list[Path]:
    root = Path(root)
    if (root / EVALUATION_JSON).is_file():
        return [root / EVALUATION_JSON]
    return sorted(p for p in root.rglob(EVALUATION_JSON) if len(p.relative_to(root).parts) <= 4)


def collect_evaluations(roots) -> pd.DataFrame:
    """Every evaluated run under ``roots`` (run folders or folders holding runs), one row each."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    rows = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise EvaluationError(f"{root} does not exist; pass the folder that holds your runs (runs/)")
        for path in _evaluation_files(root):
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a half-written or foreign file: not an evaluated run
            if not isinstance(s, dict) or "category" not in s or "auroc" not in s:
                continue
            rows.append({
                "method": s.get("method_label") or s.get("method") or "?",
                "category": s["category"],
                "run": s.get("run", path.parent.name),
                "run_dir": str(path.parent),
                "evaluated_at": s.get("evaluated_at") or "",
                "auroc": s.get("auroc"),
                "max_balanced_accuracy": s.get("max_balanced_accuracy"),
                "select_on_test": bool(s.get("select_on_test", False)),
                "score_lambda": s.get("score_lambda"),
                "pixel_auroc": s.get("pixel_auroc"),
                "aupro": s.get("aupro"),
                "pixel_sigma": (s.get("pixel") or {}).get("sigma"),
                "pixel_stride": (s.get("pixel") or {}).get("stride") if _has_map_stride(s.get("kind")) else None,
                "mtime": path.stat().st_mtime,
            })
    cols = ["method", "category", "run", "run_dir", "evaluated_at", "auroc", "max_balanced_accuracy",
            "select_on_test", "score_lambda", "pixel_auroc", "aupro", "pixel_sigma", "pixel_stride", "mtime"]
    return pd.DataFrame(rows, columns=cols)


def newest(evals: pd.DataFrame, by=("method", "category")) -> pd.DataFrame:
    """The newest evaluation of every ``by`` group (evaluation time, then file time)."""
    if evals.empty:
        return evals
    order = evals.sort_values(["evaluated_at", "mtime"], kind="stable")
    return order.drop_duplicates(list(by), keep="last").reset_index(drop=True)


# ---------------------------------------------------------------------------------- the tables
def add_means(df: pd.DataFrame) -> pd.DataFrame:
    """Group and overall means over the categories present in each row, with their counts."""
    df = df.copy()
    for c in CATEGORY_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    t = df[list(TEXTURES)].astype(float)
    o = df[list(OBJECTS)].astype(float)
    df["textures_mean"] = t.mean(axis=1, skipna=True)
    df["objects_mean"] = o.mean(axis=1, skipna=True)
    df["overall_mean"] = df[CATEGORY_COLUMNS].astype(float).mean(axis=1, skipna=True)
    df["n_textures"] = t.notna().sum(axis=1).astype(int)
    df["n_objects"] = o.notna().sum(axis=1).astype(int)
    df["note"] = [_means_note(nt, no) for nt, no in zip(df["n_textures"], df["n_objects"])]
    return df


def _means_note(nt: int, no: int) -> str:
    if nt == len(TEXTURES) and no == len(OBJECTS):
        return ""
    return (f"means over present categories only: {nt}/{len(TEXTURES)} textures, "
            f"{no}/{len(OBJECTS)} objects, {nt + no}/{len(CATEGORY_COLUMNS)} overall")


def our_rows(evals: pd.DataFrame, metric: str, extra_categories=()) -> pd.DataFrame:
    """One row per method label: the newest evaluated run of every category, means over present ones.

    ``extra_categories`` (not MVTec AD) become columns after the paper's, outside the means.
    """
    extra = [c for c in extra_categories if c not in CATEGORY_COLUMNS]
    cats = CATEGORY_COLUMNS + extra
    cols = ["method", "source", "group", *COLUMNS, *extra, "n_textures", "n_objects", "note", "runs"]
    ev = newest(evals[evals["category"].isin(cats)]) if not evals.empty else evals
    if ev.empty:
        return pd.DataFrame(columns=cols)
    wide = ev.pivot(index="method", columns="category", values=metric)
    wide = wide.reindex(columns=cats).astype(float)
    order = list(dict.fromkeys(ev.sort_values("evaluated_at")["method"]))
    wide = add_means(wide.reindex(order))
    runs = ev.assign(_cat=pd.Categorical(ev["category"], cats, ordered=True)) \
        .sort_values("_cat").groupby("method", sort=False)
    wide["runs"] = [", ".join(f"{r.category}: {r.run_dir}" for r in runs.get_group(m).itertuples())
                    for m in wide.index]
    wide["source"] = "this repository"
    wide["group"] = "ours"
    return wide.reset_index()[cols]


def load_published(spec: TableSpec, published_dir: str | Path = PUBLISHED_DIR) -> pd.DataFrame:
    """The paper's rows of ``spec``, with their printed means (not recomputed)."""
    path = Path(published_dir) / f"{spec.stem}.csv"
    if not path.is_file():
        raise EvaluationError(f"published table {path} is missing; restore results/published/ from git")
    df = pd.read_csv(path)
    missing = [c for c in ["method", "group", "source", *COLUMNS] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path} lacks the columns {missing}")
    df["n_textures"] = df[list(TEXTURES)].notna().sum(axis=1).astype(int)
    df["n_objects"] = df[list(OBJECTS)].notna().sum(axis=1).astype(int)
    df["note"] = ""
    df["runs"] = ""
    df["source"] = "paper: " + df["source"].astype(str)
    return df


def pixel_table(evals: pd.DataFrame, spec: TableSpec | str) -> pd.DataFrame:
    """A localization table: per method, the newest run of every category that has the pixel metric.

    The paper's columns, then any other category (e.g. ``magnetic_tile``); no published rows.
    """
    spec = PIXEL_TABLES[spec] if isinstance(spec, str) else spec
    if evals.empty or spec.metric not in evals.columns:
        return our_rows(evals.iloc[0:0], spec.metric)
    ev = evals[pd.to_numeric(evals[spec.metric], errors="coerce").notna()]
    extra = sorted(set(ev["category"]) - set(CATEGORY_COLUMNS))
    return our_rows(ev, spec.metric, extra)


def has_pixel_metrics(evals: pd.DataFrame) -> bool:
    return not evals.empty and any(
        c in evals.columns and pd.to_numeric(evals[c], errors="coerce").notna().any()
        for c in ("pixel_auroc", "aupro"))


def build_table(evals: pd.DataFrame, spec: TableSpec | str, published_dir: str | Path | None = PUBLISHED_DIR,
                ) -> pd.DataFrame:
    """Our rows first, then the published ones; the paper's column order."""
    if isinstance(spec, str) and spec in PIXEL_TABLES:
        return pixel_table(evals, spec)
    spec = TABLES[spec] if isinstance(spec, str) else spec
    ours = our_rows(evals, spec.metric)
    parts = [ours]
    if published_dir is not None:
        parts.append(load_published(spec, published_dir)[ours.columns])
    parts = [p for p in parts if not p.empty]
    if not parts:
        return ours
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------- rendering
def _cell(row, col: str, ours: bool) -> str:
    v = row[col]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    text = f"{float(v):.3f}" if ours else f"{float(v):.2f}"
    if col in MEAN_COLUMNS and ours:
        have = {"textures_mean": row["n_textures"], "objects_mean": row["n_objects"],
                "overall_mean": row["n_textures"] + row["n_objects"]}[col]
        total = {"textures_mean": len(TEXTURES), "objects_mean": len(OBJECTS),
                 "overall_mean": len(CATEGORY_COLUMNS)}[col]
        if have < total:
            text += f" ({have}/{total})"
    return text


def value_columns(table: pd.DataFrame, compact: bool = False) -> list[str]:
    """The paper's columns, then any extra category; ``compact``: only those some row has a value in
    (a group mean only when one of its categories is there)."""
    extra = [c for c in table.columns if c not in COLUMNS and c not in META_COLUMNS]
    cols = COLUMNS + extra
    if not compact:
        return cols
    present = {c for c in cols if c in table.columns
               and pd.to_numeric(table[c], errors="coerce").notna().any()}
    keep = [c for c in CATEGORY_COLUMNS + extra if c in present]
    means = {"textures_mean": any(c in present for c in TEXTURES),
             "objects_mean": any(c in present for c in OBJECTS),
             "overall_mean": any(c in present for c in CATEGORY_COLUMNS)}
    return [c for c in cols if c in keep or means.get(c, False)]


def display_frame(table: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """Strings for printing: method, source, then the paper's columns; empty for missing."""
    cols = value_columns(table, compact)
    rows = []
    for _, row in table.iterrows():
        ours = row["source"] == "this repository"
        out = {"method": row["method"], "source": "ours" if ours else "paper"}
        out.update({HEADERS.get(c, c): _cell(row, c, ours) for c in cols})
        rows.append(out)
    return pd.DataFrame(rows, columns=["method", "source", *[HEADERS.get(c, c) for c in cols]])


def footnotes(table: pd.DataFrame) -> list[str]:
    notes = []
    ours = table[table["source"] == "this repository"]
    if any(ours["note"].astype(bool)):
        notes.append("Means are over the categories present in each row only; (k/n) marks a mean over "
                     "k of n categories. Empty cells: no evaluated run.")
    for _, r in ours.iterrows():
        notes.append(f"{r['method']}: {r['runs']}")
    if ours["method"].str.contains("selected on test", regex=False).any():
        notes.append("[selected on test]: the model was chosen by its test auROC (--select-on-test), so "
                     "its test metrics are optimistic and not comparable with the published protocol.")
    srcs = sorted(set(table.loc[table["source"] != "this repository", "source"]))
    if srcs:
        notes.append("Published rows: " + "; ".join(s.removeprefix("paper: ") for s in srcs)
                     + " (results/published/).")
    return notes


def to_markdown(table: pd.DataFrame, title: str = "", compact: bool = False, notes=()) -> str:
    """A GitHub Markdown table (no extra dependency) with its footnotes (and ``notes`` after them)."""
    disp = display_frame(table, compact)
    lines = [f"### {title}", ""] if title else []
    header = list(disp.columns)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for _, r in disp.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r.tolist()) + " |")
    notes = footnotes(table) + list(notes)
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def to_text(table: pd.DataFrame, title: str = "", compact: bool = False, notes=()) -> str:
    disp = display_frame(table, compact)
    body = disp.to_string(index=False) if len(disp) else "(no rows)"
    notes = footnotes(table) + list(notes)
    return "\n".join(([title] if title else []) + [body] + [f"  * {n}" for n in notes]) + "\n"


def write_table(table: pd.DataFrame, spec: TableSpec, out_dir: Path, compact: bool = False, notes=()) -> tuple:
    """``table`` as ``<out_dir>/<spec.stem>.csv`` and ``.md`` (atomic writes); returns (the two paths,
    its printable text)."""
    csv_path, md_path = out_dir / f"{spec.stem}.csv", out_dir / f"{spec.stem}.md"
    write_atomic(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    write_text_atomic(md_path, to_markdown(table, spec.title, compact=compact, notes=notes))
    return [csv_path, md_path], to_text(table, spec.title, compact=compact, notes=notes)


def write_tables(roots, out_dir: str | Path = "results", published_dir: str | Path = PUBLISHED_DIR) -> dict:
    """Build Tables II and III from the runs under ``roots``; write CSV + Markdown; return the text."""
    evals = collect_evaluations(roots)
    if evals.empty:
        raise EvaluationError(f"no evaluated runs under {', '.join(map(str, roots))}; run "
                              f"python evaluate.py runs/<category>/<run> first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, written = [], []

    def add(table, spec, **kw):
        paths, text = write_table(table, spec, out_dir, **kw)
        written.extend(paths)
        texts.append(text)

    for spec in TABLES.values():
        add(build_table(evals, spec, published_dir), spec)
    other = sorted(set(evals["category"]) - set(CATEGORY_COLUMNS))
    if other:
        texts.append(f"not in the paper's tables (not MVTec AD categories): {', '.join(other)}\n")
        for spec in OTHER_TABLES.values():
            add(our_rows(evals[evals["category"].isin(other)], spec.metric, other), spec, compact=True)
    if has_pixel_metrics(evals):
        for spec in PIXEL_TABLES.values():
            table = pixel_table(evals, spec)
            if not table.empty:
                add(table, spec, compact=True, notes=[pixel_note(evals, spec.metric)])
    return {"text": "\n".join(texts), "files": written, "evaluations": evals}


def pixel_note(evals: pd.DataFrame, metric: str) -> str:
    """How the maps of a pixel table were made (the smoothing and strides of its runs)."""
    ev = evals[pd.to_numeric(evals[metric], errors="coerce").notna()]
    sig = sorted({f"{float(v):g}" for v in ev["pixel_sigma"].dropna()})
    strides = sorted({int(v) for v in ev["pixel_stride"].dropna()})
    return ("Pixel metrics at the model resolution (masks resized with nearest neighbour); anomaly map "
            "(1-λ)|x-G(E(x))| + λ|f_D(x)-f_D(G(E(x)))| (channel means)"
            + (f", Gaussian sigma {', '.join(sig)} px" if sig else "")
            + (f", texture patch stride {', '.join(map(str, strides))}" if strides else "")
            + ". AUPRO: MVTec AD definition, integrated to FPR 0.3 and divided by 0.3. No published rows: "
              "the paper reports image-level metrics only.")


# ---------------------------------------------------------------------------------- comparison
def per_category(path: str | Path) -> tuple[pd.DataFrame, str]:
    """The newest evaluation of every category under ``path`` (a run folder or a folder of runs)."""
    path = Path(path)
    if is_run_dir(path) or (path / EVALUATION_JSON).is_file():
        read_evaluation(path)  # a clear error when the run is not evaluated
    evals = collect_evaluations(path)
    if evals.empty:
        raise EvaluationError(f"no evaluated runs under {path}; run python evaluate.py on them first")
    ev = newest(evals, by=("category",)).set_index("category")
    return ev, str(path)


def compare(a: str | Path, b: str | Path) -> pd.DataFrame:
    """Per-category auROC and max balanced accuracy of A and B and the difference B - A.

    Categories in paper order first, then any other; the mean rows are over the categories both have.
    """
    ea, _ = per_category(a)
    eb, _ = per_category(b)
    cats = [c for c in CATEGORY_COLUMNS if c in ea.index or c in eb.index]
    cats += sorted((set(ea.index) | set(eb.index)) - set(cats))
    rows = []
    for c in cats:
        row = {"category": c}
        for m, short in (("auroc", "auroc"), ("max_balanced_accuracy", "mba")):
            va = float(ea.at[c, m]) if c in ea.index else np.nan
            vb = float(eb.at[c, m]) if c in eb.index else np.nan
            row.update({f"{short}_A": va, f"{short}_B": vb, f"{short}_diff": vb - va})
        row["run_A"] = ea.at[c, "run"] if c in ea.index else ""
        row["run_B"] = eb.at[c, "run"] if c in eb.index else ""
        rows.append(row)
    df = pd.DataFrame(rows)
    both = df.dropna(subset=["auroc_A", "auroc_B"])
    groups = [("mean textures", both[both["category"].isin(TEXTURES)]),
              ("mean objects", both[both["category"].isin(OBJECTS)]),
              ("mean (all common)", both)]
    means = []
    for name, g in groups:
        if len(g):
            m = {"category": f"{name} ({len(g)})"}
            num = [c for c in df.columns if c.startswith(("auroc_", "mba_"))]
            m.update(g[num].astype(float).mean().to_dict())
            m.update(run_A="", run_B="")
            means.append(m)
    return pd.concat([df, pd.DataFrame(means)], ignore_index=True) if means else df


def format_compare(df: pd.DataFrame, a, b) -> str:
    cols = ["category", "auroc_A", "auroc_B", "auroc_diff", "mba_A", "mba_B", "mba_diff"]

    shown = df[cols].copy()
    for c in cols[1:]:
        shown[c] = [("" if math.isnan(v) else (f"{v:+.4f}" if c.endswith("_diff") else f"{v:.4f}"))
                    for v in df[c].astype(float)]
    return (f"A = {a}\nB = {b}\n" + shown.to_string(index=False)
            + "\n(diff = B - A; means over the categories both have)\n")
