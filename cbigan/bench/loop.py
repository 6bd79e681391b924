"""Where a real training run's wall time goes: ``python -m cbigan.bench loop``.

Runs ``cbigan.training.run.train`` as ``train.py`` would (``--preset fast`` by default, real data,
``--steps`` steps, no export) in a temporary output folder, with timers around the compiled train
function (each call is one train step, input included: the batch comes from the prefetched tf.data
iterator inside it) and around the work between steps: evaluation and snapshot selection, backups
and snapshot writes, previews, the CSV/TensorBoard logs. Prints, for the ``fit`` loop:

* the share of its wall time outside the train steps, with and without the first call (graph
  tracing, a one-time cost that a 15-minute run amortises), and what each part of it costs;
* the same projected to a 15-minute run: the recurring costs per step stay, tracing is paid once
  (twice over: first with only the first train step's tracing paid once, an upper bound; then with
  the first evaluation's and the first preview's calls, which trace the scoring graphs, paid once too).

Timers are Python wrappers installed for the run and removed after; nothing in the training code
knows about them.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad"


EVALUATION = "evaluation + selection (incl. its snapshot writes)"
PREVIEWS = "previews"


class Timers:
    def __init__(self):
        self.total = collections.defaultdict(float)
        self.count = collections.defaultdict(int)
        self.first = {}  # label -> seconds of its first call
        self.step_times = []

    def add(self, name: str, seconds: float) -> None:
        self.first.setdefault(name, seconds)
        self.total[name] += seconds
        self.count[name] += 1


@contextmanager
def _patched(timers: Timers):
    """Timing wrappers around the train function and the periodic work of a run."""
    from cbigan.training import callbacks as cb, monitor, run as training
    from cbigan.model.gan import CBiGAN

    saved = []

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.add(label, time.perf_counter() - t)

        saved.append((owner, name, original))
        setattr(owner, name, timed)

    original_make = CBiGAN.make_train_function

    def make_train_function(self, force=False):
        out = original_make(self, force)
        fn = self.train_function
        if getattr(fn, "_bench_timed", False):
            return out

        def timed(iterator):
            t = time.perf_counter()
            logs = fn(iterator)
            timers.step_times.append(time.perf_counter() - t)
            return logs

        timed._bench_timed = True
        self.train_function = timed
        return out

    saved.append((CBiGAN, "make_train_function", original_make))
    CBiGAN.make_train_function = make_train_function
    original_fit = CBiGAN.fit

    def fit(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            timers.add("fit (the training loop)", time.perf_counter() - t)

    saved.append((CBiGAN, "fit", original_fit))
    CBiGAN.fit = fit
    wrap(monitor.TrainingMonitor, "evaluate", EVALUATION)
    wrap(monitor.TrainingMonitor, "monitor", "evaluation, of which test-set monitoring")
    wrap(monitor.TrainingMonitor, "preview", PREVIEWS)
    wrap(monitor.TrainingMonitor, "_save_selected", "selected-snapshot bookkeeping")
    wrap(training, "save_weights_atomic", "weights writes (.h5: backups, snapshot, final)")
    wrap(cb.StepCSVLogger, "_write", "train_log.csv rows")
    wrap(cb.TensorBoardLogger, "on_epoch_end", "TensorBoard scalars")
    for name in ("load_train_set", "load_test_set", "build_model", "calibrate_threshold", "make_preview_gif"):
        if hasattr(training, name):
            wrap(training, name, f"(outside fit) {name}")
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def measure(category: str, data_dir: Path, steps: int, preset: str, intra_op_threads: int | None = None) -> dict:
    from cbigan.core.config import Config, apply_preset, resolve_config
    from cbigan.training.run import train

    timers = Timers()
    with tempfile.TemporaryDirectory(prefix="cbigan-bench-loop-") as out:
        cfg = dataclasses.replace(apply_preset(Config(category=category), preset), data_dir=str(data_dir),
                                  output_dir=out, run_name="bench", steps=int(steps),
                                  intra_op_threads=intra_op_threads)
        t = time.perf_counter()
        with _patched(timers):
            train(cfg, verbose=0, export=False)  # an unknown category's kind chosen as train.py does
        wall = time.perf_counter() - t
    import tensorflow as tf


    return {"timers": timers, "wall": wall, "cfg": resolve_config(cfg, infer=True),
            "threads": tf.config.threading.get_intra_op_parallelism_threads()}


def report(category: str, res: dict, minutes: float = 15.0) -> None:
    t: Timers = res["timers"]
    fit = t.total["fit (the training loop)"]
    steps = t.step_times
    first, rest = steps[0], steps[1:]
    in_steps = sum(rest)
    outside = fit - in_steps - first
    print(f"\n{category}: {len(steps)} steps ({res['cfg'].preset} preset, {res['cfg'].patch_size} px, batch "
          f"{res['cfg'].batch_size}, intra-op threads {res['threads'] or 'TensorFlow default'}); whole train() "
          f"{res['wall']:.1f} s, fit loop {fit:.1f} s")
    print(f"  train steps (after the first) {in_steps:7.1f} s  ({len(rest) / in_steps:.1f} steps/s)")
    print(f"  first step (graph tracing)    {first:7.1f} s")
    print("  of which (timers may nest: snapshot writes are inside the evaluation, weights writes inside both):")
    for name in sorted(t.total):
        if name.startswith("(outside fit)") or name == "fit (the training loop)":
            continue
        print(f"    {name:52s} {t.total[name]:6.2f} s in {t.count[name]} calls")
    print(f"  outside the train steps: {100 * (fit - in_steps) / fit:.1f}% of the fit loop "
          f"({100 * outside / (fit - first):.1f}% without the first call's tracing)")
    per_step = outside / max(1, len(rest))
    step_s = in_steps / max(1, len(rest))
    n15 = (60 * minutes - first) / (step_s + per_step)
    print(f"  projected to a {minutes:g}-minute run: {n15:,.0f} steps, outside the steps "
          f"{100 * (first + per_step * n15) / (60 * minutes):.1f}% (the first step's tracing once, everything "
          f"else per step as in this run: an overestimate, since this run's first evaluation and preview "
          f"(tracing) and its end-of-run writes recur in it)")
    # the first evaluation and the first preview trace their scoring graphs: one-time costs, as the
    # first step's tracing (the later calls of each are the recurring cost)
    once = [t.first.get(k, 0.0) for k in (EVALUATION, PREVIEWS)]
    per_step = (outside - sum(once)) / max(1, len(rest))
    n15 = (60 * minutes - first - sum(once)) / (step_s + per_step)
    print(f"  projected with the first evaluation and preview ({once[0]:.2f} s, {once[1]:.2f} s: graph tracing) "
          f"also paid once: {n15:,.0f} steps, outside the steps "
          f"{100 * (first + sum(once) + per_step * n15) / (60 * minutes):.1f}%")
    for name in sorted(t.total):
        if name.startswith("(outside fit)"):
            print(f"  {name:54s} {t.total[name]:6.2f} s")


def run(*, data: str | None, categories, steps: int, preset: str, intra_op_threads: int | None = None) -> int:
    """Times one run per category (``intra_op_threads``: as train.py's ``--intra-op-threads``; None: the
    measured choice of :data:`cbigan.training.machine.INTRA_OP_THREADS`; one setting per process)."""
    data_dir = Path(data or DEFAULT_DATA)
    try:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    print(f"training loop, {preset} preset, {steps} steps per run, data {data_dir}; load average {load}")
    for category in categories:
        if not (data_dir / category / "train" / "good").is_dir():
            print(f"(no data at {data_dir / category}: skipped)")
            continue
        report(category, measure(category, data_dir, steps, preset, intra_op_threads))
    try:
        print("load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))
    except OSError:
        pass
    return 0
