"""The data behind the figures of runs: run folders, stored or fresh scores, examples, maps.

The command line is :mod:`cbigan.cli.plots` (``python -m cbigan.plots {recon,curves,roc,hist,maps,gif}``).
Every figure command takes ``--out FILE`` (default ``<run>/figures/<name>.png``, or
``<common parent of the runs>/figures/<name>.png`` for several runs), ``--pdf`` (a PDF beside the PNG)
and ``--dpi``. The command line that made a figure is stored in the PNG/PDF metadata and in
``commands.txt`` beside it.

Scores come from the run's ``scores.csv`` (written by ``evaluate.py``) when it is newer than the
weights, else they are computed here with :class:`cbigan.scoring.parts.Scorer`, so a run that was never
evaluated still plots. The calibrated threshold comes from ``threshold.json`` when it exists, is not
null, and was calibrated with the same lambda as the scores.

Training-time previews and their GIF are :mod:`cbigan.training.previews`. The figure builders themselves live
in :mod:`cbigan.reporting.figures` (pure drawing); this module reads run folders.
TensorFlow is imported only by the commands that need the model (recon, maps; roc/hist without
scores.csv). The anomaly maps of ``maps`` are :class:`cbigan.scoring.localization.Localizer`'s, the
implementation evaluation and the export use.
"""

from __future__ import annotations

import dataclasses

import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cbigan.core.anomaly_score import RULES_WITH_MAPS, combine  # noqa: E402
from cbigan.core.config import method_name  # noqa: E402
from cbigan.reporting.figures import MapRow, ReconPanel, ReconRow, ScoreSet  # noqa: E402
from cbigan.core.kinds import StrideError, kind_of  # noqa: E402
from cbigan.core.layout import GOOD  # noqa: E402
from cbigan.core.runfolder import (CONFIG_JSON, EVALUATION_JSON, SCORES_CSV, THRESHOLD_JSON, WEIGHTS,  # noqa: E402
                        write_atomic, write_text_atomic)

DPI = 100


class PlotError(RuntimeError):
    """A problem with the user's input, in one line."""


# ---------------------------------------------------------------------------------- run folders
def read_table(path: Path):
    import pandas as pd

    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def image_key(path, defect_type: str | None = None) -> tuple[str, str]:
    """(defect type, file name): identifies a test image of a category wherever the data lies."""
    path = Path(str(path))
    return (defect_type if isinstance(defect_type, str) else path.parent.name), path.name


#: Scorers of the runs loaded in this process, by (run folder, weights mtime): loading is the slow part.
_SCORERS: dict = {}


class RunFolderView:
    """A run folder: its config, stored scores and threshold without TensorFlow; model on demand."""

    def __init__(self, run_dir: str | Path, data_dir: str | None = None):
        from cbigan.core.config import Config

        self.dir = Path(run_dir)
        if not (self.dir / CONFIG_JSON).is_file():
            raise PlotError(f"{self.dir} is not a run folder (no {CONFIG_JSON}); pass runs/<category>/<run>")
        self.cfg = Config.from_json(self.dir / CONFIG_JSON)
        if data_dir is not None:
            self.cfg = dataclasses.replace(self.cfg, data_dir=str(data_dir))
        self._scorer = self._test = None
        self.stored = self._stored_scores()
        self.lam = self._stored_lambda() if self.stored is not None else self.cfg.score_lambda
        self.threshold = self._threshold()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def label(self) -> str:
        return f"{method_name(self.cfg.alpha)} α={self.cfg.alpha:g} · {self.cfg.category}/{self.name}"

    def _stored_scores(self):
        """``scores.csv`` when it is at least as new as the weights (else it is stale)."""
        path, weights = self.dir / SCORES_CSV, self.dir / WEIGHTS
        df = read_table(path)
        if df is None or not {"score", "label"} <= set(df.columns):
            return None
        if weights.is_file() and path.stat().st_mtime < weights.stat().st_mtime:
            print(f"note: {path} is older than the weights; scoring again", file=sys.stderr)
            return None
        return df

    def _stored_lambda(self) -> float:
        ev = self.dir / EVALUATION_JSON
        try:
            return float(json.loads(ev.read_text())["score_lambda"])
        except (OSError, ValueError, KeyError, TypeError):
            return float(self.cfg.score_lambda)

    def _threshold(self) -> float | None:
        path = self.dir / THRESHOLD_JSON
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"note: cannot read {path}; no threshold drawn", file=sys.stderr)
            return None
        value = data.get("threshold") if isinstance(data, dict) else None
        if value is None or not math.isfinite(float(value)):
            return None
        lam = float(data.get("score_lambda", self.cfg.score_lambda))
        if not math.isclose(lam, self.lam):
            print(f"note: {path} was calibrated for lambda {lam:g} but the scores use {self.lam:g}; "
                  f"no threshold drawn", file=sys.stderr)
            return None
        return float(value)

    # -- needs TensorFlow
    @property
    def scorer(self):
        """A :class:`cbigan.scoring.parts.Scorer` of the run's model, loaded once per process and weights."""
        if self._scorer is None:
            weights = self.dir / WEIGHTS
            if not weights.is_file():
                raise PlotError(f"{self.dir} has no {WEIGHTS} (training unfinished?)")
            key = (str(self.dir.resolve()), weights.stat().st_mtime_ns)
            if key not in _SCORERS:
                from cbigan.scoring.parts import Scorer
                from cbigan.model.gan import load_trained

                _, model = load_trained(self.dir)
                _SCORERS[key] = Scorer(model, self.cfg)
            self._scorer = _SCORERS[key]
        return self._scorer

    def localizer(self, sigma: float | None = None, stride: int | None = None):
        """A :class:`cbigan.scoring.localization.Localizer` of the run's model at the run's lambda."""
        from cbigan.scoring.localization import DEFAULT_SIGMA, Localizer

        try:  # the patch size by default and for kinds without a stride (objects)
            stride = kind_of(self.cfg).map_stride(self.cfg, stride)
        except StrideError:
            raise PlotError(f"--stride must be between 1 and the patch size {self.cfg.patch_size}") from None
        if sigma is not None and not sigma >= 0:
            raise PlotError(f"--sigma must be >= 0, got {sigma:g}")
        return Localizer(self.scorer.model, self.cfg, sigma=DEFAULT_SIGMA if sigma is None else sigma,
                         stride=stride, lam=self.lam)

    def test_set(self):
        if self._test is None:
            from cbigan.data.pipeline import load_test_set

            self._test = load_test_set(self.cfg)
        return self._test

    def score_set(self, name: str | None = None) -> ScoreSet:
        """Image scores of the test set (stored, or computed now)."""
        if self.stored is not None:
            df = self.stored
            types = df["defect_type"].tolist() if "defect_type" in df else None
            return ScoreSet(name or self.label, df["label"].to_numpy(), df["score"].to_numpy(), types,
                            self.threshold)
        test = self.test_set()
        c = self.cfg
        if c.image_score in RULES_WITH_MAPS:  # the run's own rule, from maps at the run's map settings
            from cbigan.scoring.localization import map_settings

            sigma, stride = map_settings(c)
            results = self.localizer(sigma, stride).run(test.images, regions=test.regions)
        else:
            results = self.scorer.score(test.images)
        results = dataclasses.replace(results, regions=test.regions)  # tiles: the images' own parts
        scores = results.image_scores(self.lam, c.image_score, c.score_topk, margin=c.score_margin)
        return ScoreSet(name or self.label, test.labels, scores, list(test.defect_types), self.threshold)

    def scores_for(self, keys: list) -> np.ndarray | None:
        """Stored scores of the given test images, or None when some are not stored."""
        if self.stored is None or "path" not in self.stored:
            return None
        types = self.stored["defect_type"] if "defect_type" in self.stored else [None] * len(self.stored)
        table = {image_key(p, t): s for p, t, s in zip(self.stored["path"], types, self.stored["score"])}
        if not all(k in table for k in keys):
            return None
        return np.array([table[k] for k in keys], np.float64)

    def reconstruct(self, images: np.ndarray):
        """Reconstructions [N,S,S,3], difference maps [N,S,S] and per-patch scores [N,P] (whole images)."""
        scorer, cfg = self.scorer, self.cfg
        kind, ppi = kind_of(cfg), scorer.patches_per_image
        per_call = max(1, 256 // ppi)
        recs, diffs, parts = [], [], []
        for i in range(0, len(images), per_call):
            out = scorer.raw(images[i:i + per_call])
            rec, diff = out["reconstruction"], out["diff"]
            rec, diff = kind.from_network_outputs(rec, cfg), kind.from_network_outputs(diff, cfg)
            recs.append(np.asarray(rec))
            diffs.append(np.asarray(diff))
            l_r = np.asarray(out["l_r"], np.float64).reshape(-1, ppi)
            l_fd = np.asarray(out["l_fd"], np.float64).reshape(-1, ppi)
            parts.append(combine(l_r, l_fd, self.lam))
        return np.concatenate(recs), np.concatenate(diffs), np.concatenate(parts)


# ---------------------------------------------------------------------------------- recon grid
def select_examples(defect_types, scores, n_rows: int | None = None) -> list[int]:
    """Indices of the test images to show: by default the most and the least anomalous of ``good``
    and of every defect type. With ``n_rows``, exactly that many (at most all images): the most
    anomalous of each type first, then the least, then the second most... Ordered for display:
    ``good`` first, then the defect types by name, each from the highest score down.
    """
    types = np.asarray(defect_types)
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf)
    order = [GOOD] * bool(np.any(types == GOOD)) + sorted(set(types.tolist()) - {GOOD})
    queues = {}
    for t in order:
        idx = sorted(np.flatnonzero(types == t), key=lambda i: -scores[i])
        q, lo, hi = [], 0, len(idx) - 1
        while lo <= hi:
            q.append(idx[lo])
            if hi != lo:
                q.append(idx[hi])
            lo, hi = lo + 1, hi - 1
        queues[t] = q
    if n_rows is None:
        n_rows = sum(min(2, len(q)) for q in queues.values())
    n_rows = min(n_rows, len(types))
    picked = []
    for k in range(max((len(q) for q in queues.values()), default=0)):
        for t in order:
            if k < len(queues[t]) and len(picked) < n_rows:
                picked.append(queues[t][k])
    rank = {t: i for i, t in enumerate(order)}
    return [int(i) for i in sorted(picked, key=lambda i: (rank[types[i]], -scores[i]))]


def recon_data(run_dirs: list, n_rows: int | None = None, data_dir: str | None = None,
               names: list | None = None):
    """The rows of :func:`cbigan.reporting.figures.recon_figure` for one run or several compared runs.

    The images are chosen by the first run's scores; every run reconstructs the same images.
    """
    runs = [RunFolderView(d, data_dir) for d in run_dirs]
    ref = runs[0]
    cats = {r.cfg.category for r in runs}
    if len(cats) > 1:
        raise PlotError(f"--compare needs runs of the same category, got {sorted(cats)}")
    test = ref.test_set()
    keys = [image_key(p, t) for p, t in zip(test.paths, test.defect_types)]
    selection_scores = ref.scores_for(keys)
    if selection_scores is None:
        selection_scores = ref.scorer.score(test.images).image_scores(ref.lam)
    picked = select_examples(test.defect_types, selection_scores, n_rows)
    rows = []
    for i in picked:
        mask = test.masks[i] if test.masks is not None and test.has_mask[i] else None
        rows.append(ReconRow(test.images[i], test.defect_types[i], Path(test.paths[i]).name, mask))
    for run in runs:
        t = run.test_set() if run is ref else _same_test_set(run, ref)
        where = {image_key(p, d): j for j, (p, d) in enumerate(zip(t.paths, t.defect_types))}
        missing = [keys[i] for i in picked if keys[i] not in where]
        if missing:
            raise PlotError(f"{run.dir} has no test image {missing[0][0]}/{missing[0][1]} of {ref.dir}")
        js = [where[keys[i]] for i in picked]
        recs, diffs, patch_scores = run.reconstruct(t.images[js])
        stored = run.scores_for([keys[i] for i in picked])
        for k, row in enumerate(rows):
            best = int(np.argmax(patch_scores[k]))
            score = float(stored[k]) if stored is not None else float(patch_scores[k, best])
            box = kind_of(run.cfg).best_patch_box(run.cfg, best)  # None: no patch to outline
            anomalous = None if run.threshold is None else bool(score > run.threshold)
            row.panels.append(ReconPanel(recs[k], diffs[k], score, anomalous, box))
    if names and len(names) != len(runs):
        raise PlotError(f"--names gives {len(names)} names for {len(runs)} runs")
    labels = list(names) if names else [f"{method_name(r.cfg.alpha)} α={r.cfg.alpha:g} · {r.name}"
                                        for r in runs]
    n_def = sum(r.defect_type != GOOD for r in rows)
    title = (f"{ref.cfg.category}: {len(rows)} test images ({len(rows) - n_def} good, {n_def} defective),"
             f" most and least anomalous of each type")
    note = ("red outline: ground-truth defect; "
            + ("dashed box: highest-scoring patch (its score is the image score); "
               if any(kind_of(r.cfg).is_patched for r in runs) else "")
            + f"score A(x) = (1−λ)·L_R + λ·L_fD, λ = {ref.lam:g}")
    return rows, labels, title, note


def original_mask(image_path, defect_type: str, shape_hw) -> np.ndarray | None:
    """The ground-truth mask of a test image at its original size (all zero for good ones), or None."""
    from cbigan.data.pipeline import load_mask

    path = Path(image_path)
    gt = path.parent.parent.parent / "ground_truth"
    if not gt.is_dir():
        return None
    if defect_type == GOOD:
        return np.zeros(shape_hw, np.uint8)
    from cbigan.core.layout import MaskFinder

    mask_path = MaskFinder(gt).find(path, defect_type)  # any accepted name (cbigan/core/layout.py)
    return load_mask(mask_path) if mask_path is not None else None


def maps_data(run_dir, n_rows: int | None = None, data_dir: str | None = None, sigma: float | None = None,
              stride: int | None = None, original_size: bool = False):
    """The rows of :func:`cbigan.reporting.figures.maps_figure`, with a title and a note.

    Images as in the recon grid (most and least anomalous of every type, by the stored scores when
    there are some); maps at the model resolution, or resized back to every image's original size.
    """
    from cbigan.data.pipeline import load_image
    from cbigan.scoring.localization import to_original_size

    run = RunFolderView(run_dir, data_dir)
    test = run.test_set()
    loc = run.localizer(sigma, stride)
    keys = [image_key(p, t) for p, t in zip(test.paths, test.defect_types)]
    scores = run.scores_for(keys)
    c = run.cfg
    rule = dict(lam=run.lam, rule=c.image_score, topk=c.score_topk, margin=c.score_margin)  # the run's own
    if scores is None:
        scores = dataclasses.replace(loc.run(test.images, regions=test.regions),
                                     regions=test.regions).image_scores(**rule)
    picked = select_examples(test.defect_types, scores, n_rows)
    regions = None if test.regions is None else test.regions[picked]
    out = dataclasses.replace(loc.run(test.images[picked], regions=regions), regions=regions)
    maps, image_scores = out.maps(run.lam), out.image_scores(**rule)
    rows = []
    for k, i in enumerate(picked):
        mask = test.masks[i] if test.masks is not None and test.has_mask[i] else None
        h, w = test.regions[i] if test.regions is not None else maps[k].shape  # tiles: the image's part
        image, amap = test.images[i][:h, :w], maps[k][:h, :w]
        mask = None if mask is None else mask[:h, :w]
        if original_size:
            image = load_image(test.paths[i])
            amap = to_original_size(amap, image.shape[:2])
            mask = original_mask(test.paths[i], test.defect_types[i], image.shape[:2])
        anomalous = None if run.threshold is None else bool(image_scores[k] > run.threshold)
        rows.append(MapRow(image, amap, test.defect_types[i], Path(test.paths[i]).name,
                           float(image_scores[k]), mask, anomalous))
    cfg = run.cfg
    n_def = sum(r.defect_type != GOOD for r in rows)
    size = "original image sizes" if original_size else f"{cfg.image_size}x{cfg.image_size} (model resolution)"
    title = (f"{cfg.category} / {run.name}: anomaly maps of {len(rows)} test images ({len(rows) - n_def} good, "
             f"{n_def} defective), {size}")
    pixel = _pixel_summary(run, loc.sigma, loc.stride)
    note = (f"map = (1−λ)·mean_c|x − G(E(x))| + λ·mean_c|f_D(x) − f_D(G(E(x)))|, λ = {run.lam:g}; Gaussian "
            f"sigma {loc.sigma:g} px" + kind_of(cfg).describe_stride(loc.stride)
            + "; one colour scale for all maps; red/cyan outline: ground-truth defect" + pixel)
    return rows, title, note


def _pixel_summary(run: RunFolderView, sigma: float, stride: int) -> str:
    """'; test pixel auROC ... AUPRO ...' from evaluation.json when it used the same maps."""
    try:
        s = json.loads((run.dir / EVALUATION_JSON).read_text())
        p = s.get("pixel") or {}
        if s.get("pixel_auroc") is None or not math.isclose(float(p["sigma"]), sigma) \
                or (kind_of(run.cfg).has_map_stride and int(p["stride"]) != int(stride)):
            return ""
        return (f"; whole test set (evaluate.py): pixel auROC {s['pixel_auroc']:.3f}, "
                f"AUPRO@0.3 {s['aupro']:.3f}" if s.get("aupro") is not None else "")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _same_test_set(run: RunFolderView, ref: RunFolderView):
    """Reuse the reference run's loaded test set when it is the same data at the same size."""
    a, b = run.cfg, ref.cfg
    if (a.data_dir, a.category, a.image_size) == (b.data_dir, b.category, b.image_size):
        run._test = ref.test_set()
    return run.test_set()


# ---------------------------------------------------------------------------------- saving
def default_out(run_dirs: list, name: str) -> Path:
    """``<run>/figures/<name>.png``; for several runs, under their common parent folder."""
    dirs = [os.path.abspath(d) for d in run_dirs]
    base = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else Path(run_dirs[0])
    return base / "figures" / f"{name}.png"


def save_figure(fig, out: str | Path, dpi: int = DPI, pdf: bool = False,
                command: str | None = None) -> list[Path]:
    """Write ``fig`` to ``out`` (PNG unless ``out`` ends in .pdf; ``pdf`` adds a PDF beside it)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf"):
        plt.close(fig)
        raise PlotError(f"--out {out}: write a .png or a .pdf file")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + ([out.with_suffix(".pdf")] if pdf and out.suffix.lower() != ".pdf" else [])
    for path in paths:
        meta = {"Creator": "cbigan"} if path.suffix.lower() == ".pdf" else {"Software": "cbigan"}
        if command:
            meta["Subject" if path.suffix.lower() == ".pdf" else "Description"] = command
        write_atomic(path, lambda tmp, meta=meta, fmt=path.suffix.lower()[1:]: fig.savefig(
            tmp, dpi=dpi, metadata=meta, format=fmt))
    plt.close(fig)
    if command:
        record_command(out.parent, [p.name for p in paths], command)
    return paths


def record_command(folder: Path, names: list[str], command: str) -> Path:
    """Keep ``commands.txt`` in ``folder``: one ``file: command`` line per figure, latest wins."""
    path = Path(folder) / "commands.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    lines = [ln for ln in lines if ln.split(": ", 1)[0] not in names]
    lines += [f"{n}: {command}" for n in names]
    write_text_atomic(path, "\n".join(sorted(lines)) + "\n")
    return path
