"""Score new images: ``python -m cbigan.predict <run or export dir> <image files or folders> ...``.

The model is either a run folder (``config.json`` + ``model.weights.h5``: scored in-process with the
same graph that is exported) or a SavedModel export (a version folder, a model folder whose latest
version is used, or an export folder holding one model), loaded with ``tf.saved_model.load`` and
called through ``serving_default``. Images are decoded with Pillow (any mode -> RGB) and handed over
raw: resizing, scaling and texture patching happen in the model's graph, as in TF Serving.

Folders are searched recursively for PNG/JPEG/BMP/TIFF files. Unreadable files are reported by name
on stderr and skipped; the others are still scored. Output: a table on stdout and a CSV
(``path,score,is_anomaly``; ``is_anomaly`` is empty when the model has no calibrated threshold).
``--maps DIR`` writes one figure per image: the input, its reconstruction and the anomaly map
(per-pixel |x - G(E(x))|) overlaid on the input, all maps on one colour scale.

Exit status: 0 when at least one image was scored, 1 when none could be (or the model cannot be
loaded), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, DataError, load_image

DISPLAY_SIDE = 256  # maps and images kept for --maps are pooled down to at most this side


@dataclass
class Prediction:
    path: Path
    score: float
    is_anomaly: bool | None


@dataclass
class Results:
    predictions: list = field(default_factory=list)
    bad: list = field(default_factory=list)           # (path, reason)
    threshold: float | None = None
    threshold_rule: str = ""
    source: str = ""


# ---------------------------------------------------------------------------------- inputs
def collect_inputs(items) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named directly or found (recursively, sorted) in folders; missing paths as errors."""
    files, bad, seen = [], [], set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found = [p]
        else:
            bad.append((p, "no such file or folder"))
            continue
        for q in found:
            if q.resolve() not in seen:
                seen.add(q.resolve())
                files.append(q)
    return files, bad


# ---------------------------------------------------------------------------------- models
class RunModel:
    """A run folder scored in-process through :class:`cbigan.export.ServingGraph`."""

    def __init__(self, run_dir: Path):
        from .export import ServingGraph
        from .threshold import read_threshold
        from .training import load_run

        self.cfg, model = load_run(run_dir)
        info = read_threshold(run_dir)
        self.threshold = None if info is None else info.get("threshold")
        self.rule = ("not calibrated (no threshold.json; python -m cbigan.export RUN calibrates it)"
                     if info is None else info.get("rule", ""))
        self.image_size = self.cfg.image_size
        self._fn = ServingGraph(model, self.cfg, self.threshold).python_fn()
        self.source = f"run {run_dir}"

    def __call__(self, images: np.ndarray) -> dict:
        import tensorflow as tf

        out = self._fn(tf.cast(tf.convert_to_tensor(images), tf.float32))
        return {k: v.numpy() for k, v in out.items()}


class ExportModel:
    """A SavedModel export called through its ``serving_default`` signature."""

    def __init__(self, path: Path):
        from .export import LoadedExport

        self._m = LoadedExport(path)
        meta = self._m.meta
        self.threshold = meta.get("threshold")
        self.rule = (meta.get("threshold_info") or {}).get("rule", "")
        self.image_size = meta.get("image_size")
        self.source = f"SavedModel {self._m.path}"

    def __call__(self, images: np.ndarray) -> dict:
        return self._m(images)


def open_model(path: str | Path):
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.weights.h5").is_file():
        return RunModel(path)
    return ExportModel(path)


# ---------------------------------------------------------------------------------- scoring
def _pool_to(a: np.ndarray, side: int) -> np.ndarray:
    """Average-pool a [S, S, ...] array by an integer factor so its side is at most ``side``."""
    f = max(1, math.ceil(a.shape[0] / side))
    if f == 1:
        return a
    s = a.shape[0] // f * f
    a = a[:s, :s]
    return a.reshape(s // f, f, s // f, f, *a.shape[2:]).mean(axis=(1, 3))


def predict(model, files, *, batch_size: int = 16, threshold: float | None = None,
            keep_maps: bool = False) -> tuple[Results, dict]:
    """Score ``files`` with ``model``; returns the results and, with ``keep_maps``, display arrays.

    Images of the same size are batched together (at most ``batch_size``); the model resizes them.
    """
    res = Results(threshold=model.threshold if threshold is None else float(threshold),
                  threshold_rule=(model.rule if threshold is None else
                                  f"set by hand to {threshold:g} (--threshold)"),
                  source=model.source)
    display = {}
    images, by_shape = {}, {}
    for i, p in enumerate(files):
        try:
            a = load_image(p)
        except DataError as e:
            res.bad.append((Path(p), str(e)))
            continue
        images[i] = a
        by_shape.setdefault(a.shape, []).append(i)
    scores = {}
    for idx in by_shape.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j:j + batch_size]
            batch = np.stack([images[i] for i in chunk])
            out = model(batch)
            for k, i in enumerate(chunk):
                scores[i] = float(out["score"][k])
                if keep_maps:
                    from .data import resize_uint8

                    side = out["anomaly_map"].shape[1]
                    x = resize_uint8(images[i][None], side)[0].numpy()
                    display[i] = (_pool_to(x.astype(np.float32), DISPLAY_SIDE).astype(np.uint8),
                                  _pool_to(np.clip(out["reconstruction"][k], 0, 255), DISPLAY_SIDE
                                           ).astype(np.uint8),
                                  _pool_to(out["anomaly_map"][k], DISPLAY_SIDE).astype(np.float16))
            for i in chunk:
                images[i] = None  # free the decoded image
    thr = res.threshold
    for i, p in enumerate(files):
        if i in scores:
            s = scores[i]
            res.predictions.append(Prediction(Path(p), s, None if thr is None else bool(s > thr)))
    display = {Path(files[i]): v for i, v in display.items()}
    return res, display


# ---------------------------------------------------------------------------------- outputs
def verdict(flag: bool | None) -> str:
    return "-" if flag is None else ("ANOMALY" if flag else "ok")


def print_table(res: Results, out=None) -> None:
    out = out or sys.stdout
    print(f"model: {res.source}", file=out)
    if res.threshold is None:
        print(f"threshold: none - {res.threshold_rule or 'no calibrated threshold'}; is_anomaly left empty",
              file=out)
    else:
        print(f"threshold: {res.threshold:.6g} - {res.threshold_rule}", file=out)
    print(f"{'score':>12}  {'verdict':<8} path", file=out)
    for r in res.predictions:
        print(f"{r.score:>12.6g}  {verdict(r.is_anomaly):<8} {r.path}", file=out)
    n_anom = sum(1 for r in res.predictions if r.is_anomaly)
    tail = f"{len(res.predictions)} scored"
    if res.threshold is not None:
        tail += f", {n_anom} anomalous"
    if res.bad:
        tail += f", {len(res.bad)} skipped (unreadable): " + ", ".join(str(p) for p, _ in res.bad)
    print(tail, file=out)


def write_csv(res: Results, path: str | Path) -> Path:
    """``path,score,is_anomaly`` (``true``/``false``, empty without a threshold), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "score", "is_anomaly"])
        for r in res.predictions:
            flag = "" if r.is_anomaly is None else ("true" if r.is_anomaly else "false")
            w.writerow([str(r.path), f"{r.score:.9g}", flag])
    os.replace(tmp, path)
    return path


def map_names(paths) -> dict:
    """Unique overlay file names: the path relative to the inputs' common folder, '/' -> '__'."""
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        return {}
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return {p: "__".join(p.relative_to(common).with_suffix("").parts) + ".png" for p in paths}


def write_maps(res: Results, display: dict, out_dir: str | Path, vmax: float | None = None) -> list[Path]:
    """One PNG per scored image: input, reconstruction, anomaly map over the input (shared scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = [r for r in res.predictions if r.path in display]
    if vmax is None:
        tops = [float(np.percentile(display[r.path][2].astype(np.float32), 99.5)) for r in preds]
        vmax = max(tops) if tops else 1.0
    vmax = max(float(vmax), 1e-6)
    names = map_names([r.path for r in preds])
    written = []
    for r in preds:
        x, recon, amap = display[r.path]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
        axes[0].imshow(x)
        axes[0].set_title("input", fontsize=9)
        axes[1].imshow(recon)
        axes[1].set_title("reconstruction G(E(x))", fontsize=9)
        axes[2].imshow(x)
        im = axes[2].imshow(amap.astype(np.float32), cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
        axes[2].set_title("|x - G(E(x))| overlay", fontsize=9)
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        thr = "" if res.threshold is None else f" (threshold {res.threshold:.5g})"
        fig.suptitle(f"{r.path.name}: score {r.score:.5g}{thr} - {verdict(r.is_anomaly)}", fontsize=10)
        fig.tight_layout()
        path = out_dir / names[r.path.resolve()]
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbigan.predict",
                                description="Score images with a trained run or a SavedModel export.")
    p.add_argument("model",
                   help="run folder (runs/<category>/<run>) or export folder (.../<model>/<version>)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--csv", default="predictions.csv", help="where to write path,score,is_anomaly")
    p.add_argument("--maps", default=None, metavar="DIR", help="write heat-map overlays of each image here")
    p.add_argument("--map-vmax", type=float, default=None,
                   help="top of the heat-map colour scale (default: the largest 99.5th percentile)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's decision threshold")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (same-size images)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")

    files, missing = collect_inputs(args.inputs)
    if not files:
        for path, why in missing:
            print(f"skipped {path}: {why}", file=sys.stderr)
        print("error: no image files found in " + ", ".join(args.inputs), file=sys.stderr)
        return 1
    try:
        from .export import ExportError

        model = open_model(args.model)
    except (DataError, ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res, display = predict(model, files, batch_size=args.batch_size, threshold=args.threshold,
                           keep_maps=args.maps is not None)
    res.bad = missing + res.bad
    if not args.quiet:
        print_table(res)
    for path, why in res.bad:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not res.predictions:
        print("error: no image could be scored", file=sys.stderr)
        return 1
    csv_path = write_csv(res, args.csv)
    print(f"wrote {csv_path} ({len(res.predictions)} rows)")
    if args.maps:
        written = write_maps(res, display, args.maps, args.map_vmax)
        print(f"wrote {len(written)} heat-map overlay(s) to {args.maps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
