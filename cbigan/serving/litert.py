"""LiteRT (TensorFlow Lite) export for edge devices: ``python -m cbigan.export RUN --format litert``.

Writes ``<export_dir>/litert/<model_name>.tflite`` (defaults: ``RUN/export``, the category) and beside
it ``<model_name>.json``: the run's config, threshold record, and the model's input and output names.

What is in the ``.tflite`` model: the frozen scoring graph :meth:`cbigan.serving.export.ServingGraph.score_resized`
(the networks, :func:`cbigan.scoring.localization.localize`, the image-score rule and the threshold), with the
inputs ``images_uint8`` uint8 ``[N, S, S, 3]`` (S = the model's image size) and ``regions`` int32
``[N, 2]`` (the ``(h, w)`` of each canvas that holds the image: ``(S, S)`` but for ``--kind tiles``),
and the outputs ``score`` [N], ``is_anomaly`` [N] (``score > threshold``), ``threshold`` [N],
``anomaly_map`` [N, S, S] and ``reconstruction`` [N, S, S, 3] (0..255), in the signature
``serving_default`` under the names ``output_<i>`` listed in the JSON (``outputs``).

What is not in it: the kind's resize (:meth:`cbigan.core.kinds.InputKind.fit`: an antialiased resize, or the
tiles canvas), for which LiteRT has no kernel. :class:`LiteRTModel` runs it before the model in
TensorFlow, the op evaluation runs (:func:`cbigan.data.pipeline.load_resized`), and for tiles cuts each map to
the image's region and resizes it to the input's size afterwards, as the SavedModel does
(:meth:`cbigan.serving.export.ServingGraph.serve_images`); so scores equal ``evaluate.py``'s (within 1e-4
relative, float32; ``tests/test_litert.py``).

The variables are folded into constants before conversion (an unfrozen graph reads its variables as
NaN in LiteRT and is not delegated). The interpreter is ``ai_edge_litert`` (``pip install
ai-edge-litert``) with its default CPU delegate, XNNPACK. Any batch size: the signature runner resizes
the inputs to each call's batch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from cbigan.core.config import STORED, Config, as_resolved, resolve_config
from cbigan.serving.export import ExportError, ServingGraph, global_views, load_for_export, metadata
from cbigan.core.runfolder import EXPORT, write_atomic, write_json_atomic

LITERT = "litert"          # the folder under the export folder
SUFFIX = ".tflite"
LITERT_FORMAT = 1
SIGNATURE = "serving_default"
INPUTS = {"images_uint8": "uint8 [N, S, S, 3]: the images after the kind's fit (resize or tiles canvas)",
          "regions": "int32 [N, 2]: (h, w) of each canvas that holds the image ((S, S) but for tiles)"}
#: The third input of a run with global views (tiles, ``--global-views``).
VIEWS_INPUT = {"views": "float32 [N, p, p, 3]: each image's region resized to one tile (p = the patch size) "
                        "in the model's range (cbigan.serving.export.global_views)"}
INSTALL = "pip install ai-edge-litert"


class LiteRTMissing(ExportError, ImportError):
    """The ``ai-edge-litert`` package is not installed."""


def interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter``, or a one-line error saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise LiteRTMissing(f"the LiteRT interpreter is not installed; {INSTALL}") from None
    return Interpreter


# ---------------------------------------------------------------------------------- conversion
def convert(graph: ServingGraph) -> tuple[bytes, dict]:
    """The ``.tflite`` bytes of ``graph``'s frozen scoring core, and ``{output_<i>: name}``."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    concrete = (graph._single_views if graph.cfg.global_views else graph._single).get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    # A dict is flattened in sorted key order: the order of the converted signature's output_<i>.
    names = sorted(concrete.structured_outputs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], trackable_obj=tf.Module())
    return converter.convert(), {f"output_{i}": k for i, k in enumerate(names)}


def litert_metadata(cfg: Config, threshold_info: dict | None, run_dir, outputs: dict) -> dict:
    """The JSON beside the ``.tflite`` file: :func:`cbigan.serving.export.metadata` plus what loading needs."""
    meta = metadata(cfg, threshold_info, run_dir)
    meta.pop("signatures", None)
    meta.update({
        "format": LITERT_FORMAT, "runtime": "litert", "signature": SIGNATURE,
        "inputs": {**INPUTS, **(VIEWS_INPUT if cfg.global_views else {})},
        "outputs": outputs, "outside_the_model": (
            "the kind's fit (cbigan.core.kinds.InputKind.fit) before it, and with global views their "
            "antialiased resize (cbigan.serving.export.global_views); for tiles the maps' region cut and resize to the "
            "input size (InputKind.to_input_size) after it"),
        "config": dataclasses.asdict(cfg),
    })
    return meta


def default_path(run_dir, export_dir=None, model_name: str | None = None, category: str = "") -> Path:
    return Path(export_dir or Path(run_dir) / EXPORT) / LITERT / f"{model_name or category}{SUFFIX}"


def export_litert(run_dir: str | Path, out_path: str | Path | None = None, *, export_dir=None,
                  model_name: str | None = None, threshold: float | None = None, recalibrate: bool = False,
                  percentile: float | None = None, skip_bad_images: bool = False, verbose: bool = True) -> Path:
    """Write the ``.tflite`` model of a finished run (and its JSON beside it); returns the file.

    ``out_path``: the file (default :func:`default_path`: ``RUN/export/litert/<category>.tflite``).
    The threshold is chosen as for the SavedModel (:func:`cbigan.serving.export.load_for_export`). Both files
    are written atomically (the model first); an existing model of that name is replaced.
    """
    run_dir = Path(run_dir)
    cfg, model, info = load_for_export(run_dir, threshold=threshold, recalibrate=recalibrate,
                                       percentile=percentile, skip_bad_images=skip_bad_images, verbose=verbose)
    path = Path(out_path) if out_path is not None else default_path(run_dir, export_dir, model_name,
                                                                    cfg.category)
    if path.suffix != SUFFIX:
        raise ExportError(f"a LiteRT model file ends in {SUFFIX}; got {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {path.parent}: {e.strerror}; choose another --export-dir") from None
    return write_litert(model, cfg, path, threshold_info=info, run_dir=run_dir)


def write_litert(model, cfg: Config, path: str | Path, *, threshold_info: dict | None = None,
                 run_dir=None) -> Path:
    """Convert ``model`` (a :class:`cbigan.model.gan.CBiGAN` of ``cfg``) and write ``path`` (``.tflite``) and
    its JSON, each atomically (the model first); returns ``path``."""
    path, cfg = Path(path), as_resolved(cfg)
    thr = None if threshold_info is None else threshold_info.get("threshold")
    data, outputs = convert(ServingGraph(model, cfg, thr))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
    write_json_atomic(metadata_path(path), litert_metadata(cfg, threshold_info, run_dir, outputs))
    return path


# ---------------------------------------------------------------------------------- loading
def metadata_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def is_litert(path: str | Path) -> bool:
    """A ``.tflite`` path, or a folder that holds one itself (an export folder with ``litert/`` beside a
    SavedModel is not: ``predict`` keeps using the SavedModel there)."""
    path = Path(path)
    return path.suffix == SUFFIX or bool(_models_in(path))


def _models_in(folder: Path) -> list[Path]:
    """The ``.tflite`` files of ``folder`` (not the hidden temporary ones of a write in progress)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith("."))


def find_litert(path: str | Path) -> Path:
    """The ``.tflite`` file meant by ``path``: the file, or the one in a folder, its ``litert/`` or a run
    folder's ``export/litert/``."""
    path = Path(path)
    if path.is_file():
        return path
    hint = "write one with python -m cbigan.export RUN_DIR --format litert"
    if path.suffix == SUFFIX:
        raise ExportError(f"no LiteRT model {path}; {hint}")
    for base in (path, path / LITERT, path / EXPORT / LITERT):
        found = _models_in(base)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ExportError(f"{base} holds several LiteRT models ({', '.join(p.name for p in found)}); "
                              f"pass one of them")
    raise ExportError(f"no LiteRT model ({SUFFIX}) under {path}; {hint}")


def read_litert_metadata(model_path: str | Path) -> dict:
    path = metadata_path(model_path)
    if not path.is_file():
        raise ExportError(f"{path} is missing: the LiteRT model's metadata (config, threshold, output "
                          f"names); export again with python -m cbigan.export RUN_DIR --format litert")
    return json.loads(path.read_text())


def config_from(data: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    return resolve_config(Config(**{k: v for k, v in data.items() if k in known}), source=STORED)


class LiteRTModel:
    """A ``.tflite`` export run by the LiteRT interpreter (XNNPACK), with the kind's fit around it.

    ``model(images)``: raw pixels [N, H, W, 3] (uint8, or 0..255 floats) of one size -> a dict of numpy
    arrays ``score``, ``is_anomaly``, ``threshold``, ``anomaly_map``, ``reconstruction``, as the
    SavedModel's ``serving_default`` returns them. ``num_threads``: the interpreter's threads (None:
    its default).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = find_litert(path)
        self.meta = read_litert_metadata(self.path)
        interpreter = interpreter_class()
        self.cfg = config_from(self.meta["config"])
        self.threshold = self.meta.get("threshold")
        self.rule = (self.meta.get("threshold_info") or {}).get("rule", "")
        self.image_size = self.cfg.image_size
        self.kind, self.scale = self.cfg.kind, float(self.cfg.scale)
        self.source = f"LiteRT {self.path}"
        self.interpreter = interpreter(model_path=str(self.path), num_threads=num_threads)
        self._runner = self.interpreter.get_signature_runner(self.meta.get("signature", SIGNATURE))
        self._outputs = self.meta["outputs"]

    def run_resized(self, images_uint8: np.ndarray, regions: np.ndarray) -> dict:
        """The model alone: fitted uint8 images [N, S, S, 3] and their regions [N, 2] -> outputs at S
        (with global views, their resize runs first, in TensorFlow)."""
        inputs = {"images_uint8": np.ascontiguousarray(images_uint8, np.uint8),
                  "regions": np.ascontiguousarray(regions, np.int32)}
        if self.cfg.global_views:
            views = global_views(inputs["images_uint8"], inputs["regions"], self.cfg)
            inputs["views"] = np.ascontiguousarray(np.asarray(views), np.float32)
        out = self._runner(**inputs)
        return {self._outputs[k]: v for k, v in out.items()}

    def __call__(self, images) -> dict:
        from cbigan.core.kinds import kind_of

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
            raise ValueError(f"images must be a batch of RGB images [N, H, W, 3]; got shape {images.shape}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        kind = kind_of(self.cfg)
        if images.dtype == np.uint8 and kind.fit_is_identity(images.shape[1], images.shape[2], self.cfg):
            # already at the model's size: no TensorFlow call (a few hundred microseconds at batch 1)
            regions = np.tile(np.array([images.shape[1:3]], np.int32), (images.shape[0], 1))
            return self.run_resized(images, regions)
        import tensorflow as tf

        x = tf.convert_to_tensor(images if images.dtype == np.uint8 else images.astype(np.float32))
        fitted, region = kind.fit(x, self.cfg)
        region = (int(region[0]), int(region[1]))
        regions = np.tile(np.array([region], np.int32), (images.shape[0], 1))
        out = self.run_resized(np.asarray(fitted), regions)
        for key in ("anomaly_map", "reconstruction"):  # tiles: back to the input's own size
            if key in out:
                out[key] = np.asarray(kind.to_input_size(tf.constant(out[key]), region, images.shape[1:3]))
        return out


