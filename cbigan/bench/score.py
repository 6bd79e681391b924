"""Test-time scoring throughput: batched (``Scorer``) versus a per-patch loop like the original's.

``python -m cbigan.bench score [--texture-images 4] [--object-images 16] [--repeats 2]``

All ways run in the same process on the same images and the same model (freshly built: throughput does
not depend on the weights or on the image content), each after a warm-up call so that graph tracing is
not timed; the best of ``--repeats`` timings is kept:

* texture: 512x512 images, cut into 64 patches of 64x64 (the paper's protocol);
* object: 128x128 images, scored whole (one "patch" per image).

Ways compared:

* ``batched``: :meth:`cbigan.scoring.parts.Scorer.score`, the implementation every tool uses (all patches of
  several images in one compiled call);
* ``loop (original)``: the authors' ``score.py`` loop, one eager call of E, G and f_D per patch
  position, here one image at a time, i.e. one patch per call
  (:func:`cbigan.scoring.parts.score_patch_loop`);
* ``loop (original, all images/call)``: the same, with every image of the run in each call (the original
  batched images, 32 by default, but never the patches of one image);
* ``loop (compiled)``: the one-patch-per-call loop with each call compiled (``tf.function``): what batching alone buys.

Prints images/s and the speedups; the target is batched texture scoring >= 3x the per-patch loop.
"""

from __future__ import annotations

import os
import time

TARGET_TEXTURE_SPEEDUP = 3.0


def _best_rate(fn, n_images: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def bench_kind(kind: str, n_images: int, n_loop: int, repeats: int, seed: int = 0) -> dict:
    import numpy as np

    from cbigan.core.config import Config, resolve_config
    from cbigan.data.pipeline import to_model_range
    from cbigan.model.gan import build_model
    from cbigan.scoring.parts import Scorer, score_images, score_patch_loop, score_patches

    cfg = resolve_config(Config(category=f"bench_{kind}", kind=kind))  # the kind's defaults: 512/64, 128/128
    model = build_model(cfg)
    scorer = Scorer(model, cfg)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    loop_images = images[:max(1, n_loop)]

    def batched():
        score_images(scorer, images, progress=False)

    def loop_eager():
        score_patch_loop(scorer, loop_images, images_per_call=1)

    def loop_eager_batch():
        score_patch_loop(scorer, images, images_per_call=len(images))

    def loop_compiled():
        score_patch_loop(scorer, loop_images, images_per_call=1, compiled=True)

    batched()                                            # warm-up: trace every chunk shape
    score_patch_loop(scorer, images[:1], images_per_call=1, compiled=True)
    one = to_model_range(images[:1, :cfg.patch_size, :cfg.patch_size])  # eager warm-up: one patch
    score_patches(model.ema_encoder, model.ema_generator, scorer.features, one)
    return {"kind": kind, "image_size": cfg.image_size, "patches_per_image": scorer.patches_per_image,
            "n_batched": len(images), "n_loop": len(loop_images),
            "batched": _best_rate(batched, len(images), repeats),
            "loop_original": _best_rate(loop_eager, len(loop_images), 1),
            "loop_original_batch": _best_rate(loop_eager_batch, len(images), 1),
            "loop_compiled": _best_rate(loop_compiled, len(loop_images), repeats)}


def run(*, texture_images: int, texture_loop_images: int, object_images: int, object_loop_images: int,
        repeats: int) -> int:
    """Compare the ways of scoring on that many texture / object images (of which ``*_loop_images``
    through the one-patch-per-call loops), best of ``repeats``; prints the figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    print(f"scoring throughput, TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"devices: {', '.join(d.device_type for d in tf.config.list_physical_devices())}")
    rows = [bench_kind("texture", texture_images, texture_loop_images, repeats),
            bench_kind("object", object_images, object_loop_images, repeats)]
    print(f"{'':22} {'batched':>9} {'loop (original)':>17} {'loop (original,':>17} {'loop (compiled)':>17}")
    print(f"{'kind   image patches':22} {'':>9} {'1 patch/call':>17} {'all images/call)':>17} "
          f"{'1 patch/call':>17}   images/s (speedup of batched)")
    for r in rows:
        cells = [f"{r[k]:>9.3f} ({r['batched'] / r[k]:4.1f}x)"
                 for k in ("loop_original", "loop_original_batch", "loop_compiled")]
        print(f"{r['kind']:7} {r['image_size']:>3}px {r['patches_per_image']:>7}  {r['batched']:>9.2f} "
              + " ".join(cells))
    tex = rows[0]
    speedup = tex["batched"] / tex["loop_original"]
    print(f"images: {tex['n_batched']} textures / {rows[1]['n_batched']} objects (batched and all-images "
          f"loop), {tex['n_loop']} / {rows[1]['n_loop']} through the one-patch-per-call loops")
    print(f"texture target: batched >= {TARGET_TEXTURE_SPEEDUP:g}x the original's per-patch loop: "
          f"{speedup:.1f}x, {'met' if speedup >= TARGET_TEXTURE_SPEEDUP else 'NOT met'}")
    return 0
