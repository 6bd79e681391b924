"""Score new images: ``python -m cbigan.predict <run or export dir> <image files or folders> ...``.

The model is either a run folder (``config.json`` + ``model.weights.h5``: scored in-process with the
same graph that is exported) or a SavedModel export (a version folder, a model folder whose latest
version is used, or an export folder holding one model), loaded with ``tf.saved_model.load`` and
called through ``serving_default``. Images are decoded with Pillow (any mode -> RGB) and handed over
raw: resizing, scaling and texture patching happen in the model's graph, as in TF Serving. A LiteRT
export (a ``.tflite`` file, or a folder holding one) runs in the LiteRT interpreter, the kind's resize
before it in TensorFlow (:class:`cbigan.serving.litert.LiteRTModel`).

Folders are searched recursively (symlinked folders followed) for every file Pillow decodes
(:func:`cbigan.core.layout.scan_images`: PNG, JPEG/JFIF, WebP, BMP, TIFF, ..., any letter case); other files
there and unreadable ones are reported by name on stderr and skipped; the others are still scored.
EXIF orientation is applied before the model sees the pixels (:func:`cbigan.data.pipeline.load_image`). Output: a table on stdout and a CSV
(``path,score,is_anomaly``; ``is_anomaly`` is empty when the model has no calibrated threshold).
``--maps DIR`` writes one figure per image: the input, its reconstruction and the anomaly map
(per-pixel |x - G(E(x))|) overlaid on the input, all maps on one colour scale.

Exit status: 0 when at least one image was scored, 1 when none could be (or the model cannot be
loaded), 2 for bad arguments.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbigan.data.pipeline import DataError, load_image
from cbigan.core.layout import scan_images
from cbigan.core.runfolder import is_run_dir, read_threshold, write_atomic

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
    notes: list = field(default_factory=list)         # one-line notes for the user (stderr)


# ---------------------------------------------------------------------------------- inputs
def collect_inputs(items) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named directly or found (recursively, sorted) in folders; missing paths and the
    other files of a folder (not images: named with the reason) as ``(path, reason)``.

    A folder search (:func:`cbigan.core.layout.scan_images`, the listing of training and evaluation too)
    skips hidden names (``._000.png`` AppleDouble sidecars, ``.DS_Store``, files under
    ``.ipynb_checkpoints``): operating-system metadata, not images.
    """
    files, bad, seen = [], [], set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            found, other = scan_images(p)
            bad.extend(other)
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
class TrainedModel:
    """A run folder's trained model scored in-process through :class:`cbigan.serving.export.ServingGraph`."""

    def __init__(self, run_dir: Path):
        from cbigan.serving.export import ServingGraph
        from cbigan.model.gan import load_trained

        self.cfg, model = load_trained(run_dir)
        info = read_threshold(run_dir)
        self.threshold = None if info is None else info.get("threshold")
        self.rule = ("not calibrated (no threshold.json; python -m cbigan.export RUN calibrates it)"
                     if info is None else info.get("rule", ""))
        self.image_size = self.cfg.image_size
        self.kind, self.scale = self.cfg.kind, float(self.cfg.scale)
        self._fn = ServingGraph(model, self.cfg, self.threshold).python_fn()
        self.source = f"run {run_dir}"

    def __call__(self, images: np.ndarray) -> dict:
        import tensorflow as tf

        out = self._fn(tf.cast(tf.convert_to_tensor(images), tf.float32))
        return {k: v.numpy() for k, v in out.items()}


class ExportedModel:
    """A SavedModel export called through its ``serving_default`` signature."""

    def __init__(self, path: Path):
        from cbigan.serving.export import LoadedExport

        self._m = LoadedExport(path)
        meta = self._m.meta
        self.threshold = meta.get("threshold")
        self.rule = (meta.get("threshold_info") or {}).get("rule", "")
        self.image_size = meta.get("image_size")
        self.kind, self.scale = meta.get("kind"), float(meta.get("scale", 1.0))  # no scale: written before 1.0
        self.source = f"SavedModel {self._m.path}"

    def __call__(self, images: np.ndarray) -> dict:
        return self._m(images)


def open_model(path: str | Path):
    """A run folder, a LiteRT ``.tflite`` file (or a folder holding one), or a SavedModel export."""
    path = Path(path)
    if is_run_dir(path):
        return TrainedModel(path)
    from cbigan.serving.litert import LiteRTModel, is_litert

    if is_litert(path):
        return LiteRTModel(path)
    return ExportedModel(path)


# ---------------------------------------------------------------------------------- scoring
def input_notes(kind: str | None, canvas: int | None, scale: float, sizes: dict) -> list[str]:
    """One-line notes about inputs the model will see differently from its training images, or [].

    * tiles: an image whose longer side times ``scale`` exceeds the ``canvas`` is shrunk to fit it
      (:func:`cbigan.core.imageops.scaled_size`), so its tiles see a coarser scale than training did and
      small defects may vanish;
    * objects and textures: an image at least :data:`cbigan.core.kinds.ELONGATED` times longer than wide is
      squashed to the model's square (a thin crack along it halves or more), where those kinds are
      trained on square-ish images (an elongated training set gets tiles: :func:`cbigan.core.kinds.kind_for_sizes`).

    ``sizes``: path -> (height, width) in pixels.
    """
    from cbigan.core.kinds import kind_of

    if not sizes or not kind:
        return []
    return kind_of(kind).input_notes(canvas, scale, sizes)


def _pool_to(a: np.ndarray, side: int) -> np.ndarray:
    """Average-pool a [H, W, ...] array by an integer factor so its longer side is at most ``side``."""
    f = max(1, math.ceil(max(a.shape[:2]) / side))
    if f == 1:
        return a
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:h, :w]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def predict(model, files, *, batch_size: int = 16, threshold: float | None = None,
            keep_maps: bool = False, progress: bool = True) -> tuple[Results, dict]:
    """Score ``files`` with ``model``; returns the results and, with ``keep_maps``, display arrays.

    Images of the same size are batched together (at most ``batch_size``); the model resizes them.
    ``progress``: a bar on a terminal (:func:`cbigan.core.progress.progress`).
    """
    from cbigan.core.progress import progress as progress_bar

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
    res.notes += input_notes(getattr(model, "kind", None), getattr(model, "image_size", None),
                             getattr(model, "scale", 1.0), {files[i]: a.shape[:2] for i, a in images.items()})
    scores = {}
    bar = progress_bar(total=len(images), desc="scoring", quiet=not progress)
    for idx in by_shape.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j:j + batch_size]
            batch = np.stack([images[i] for i in chunk])
            out = model(batch)
            bar.update(len(chunk))
            for k, i in enumerate(chunk):
                scores[i] = float(out["score"][k])
                if keep_maps:
                    import tensorflow as tf

                    hw = out["anomaly_map"].shape[1:3]  # the model resolution, or the input's (tiles)
                    x = tf.image.resize(images[i][None].astype(np.float32), hw, method="bilinear",
                                        antialias=True)[0].numpy().round().clip(0, 255)
                    display[i] = (_pool_to(x.astype(np.float32), DISPLAY_SIDE).astype(np.uint8),
                                  _pool_to(np.clip(out["reconstruction"][k], 0, 255), DISPLAY_SIDE
                                           ).astype(np.uint8),
                                  _pool_to(out["anomaly_map"][k], DISPLAY_SIDE).astype(np.float16))
            for i in chunk:
                images[i] = None  # free the decoded image
    bar.close()
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
        tail += f", {len(res.bad)} skipped (not images or unreadable): " + ", ".join(str(p) for p, _ in res.bad)
    print(tail, file=out)


def write_csv(res: Results, path: str | Path) -> Path:
    """``path,score,is_anomaly`` (``true``/``false``, empty without a threshold), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "score", "is_anomaly"])
            for r in res.predictions:
                flag = "" if r.is_anomaly is None else ("true" if r.is_anomaly else "false")
                w.writerow([str(r.path), f"{r.score:.9g}", flag])

    return write_atomic(path, write)


def map_names(paths) -> dict:
    """Unique overlay file names: the path relative to the inputs' common folder, '/' -> '__'.

    Names are unique also across extension and letter case (``000.png`` + ``000.jpg``, ``001.png`` +
    ``001.PNG`` on a case-insensitive disk): where stems collide the extension is kept (``000_jpg.png``),
    and a counter separates what still does (``001_PNG-2.png``)."""
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        return {}
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    stems = {p: "__".join(p.relative_to(common).with_suffix("").parts) for p in paths}
    count: dict = {}
    for stem in stems.values():
        count[stem.lower()] = count.get(stem.lower(), 0) + 1
    names, taken = {}, set()
    for p in paths:
        name = stems[p] + (f"_{p.suffix.lstrip('.')}" if count[stems[p].lower()] > 1 and p.suffix else "")
        unique, k = name, 1
        while unique.lower() in taken:
            k += 1
            unique = f"{name}-{k}"
        taken.add(unique.lower())
        names[p] = unique + ".png"
    return names


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
        axes[2].set_title("anomaly map overlay", fontsize=9)
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
