"""``python -m cbigan.bench serve``: images/s of the exported SavedModel vs the in-process Python path.

For 64 px and 128 px object models and a 512 px texture model (64 px patches, 64 per image), each at
batch 1 and batch 32, in one run, beside the ceiling that the graph's FLOPs and the machine's matrix
product rate allow:

* **SavedModel**: the export written by :func:`cbigan.serving.export.export_model`, loaded with
  ``tf.saved_model.load`` and called through its ``serving_default`` signature with a float32 batch of
  raw images at the model's resolution (resize, scaling, patching, scoring, maps: all in the graph);
* **Python path**: what ``evaluate.py`` does per batch: :func:`cbigan.data.pipeline.resize_uint8` then
  :class:`cbigan.scoring.parts.Scorer` (score parts only, combined on the host);
* **LiteRT**: the ``.tflite`` export (:func:`cbigan.serving.litert.write_litert`) run by
  :class:`cbigan.serving.litert.LiteRTModel` (XNNPACK, the interpreter's default threads), the resize before
  it in TensorFlow, and the ``.tflite`` model alone on model-size images ("LiteRT core"); ``n/a``
  without ``ai-edge-litert``.

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

    from cbigan.serving.litert import LiteRTMissing, LiteRTModel, interpreter_class, write_litert

    try:
        interpreter_class()
    except LiteRTMissing:
        return None
    path = write_litert(model, cfg, Path(tmp) / f"{cfg.category}.tflite",
                        threshold_info={"threshold": 0.0, "rule": "benchmark"})
    return LiteRTModel(path)


#: Models benchmarked: name -> (input kind, image size).
MODELS = {"object64": ("object", 64), "object128": ("object", 128), "texture512": ("texture", 512),
          "tiles_strip": ("tiles", 1024), "tiles640": ("tiles", 640)}
#: Tiles models: name -> (raw image (height, width), --scale), shaped like the README's recipe
#: (``--preset fast``: width 6, half the batches global views, ``map_max``): a 500x1250 surface strip
#: scaled to 0.8 on a 1024 px canvas, a 640x480 image on a 640 px canvas.
TILES = {"tiles_strip": ((500, 1250), 0.8), "tiles640": ((480, 640), 1.0)}
#: Tiles batches are capped here (a 1024 px canvas is up to 961 tiles; the batch figure is a batch of 4).
TILES_MAX_BATCH = 4


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``size`` x ``size`` matrix product in TensorFlow with the process's thread
    settings: the compute ceiling the serving figures are set against."""
    import tensorflow as tf

    a = tf.random.stateless_uniform((size, size), (1, 2))
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def _profiled_flops(fn, *specs) -> int:
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    concrete = tf.function(fn).get_concrete_function(*specs)
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    opts = opts.with_empty_output().build()
    return int(model_analyzer.profile(graph=concrete.graph, options=opts).total_float_ops)


def graph_flops(model, cfg, region=None) -> int:
    """Floating-point operations of the exported scoring graph for one image (TensorFlow's profiler on
    :meth:`cbigan.serving.export.ServingGraph.score_resized` at batch 1: networks, stitching, blur, score).

    Tiles with ``region`` (h, w): the graph scores a number of tiles known only at run time, which the
    profiler cannot count; the figure is the whole canvas's less the networks' FLOPs of the tiles it
    skips (:func:`cbigan.scoring.localization.needed_patches`)."""
    import tensorflow as tf

    from cbigan.serving.export import ServingGraph
    from cbigan.scoring.localization import blur_reach, needed_patches, patch_positions, map_settings
    from cbigan.core.anomaly_score import MAP_RULES
    from cbigan.model.networks import feature_extractor
    from cbigan.scoring.parts import score_patches

    s = cfg.image_size
    graph = ServingGraph(model, cfg, 0.0, region_only=False)
    full = _profiled_flops(graph.score_resized, tf.TensorSpec([1, s, s, 3], tf.uint8),
                           tf.TensorSpec([1, 2], tf.int32))
    if region is None:
        return full
    p = cfg.patch_size
    feats = feature_extractor(model.critic, cfg.feature_layer)
    per_tile = _profiled_flops(lambda x: score_patches(model.ema_encoder, model.ema_generator, feats, x),
                               tf.TensorSpec([1, p, p, 3], tf.float32))
    sigma, stride = map_settings(cfg)
    pos = patch_positions(s, p, stride)
    kept = int(tf.size(needed_patches(pos, p, s, tf.constant([list(region)], tf.int32), blur_reach(sigma),
                                      cfg.image_score not in MAP_RULES)))
    return full - (len(pos) ** 2 - kept) * per_tile


def run(*, batches: list[int], kinds: list[str], seconds: float, min_calls: int) -> int:
    """Images/s of the SavedModel, the Python path and the LiteRT export for each model of ``kinds``
    (:data:`MODELS` names, or ``object`` / ``texture`` / ``tiles`` for all of that kind) and batch size,
    each timed for at least ``seconds`` and ``min_calls`` calls, beside the FLOP ceiling; prints the figures.

    Tiles also show the serving graph on the whole canvas ("canvas": every tile, the path before issue 36,
    in-process), whose scores the SavedModel's must match (the max rel. score diff is against it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from cbigan.core.config import Config, resolve_config
    from cbigan.data.pipeline import resize_uint8
    from cbigan.serving.export import ServingGraph, export_model
    from cbigan.core.kinds import kind_of
    from cbigan.scoring.localization import ImageScorer
    from cbigan.model.gan import build_model
    from cbigan.scoring.parts import Scorer

    names = [n for k in kinds for n in ([k] if k in MODELS else [m for m, (kk, _) in MODELS.items() if kk == k])]
    unknown = [k for k in kinds if k not in MODELS and k not in {kk for kk, _ in MODELS.values()}]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)} or object, texture, tiles")
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else f"CPU ({os.cpu_count()} cores visible)"
    peak = peak_gflops()
    print(f"serve benchmark: TensorFlow {tf.__version__} on {device}; untrained width-3 models (tiles: "
          f"--preset fast, width 6); 2048 matmul: {peak:.0f} GFLOP/s (the ceiling = that / the graph's "
          f"FLOPs per image)")
    header = (f"{'model':<34} {'batch':>5} {'SavedModel':>10} {'canvas':>7} {'Python':>8} {'LiteRT':>8}"
              f" {'LiteRT core':>11} {'ceiling':>8}  img/s")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="cbigan-bench-serve-") as tmp:
        for name in dict.fromkeys(names):
            kind, size = MODELS[name]
            tiles = name in TILES
            if tiles:
                (rh, rw), scale = TILES[name]
                cfg = resolve_config(Config(category=f"bench_{name}", kind=kind, image_size=size, scale=scale,
                                            preset="fast"))
            else:
                rh = rw = size
                cfg = resolve_config(Config(category=f"bench_{name}", kind=kind, image_size=size))
            model = build_model(cfg)
            s = cfg.image_size
            fitted_one, region = kind_of(cfg).fit(np.zeros((1, rh, rw, 3), np.uint8), cfg)
            region = tuple(int(v) for v in region)
            flops = graph_flops(model, cfg, region if tiles else None)
            t0 = time.perf_counter()
            path = export_model(model, cfg, tmp, threshold_info={"threshold": 0.0, "rule": "benchmark"})
            export_s = time.perf_counter() - t0
            sig = tf.saved_model.load(str(path)).signatures["serving_default"]
            lite = _litert(model, cfg, tmp)
            canvas = ServingGraph(model, cfg, 0.0, region_only=False).python_fn() if tiles else None
            scorer = ImageScorer(model, cfg) if tiles else Scorer(model, cfg)
            label = f"{kind} {s} px"
            if tiles:
                label = f"tiles {rh}x{rw} on {s} px ({cfg.scale:g})"
            elif kind_of(cfg).is_patched:
                label += f" ({kind_of(cfg).patches_per_image(cfg)} patches)"
            for batch in dict.fromkeys(min(b, TILES_MAX_BATCH) if tiles else b for b in batches):
                raw = rng.integers(0, 256, (batch, rh, rw, 3), dtype=np.uint8)
                raw_f = tf.constant(raw.astype(np.float32))
                fitted, _ = kind_of(cfg).fit(raw, cfg)
                fitted = fitted.numpy()
                regions = np.tile(np.array([region], np.int32), (batch, 1))

                def served():
                    return sig(images=raw_f)["score"].numpy()

                if tiles:
                    def python():
                        x8, _ = kind_of(cfg).fit(raw, cfg)
                        return scorer(x8.numpy(), regions=regions)
                else:
                    def python():
                        x8 = resize_uint8(raw, s).numpy()
                        return scorer.score(x8).image_scores(cfg.score_lambda)

                a = np.asarray(served(), np.float64)
                b = canvas(raw_f)["score"].numpy() if tiles else python()
                rel = float(np.max(np.abs(a - b) / np.abs(b)))
                r_saved = _rate(served, batch, seconds, min_calls)
                r_canvas = f"{_rate(lambda: canvas(raw_f), batch, seconds, min_calls):.2f}" if tiles else "-"
                r_python = _rate(python, batch, seconds, min_calls)
                r_lite = r_core = "n/a"
                if lite is not None:
                    if not cfg.global_views:
                        rel = max(rel, float(np.max(np.abs(lite(raw)["score"] - a) / np.abs(a))))
                    r_lite = f"{_rate(lambda: lite(raw), batch, seconds, min_calls):.2f}"
                    r_core = f"{_rate(lambda: lite.run_resized(fitted, regions), batch, seconds, min_calls):.2f}"
                print(f"{label:<34} {batch:>5} {r_saved:>10.2f} {r_canvas:>7} {r_python:>8.2f} {r_lite:>8}"
                      f" {r_core:>11} {peak * 1e9 / flops:>8.1f}   (max rel. score diff {rel:.1e})", flush=True)
            print(f"{'':<34} {flops / 1e6:.1f} MFLOP per image; SavedModel export took {export_s:.1f} s")
    print("SavedModel: serving_default on float32 raw pixels (resize in the graph); canvas (tiles): the "
          "serving graph scoring every tile of the canvas (before issue 36), in-process; Python: evaluate.py's "
          "path; LiteRT: the .tflite export (XNNPACK) with the kind's resize before it in TensorFlow (tiles with "
          "a global view: its resize too); LiteRT core: the .tflite model alone on model-size uint8 images (and "
          "the global view's resize).")
    return 0
