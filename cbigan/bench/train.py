"""Training throughput against the yardstick: ``python -m cbigan.bench train``.

What is timed is the train step, never a whole ``fit`` call (the end of each ``fit`` waits for
tf.data's autotune thread, which distorts the figures; why: docs/decisions.md):

* **ours**: the function ``train.py`` runs, Keras's compiled ``model.train_function``, called on one
  long-lived iterator over an in-memory batch, at each kind's defaults (paper preset: batch 32, d_iter
  5, the ``tf.cond`` branch, trackers, EMA every 10 steps), with a timestamp after every step; a
  measurement is a whole number of d_iter cycles after a warm-up cycle (tracing), and the figure is the
  median over ``--repeats``;
* **yardstick**: ``../shared/bench/reference_step.py`` (the original's step structure: every forward
  pass, the penalty and the consistency terms at every step, Python-bool branches), run unchanged in
  the same process (so with the same thread settings), once per round, after ours;
* ``--previous``: also our step as it was before the gradient penalty got its own critic call (one
  critic call on the concatenated real / fake / interpolated batch of 3B, differentiated twice), to
  show what the split buys.

Each thread setting (``--threads``, TF's intra-op pool; 0 = TF's default) runs in a child process of
its own, because TensorFlow fixes its thread pools when its context starts; the settings alternate,
one child per round (``--repeats`` rounds). The figures are printed as
``ours / yardstick``, a ratio taken in one process, so it holds on a noisy machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad"
REFERENCE_STEP = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "reference_step.py"


def set_threads(intra_op: int) -> None:
    """TF's intra-op thread count (0 = TF's default); before anything starts TF's context."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))


def _model(size: int, batch: int, previous: bool = False, precision: str = "float32"):
    import tensorflow as tf

    from cbigan.model import losses as L
    from cbigan.core.config import Config, resolve_config
    from cbigan.model.gan import CBiGAN, build_model

    # the paper preset's step at this input size (64 px: texture patches and fast-preset objects)
    cfg = resolve_config(Config(category="bench", kind="object", batch_size=batch, image_size=size,
                                patch_size=size, precision=precision))
    model = build_model(cfg)
    if previous:
        class PreviousCBiGAN(CBiGAN):
            """The step before the split: the penalty inside one critic call on [x; G(z); x^] (3B)."""

            def critic_losses(self, x, z, eps):
                ex = tf.stop_gradient(self.encoder(x, training=True))
                gz = tf.stop_gradient(self.generator(z, training=True))
                x_hat, z_hat = L.interpolate(x, gz, z, ex, eps)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch([x_hat, z_hat])
                    scores = self.critic([tf.concat([x, gz, x_hat], 0), tf.concat([ex, z, z_hat], 0)],
                                         training=True)
                    d_real, d_fake, d_hat = tf.split(scores, 3, axis=0)
                gp = L.penalty_from_gradients(*tape.gradient(d_hat, [x_hat, z_hat]))
                d_real, d_fake = tf.reduce_mean(d_real), tf.reduce_mean(d_fake)
                return {"loss_d": L.critic_loss(d_real, d_fake, gp, self.gp_weight), "gp": gp,
                        "d_real": d_real, "d_fake": d_fake}

        m = PreviousCBiGAN(model.encoder, model.generator, model.critic, alpha=cfg.alpha, d_iter=cfg.d_iter,
                           gp_weight=cfg.gp_weight, ema_decay=cfg.ema_decay, ema_every=cfg.ema_every,
                           seed=cfg.seed)
        m.build((None, size, size, 3))
        m.compile(d_optimizer=model.d_optimizer.__class__.from_config(model.d_optimizer.get_config()),
                  eg_optimizer=model.eg_optimizer.__class__.from_config(model.eg_optimizer.get_config()))
        model = m
    return model, cfg


class StepTimer:
    """Our compiled train function on one long-lived iterator over an in-memory batch."""

    def __init__(self, size: int, batch: int, previous: bool = False, precision: str = "float32"):
        import numpy as np
        import tensorflow as tf

        self.model, self.cfg = _model(size, batch, previous, precision)
        x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)), tf.float32)
        self.iterator = iter(tf.data.Dataset.from_tensors(x).repeat())
        self.model.make_train_function()
        self.fn = self.model.train_function  # what fit calls once per batch
        self.cycle = self.cfg.d_iter + 1
        self.batch = batch
        # warm-up: traces the graph, builds the optimizer state, runs each branch (critic, E+G, EMA)
        self.steps(2 * self.cycle + self.cfg.ema_every)

    def steps(self, n: int) -> list[float]:
        """Run ``n`` steps; the seconds of each (a timestamp after every step's result is on the host)."""
        out, t = [], time.perf_counter()
        for _ in range(n):
            logs = self.fn(self.iterator)
            float(logs["loss_d"])  # the step is done (and its result read) before the clock is read
            now = time.perf_counter()
            out.append(now - t)
            t = now
        return out

    def images_per_second(self, cycles: int) -> float:
        times = self.steps(cycles * self.cycle)
        return len(times) * self.batch / sum(times)


def _load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("cbigan_reference_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_images_per_second(module, size: int, batch: int, steps: int) -> float:
    """One unchanged run of the yardstick's ``main`` in this process; its printed img/s."""
    argv, out = sys.argv, io.StringIO()
    sys.argv = [str(REFERENCE_STEP), "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    try:
        with contextlib.redirect_stdout(out):
            module.main()
    finally:
        sys.argv = argv
    return float(json.loads(out.getvalue().strip().splitlines()[-1])["img_per_s"])


def measure(*, threads: int, sizes, batch_size: int, cycles: int, repeats: int, previous: bool,
            reference: Path | None, precision: str = "float32") -> dict:
    """Child process: every figure at one thread setting; returns {size: {name: [img/s per repeat]}}."""
    set_threads(threads)
    import keras

    module = _load_reference(reference) if reference is not None and reference.is_file() else None
    result = {}
    for size in sizes:
        ours = StepTimer(size, batch_size, precision=precision)
        prev = StepTimer(size, batch_size, previous=True) if previous else None
        rows = {"ours": [], "yardstick": [], "previous": []}
        for _ in range(repeats):  # alternate, so that a load change hits every figure alike
            rows["ours"].append(ours.images_per_second(cycles))
            if prev is not None:
                rows["previous"].append(prev.images_per_second(cycles))
            if module is not None:
                rows["yardstick"].append(reference_images_per_second(module, size, batch_size,
                                                                     cycles * ours.cycle))
        result[size] = {k: v for k, v in rows.items() if v}
        del ours, prev
        keras.backend.clear_session()
    return result


def _child(args: dict) -> dict:
    cmd = [sys.executable, "-m", "cbigan.bench.train", json.dumps(args)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {' '.join(cmd[:4])}")
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def _load() -> str:
    try:
        return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def run(*, batch_size: int, cycles: int, repeats: int, sizes, threads, previous: bool,
        reference: str | None, precision: str = "float32") -> int:
    """Print ours vs the yardstick (img/s, median of ``repeats``) per thread setting and input size."""
    ref = Path(reference) if reference else REFERENCE_STEP
    have_ref = ref.is_file()
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, {_load()}; batch {batch_size}; "
          f"{cycles} timed d_iter cycles (5 critic + 1 E+G steps) per measurement, median of {repeats}; "
          f"yardstick: {ref if have_ref else 'absent (' + str(ref) + ')'}; ours in {precision}"
          + ("" if precision == "float32" else " (the yardstick and --previous in float32)"), flush=True)
    # thread settings alternate (A B A B ...), one child process per measurement round, so that a change
    # of machine load between processes hits each setting alike
    runs = {}
    for r in range(repeats):
        for n in threads:
            res = _child({"threads": n, "sizes": list(sizes), "batch_size": batch_size, "cycles": cycles,
                          "repeats": 1, "previous": previous, "reference": str(ref) if have_ref else None,
                          "precision": precision})
            for size, rows in res.items():
                for k, v in rows.items():
                    runs.setdefault((n, size), {}).setdefault(k, []).extend(v)
            print(f"  round {r + 1}/{repeats}, threads {n or 'default'}: " + "; ".join(
                f"{size} px " + ", ".join(f"{k} {v[0]:.1f}" for k, v in rows.items()) for size, rows in res.items()),
                flush=True)
    table = []
    for (n, size), rows in runs.items():
        med = {k: statistics.median(v) for k, v in rows.items()}
        table.append((n, size, med))
        line = f"threads {n or 'default':>7}  {size:3d} px   ours {med['ours']:7.1f} img/s"
        if "previous" in med:
            line += f"   previous step {med['previous']:7.1f} ({med['ours'] / med['previous']:.2f}x)"
        if "yardstick" in med:
            per_round = statistics.median(o / y for o, y in zip(rows["ours"], rows["yardstick"]))
            line += (f"   yardstick {med['yardstick']:7.1f} img/s   ours / yardstick "
                     f"{med['ours'] / med['yardstick']:.2f}x (median of the rounds' ratios {per_round:.2f}x)")
        print(line, flush=True)
    if len(threads) > 1:
        base = {size: med["ours"] for n, size, med in table if n == threads[0]}
        for n, size, med in table:
            if n != threads[0]:
                print(f"ours, {size} px: threads {n or 'default'} / threads {threads[0] or 'default'} = "
                      f"{med['ours'] / base[size]:.2f}x")
        ref0 = {size: med.get("yardstick") for n, size, med in table if n == threads[0]}
        for n, size, med in table:
            if n != threads[0] and ref0.get(size):
                print(f"ours at threads {n or 'default'} / yardstick at threads {threads[0] or 'default'}, "
                      f"{size} px = {med['ours'] / ref0[size]:.2f}x")
    print(_load())
    return 0


if __name__ == "__main__":  # the child process of one thread setting
    child = json.loads(sys.argv[1])
    child["reference"] = Path(child["reference"]) if child["reference"] else None
    print(json.dumps(measure(**child)))
