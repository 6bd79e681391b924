"""SavedModel export for TF Serving: ``python -m cbigan.export runs/<category>/<run>``.

Layout (TF Serving's): ``<export_dir>/<model_name>/<version>/`` with ``saved_model.pb``,
``variables/`` and ``assets.extra/cbigan.json`` (category, sizes, lambda, threshold and its rule).
Defaults: ``export_dir = <run>/export``, ``model_name = <category>``, ``version`` = one more than the
highest existing version (1 for the first export); ``--overwrite`` replaces the given (or latest)
version instead. A version folder appears by an atomic rename of a finished temporary folder, so a
TF Serving instance watching ``<export_dir>/<model_name>`` never loads half an export.

The archive is built with ``keras.export.ExportArchive`` from the EMA encoder/generator and the critic
features. Signatures (see ``docs/serving.md``):

* ``serving_default``: ``images`` float32 ``[N, H, W, 3]``, raw pixels in 0..255, any H and W;
* ``serving_uint8``: the same with uint8 ``images``;
* ``serving_bytes``: ``image_bytes`` string ``[N]``, encoded PNG/JPEG/BMP/GIF files.

Every signature runs the category's own preprocessing in the graph (:func:`cbigan.data.resize_uint8`,
:func:`cbigan.data.to_model_range`) and the scoring/map implementation shared with evaluation
(:func:`cbigan.localization.localize` over :func:`cbigan.scoring.score_patches`), and returns ``score`` [N], ``is_anomaly`` [N]
(``score > threshold``), ``threshold`` [N], ``anomaly_map`` [N, S, S] and ``reconstruction``
[N, S, S, 3] (S = the model's image size; texture patches stitched back). A run without a calibrated
threshold exports ``threshold = NaN`` and ``is_anomaly = False`` everywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import tensorflow as tf

from .config import Config
from .data import DataError, resize_uint8, to_model_range
from .networks import feature_extractor
from .localization import DEFAULT_SIGMA, localize

METADATA = "cbigan.json"
EXPORT_FORMAT = 1
SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")
OUTPUTS = ("score", "is_anomaly", "threshold", "anomaly_map", "reconstruction")


class ExportError(RuntimeError):
    """A problem with an export folder, with a one-line message that says what to do."""


# ---------------------------------------------------------------------------------- the graph
def validate_images(images):
    """Graph-side checks of a raw batch: rank 4, 3 channels, non-empty sides.

    Returns the batch with the static shape [N, H, W, 3]. On bad input one of the assertions below
    fails with its message (and the shape received); the rest of the graph runs on a dummy 1x1 image
    meanwhile, so no other op can fail first with a less helpful message (ordering by control
    dependencies alone is not reliable: Grappler's constant folding may drop it).
    """
    shape = tf.shape(images)
    rank = tf.size(shape)
    padded = tf.concat([shape, tf.ones([4], tf.int32)], 0)[:4]
    rank_ok = tf.equal(rank, 4)
    channels_ok = tf.logical_and(rank_ok, tf.equal(padded[3], 3))
    ok = tf.logical_and(channels_ok, tf.logical_and(padded[1] > 0, padded[2] > 0))
    bad_rank = "cbigan: 'images' must be a batch of RGB images [N, H, W, 3] (rank 4); got shape"
    bad_channels = "cbigan: 'images' must have 3 channels (RGB) in the last axis [N, H, W, 3]; got shape"
    bad_sides = "cbigan: 'images' must have a height and width of at least 1 pixel; got shape"
    tf.debugging.Assert(rank_ok, [bad_rank, shape], summarize=8)
    tf.debugging.Assert(tf.logical_or(tf.logical_not(rank_ok), channels_ok), [bad_channels, shape],
                        summarize=8)
    tf.debugging.Assert(tf.logical_or(tf.logical_not(channels_ok), ok), [bad_sides, shape], summarize=8)
    target = tf.stack([padded[0], padded[1], padded[2], 3])
    return tf.cond(ok, lambda: tf.reshape(images, target),
                   lambda: tf.zeros([1, 1, 1, 3], images.dtype))


class ServingGraph:
    """The exported computation, also usable in-process (``predict`` on a run folder, benchmarks)."""

    def __init__(self, model, cfg: Config, threshold: float | None):
        self.cfg = cfg.resolved()
        self.encoder, self.generator = model.ema_encoder, model.ema_generator
        self.features = feature_extractor(model.critic, self.cfg.feature_layer)
        self.threshold = None if threshold is None else float(threshold)
        self.grid = self.cfg.image_size // self.cfg.patch_size
        size = self.cfg.image_size
        # The networks are traced once, in this inner function, and shared by every signature.
        self._core = tf.function(self.score_resized,
                                 input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])

    def score_resized(self, images_uint8):
        """Outputs for a batch already resized to [N, S, S, 3] uint8.

        Scores and maps come from :func:`cbigan.localization.localize`, the implementation evaluation
        and figures use, so served and in-framework results agree.
        """
        cfg = self.cfg
        lam = float(cfg.score_lambda)
        out = localize(self.encoder, self.generator, self.features, to_model_range(images_uint8),
                       patch=cfg.patch_size, lam=lam,
                       sigma=float(cfg.extra.get("map_sigma", DEFAULT_SIGMA)),
                       stride=cfg.extra.get("map_stride"))  # None: the patch size
        score = tf.reduce_max((1.0 - lam) * out["l_r"] + lam * out["l_fd"], axis=1)
        thr = tf.constant(math.nan if self.threshold is None else self.threshold, tf.float32)
        n = tf.shape(score)[0]
        return {
            "score": score,
            "is_anomaly": tf.greater(score, thr),
            "threshold": tf.fill([n], thr),
            "anomaly_map": tf.ensure_shape(out["anomaly_map"], [None, cfg.image_size, cfg.image_size]),
            "reconstruction": tf.ensure_shape((out["reconstruction"] + 1.0) * 127.5,
                                              [None, cfg.image_size, cfg.image_size, 3]),
        }

    def serve_images(self, images):
        """Raw pixels [N, H, W, 3] (uint8 or 0..255 floats), any H, W."""
        images = validate_images(images)
        return self._core(resize_uint8(images, self.cfg.image_size))

    def serve_bytes(self, image_bytes):
        """Encoded image files [N] (PNG, JPEG, BMP, GIF first frame), decoded to RGB in the graph."""
        size = self.cfg.image_size
        image_bytes = tf.ensure_shape(image_bytes, [None])

        def decode(b):
            img = tf.io.decode_image(b, channels=3, dtype=tf.uint8, expand_animations=False)
            img = tf.ensure_shape(img, [None, None, 3])
            return resize_uint8(img[None], size)[0]

        x8 = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return self._core(x8)

    def python_fn(self):
        """A ``tf.function`` of :meth:`serve_images` for in-process use (retraces per dtype only)."""
        return tf.function(self.serve_images,
                           input_signature=[tf.TensorSpec(None, tf.float32, name="images")])


def build_archive(model, cfg: Config, threshold: float | None):
    """A ``keras.export.ExportArchive`` with the three signatures (``serving_default`` first)."""
    import keras

    graph = ServingGraph(model, cfg, threshold)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", graph.serve_images,
                         input_signature=[tf.TensorSpec(None, tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", graph.serve_images,
                         input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", graph.serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return archive


# ---------------------------------------------------------------------------------- layout
def versions(model_dir: str | Path) -> list[int]:
    """The numeric version folders of a TF Serving model folder, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def metadata(cfg: Config, threshold_info: dict | None, run_dir: str | Path | None) -> dict:
    info = threshold_info or {"threshold": None, "rule": "not calibrated"}
    return {
        "format": EXPORT_FORMAT, "category": cfg.category, "kind": cfg.kind,
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "score_lambda": cfg.score_lambda,
        "feature_layer": cfg.feature_layer, "threshold": info.get("threshold"), "threshold_info": info,
        "run_dir": None if run_dir is None else str(Path(run_dir).resolve()),
        "signatures": {
            "serving_default": "images float32 [N, H, W, 3] raw pixels 0..255",
            "serving_uint8": "images uint8 [N, H, W, 3]",
            "serving_bytes": "image_bytes string [N] encoded PNG/JPEG/BMP/GIF",
        },
        "outputs": list(OUTPUTS),
        "tensorflow": tf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export_model(model, cfg: Config, export_dir: str | Path, *, threshold_info: dict | None = None,
                 model_name: str | None = None, version: int | None = None, overwrite: bool = False,
                 run_dir: str | Path | None = None) -> Path:
    """Write ``<export_dir>/<model_name>/<version>/`` and return that folder.

    ``version`` None: one more than the highest existing version, or, with ``overwrite``, the highest
    existing one (1 if none). An existing explicit version is refused unless ``overwrite``.
    """
    cfg = cfg.resolved()
    model_dir = Path(export_dir) / (model_name or cfg.category)
    existing = versions(model_dir)
    if version is None:
        version = (existing[-1] if overwrite else existing[-1] + 1) if existing else 1
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it or choose another "
                          f"--version")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {model_dir}: {e.strerror}; choose another --export-dir") from None
    threshold = None if threshold_info is None else threshold_info.get("threshold")
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_archive(model, cfg, threshold).write_out(str(tmp), verbose=False)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / METADATA).write_text(json.dumps(metadata(cfg, threshold_info, run_dir), indent=2) + "\n")
        old = None
        if target.exists():
            old = model_dir / f".old-{version}-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_threshold(run_dir: Path, cfg: Config, model, *, threshold: float | None = None,
                      recalibrate: bool = False, skip_bad_images: bool = False,
                      verbose: bool = True) -> dict:
    """The run's threshold record: a manual value, the stored one, or a fresh calibration.

    A run without ``threshold.json`` (trained before calibration existed), or ``recalibrate``, is
    calibrated now on its held-out images (the same seeded split as in training) and the result is
    written to the run folder.
    """
    from .threshold import calibrate_threshold, manual_threshold, read_threshold, write_threshold

    if threshold is not None:
        return manual_threshold(threshold, cfg)
    info = None if recalibrate else read_threshold(run_dir)
    if info is None:
        from .data import load_train_set

        val_images = load_train_set(cfg, skip_bad=skip_bad_images).val_images
        info = calibrate_threshold(model, cfg, val_images)
        write_threshold(run_dir, info)
        if verbose:
            print(f"calibrated threshold: {info['threshold']} ({info['rule']})")
    return info


def export_run(run_dir: str | Path, export_dir: str | Path | None = None, *, model_name: str | None = None,
               version: int | None = None, overwrite: bool = False, threshold: float | None = None,
               recalibrate: bool = False, percentile: float | None = None,
               skip_bad_images: bool = False, verbose: bool = True) -> Path:
    """Export a finished run folder (config.json + model.weights.h5); returns the version folder."""
    import dataclasses

    from .training import load_run

    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    if percentile is not None:
        cfg = dataclasses.replace(cfg, threshold_percentile=float(percentile))
        recalibrate = True
    info = resolve_threshold(run_dir, cfg, model, threshold=threshold, recalibrate=recalibrate,
                             skip_bad_images=skip_bad_images, verbose=verbose)
    return export_model(model, cfg, export_dir or run_dir / "export", threshold_info=info,
                        model_name=model_name, version=version, overwrite=overwrite, run_dir=run_dir)


# ---------------------------------------------------------------------------------- loading
def find_saved_model(path: str | Path) -> Path:
    """The SavedModel folder meant by ``path``: a version folder, a model folder (latest version), an
    export folder holding one model, or a run folder (its ``export/``)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    for base in (path, path / "export"):
        if not base.is_dir():
            continue
        v = [n for n in versions(base) if (base / str(n) / "saved_model.pb").is_file()]
        if v:
            return base / str(v[-1])
        models = [d for d in sorted(base.iterdir()) if d.is_dir() and versions(d)]
        if len(models) == 1:
            return find_saved_model(models[0])
        if len(models) > 1:
            names = ", ".join(d.name for d in models)
            raise ExportError(f"{base} holds several models ({names}); pass one of them")
    raise ExportError(f"no SavedModel under {path}; expected <export_dir>/<model_name>/<version>/"
                      f"saved_model.pb (write one with python -m cbigan.export RUN_DIR)")


def read_metadata(saved_model_dir: str | Path) -> dict:
    path = Path(saved_model_dir) / "assets.extra" / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


class LoadedExport:
    """A SavedModel loaded with ``tf.saved_model.load``, called through its ``serving_default`` signature."""

    def __init__(self, path: str | Path):
        self.path = find_saved_model(path)
        self.meta = read_metadata(self.path)
        self.module = tf.saved_model.load(str(self.path))
        self.signature = self.module.signatures["serving_default"]

    @property
    def threshold(self):
        return self.meta.get("threshold")

    def __call__(self, images) -> dict:
        out = self.signature(images=tf.cast(tf.convert_to_tensor(images), tf.float32))
        return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cbigan.export",
        description="Write a TF Serving SavedModel <export-dir>/<model-name>/<version>/ of a trained run.")
    p.add_argument("run_dir", help="runs/<category>/<run> (config.json + model.weights.h5)")
    p.add_argument("--export-dir", default=None, help="base folder (default: RUN_DIR/export)")
    p.add_argument("--model-name", default=None, help="TF Serving model name (default: the category)")
    p.add_argument("--version", type=int, default=None,
                   help="version number (default: highest existing + 1, or 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --version (default: the highest existing one) instead of adding one")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None, help="use this decision threshold instead")
    g.add_argument("--threshold-percentile", type=float, default=None,
                   help="recalibrate on the held-out images at this percentile (rewrites threshold.json)")
    g.add_argument("--recalibrate", action="store_true",
                   help="recalibrate on the held-out images with the run's percentile")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable held-out images")
    args = p.parse_args(argv)
    try:
        target = export_run(args.run_dir, args.export_dir, model_name=args.model_name, version=args.version,
                            overwrite=args.overwrite, threshold=args.threshold,
                            recalibrate=args.recalibrate, percentile=args.threshold_percentile,
                            skip_bad_images=args.skip_bad_images)
    except (DataError, ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = read_metadata(target)
    thr = meta.get("threshold")
    print(f"exported {target}")
    print(f"threshold: {'none (no calibrated threshold; is_anomaly is always false)' if thr is None else thr}"
          f" - {meta.get('threshold_info', {}).get('rule', '')}")
    print(f"inspect: saved_model_cli show --dir {target} --all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
