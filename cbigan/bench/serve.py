"""``python -m cbigan.bench serve``: images/s of the exported SavedModel vs the in-process Python path.

For a 128 px object model and a 512 px texture model (64 px patches, 64 per image), each at batch 1
and batch 32, in one run:

* **SavedModel**: the export written by :func:`cbigan.export.export_model`, loaded with
  ``tf.saved_model.load`` and called through its ``serving_default`` signature with a float32 batch of
  raw images at the model's resolution (resize, scaling, patching, scoring, maps: all in the graph);
* **Python path**: what ``evaluate.py`` does per batch: :func:`cbigan.data.resize_uint8` then
  :class:`cbigan.scoring.Scorer` (score parts only, combined on the host);
* **LiteRT**: the ``.tflite`` export (:func:`cbigan.litert.write_litert`) run by
  :class:`cbigan.litert.LiteRTModel` (XNNPACK, the interpreter's default threads), the resize before
  it in TensorFlow; ``n/a`` without ``ai-edge-litert``.

Weights are untrained (speed does not depend on them). Each figure is the mean over repeated calls
after one warm-up call, for at least ``--seconds`` and ``--min-calls`` calls.
"""

from __future__ import annotations

import os
import tempfile
import time


def _rate(fn, batch: int, seconds: float, min_calls: int) -> float:
    fn()  # warm-up: tracing / graph optimisation
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= min_calls and elapsed >= seconds:
            return calls * batch / elapsed


def _litert(model, cfg, tmp):
    """The model's LiteRT export, loaded; None without ``ai-edge-litert``."""
    from pathlib import Path

    from cbigan.litert import LiteRTMissing, LiteRTModel, interpreter_class, write_litert

    try:
        interpreter_class()
    except LiteRTMissing:
        return None
    path = write_litert(model, cfg, Path(tmp) / f"{cfg.category}.tflite",
                        threshold_info={"threshold": 0.0, "rule": "benchmark"})
    return LiteRTModel(path)


def run(*, batches: list[int], kinds: list[str], seconds: float, min_calls: int) -> int:
    """Images/s of the SavedModel and of the Python path for each kind (``object``, ``texture``) and
    batch size, each timed for at least ``seconds`` and ``min_calls`` calls; prints the figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from cbigan.config import Config
    from cbigan.data import resize_uint8
    from cbigan.export import export_model
    from cbigan.kinds import kind_of
    from cbigan.model import build_model
    from cbigan.scoring import Scorer

    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else f"CPU ({os.cpu_count()} cores visible)"
    print(f"serve benchmark: TensorFlow {tf.__version__} on {device}; untrained width-3 models")
    header = (f"{'model':<28} {'batch':>5} {'SavedModel img/s':>17} {'Python img/s':>13} {'ratio':>6}"
              f" {'LiteRT img/s':>13}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="cbigan-bench-serve-") as tmp:
        for kind in kinds:
            cfg = Config(category=f"bench_{kind}", kind=kind).resolved()
            model = build_model(cfg)
            t0 = time.perf_counter()
            path = export_model(model, cfg, tmp, threshold_info={"threshold": 0.0, "rule": "benchmark"})
            export_s = time.perf_counter() - t0
            sig = tf.saved_model.load(str(path)).signatures["serving_default"]
            lite = _litert(model, cfg, tmp)
            scorer = Scorer(model, cfg)
            s = cfg.image_size
            label = f"{kind} {s} px"
            if kind_of(cfg).is_patched:
                label += f" ({kind_of(cfg).patches_per_image(cfg)} patches)"
            for batch in batches:
                raw = rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
                raw_f = tf.constant(raw.astype(np.float32))

                def served():
                    return sig(images=raw_f)["score"].numpy()

                def python():
                    x8 = resize_uint8(raw, s).numpy()
                    return scorer.score(x8).image_scores(cfg.score_lambda)

                a = np.asarray(served(), np.float64)
                b = python()
                rel = float(np.max(np.abs(a - b) / np.abs(b)))
                r_saved = _rate(served, batch, seconds, min_calls)
                r_python = _rate(python, batch, seconds, min_calls)
                r_lite = "n/a" if lite is None else f"{_rate(lambda: lite(raw), batch, seconds, min_calls):.1f}"
                print(f"{label:<28} {batch:>5} {r_saved:>17.1f} {r_python:>13.1f} {r_saved / r_python:>6.2f}"
                      f" {r_lite:>13}   (max rel. score diff {rel:.1e})", flush=True)
            print(f"{'':<28} export took {export_s:.1f} s")
    return 0
