"""Where the train step's time goes, op by op, against the yardstick: ``python -m cbigan.bench ops``.

TensorFlow's profiler (``tf.profiler.experimental``) records every kernel that the executor threads
run; the times are summed per op type (``Conv2DBackpropFilter``, ``LeakyRelu``, ...) for

* **ours**: ``--steps`` calls of the compiled ``model.train_function`` (:class:`cbigan.bench.train.StepTimer`,
  after its warm-up), i.e. whole d_iter cycles of critic and E+G steps with their trackers and EMA;
* **yardstick**: ``../shared/bench/reference_step.py`` run unchanged for ``--steps`` steps, profiled
  over exactly its own timed loop: the profiler starts and stops at the script's two
  ``time.perf_counter()`` calls around that loop (its ``time`` module is swapped for a shim while it
  runs), so its warm-up and tracing are left out, as ours are.

Both run in this process, so with the same thread settings (``--threads``; 0 = TensorFlow's default).
The table answers "does our step do less work, or the same work faster?": op counts and kernel times
side by side. Times are summed over threads (two executor threads busy at once count twice).
"""

from __future__ import annotations

import collections
import contextlib
import glob
import io
import os
import sys
import tempfile
from pathlib import Path

from cbigan.bench.train import REFERENCE_STEP, StepTimer, _load_reference, set_threads


def op_times(logdir) -> tuple[collections.Counter, collections.Counter]:
    """(milliseconds, count) per op type in the newest profile under ``logdir`` (the executor
    threads' kernel events, named ``<node>:<OpType>``)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(str(logdir), "**", "*.xplane.pb"), recursive=True))
    if not files:
        raise RuntimeError(f"no profile written under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(files[-1]).read_bytes())
    ms, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:  # "<node>:<OpType>", not "Executor::Process"
                    op = name.rsplit(":", 1)[1]
                    ms[op] += event.duration_ps / 1e9
                    count[op] += 1
    return ms, count


@contextlib.contextmanager
def _profiled(tmp: str, name: str):
    import tensorflow as tf

    logdir = os.path.join(tmp, name)
    tf.profiler.experimental.start(logdir)
    try:
        yield logdir
    finally:
        tf.profiler.experimental.stop()


class _ProfiledClock:
    """Stands in for the yardstick's ``time`` module: its first ``perf_counter()`` (just before the
    timed loop) starts the profiler, the second (after the loop's last result is read) stops it."""

    def __init__(self, logdir: str):
        import time

        self._time, self.logdir, self.calls = time, logdir, 0

    def perf_counter(self) -> float:
        import tensorflow as tf

        self.calls += 1
        if self.calls == 2:
            tf.profiler.experimental.stop()
        now = self._time.perf_counter()
        if self.calls == 1:
            tf.profiler.experimental.start(self.logdir)
        return now

    def __getattr__(self, name):
        return getattr(self._time, name)


def _profile_reference(module, logdir: str, size: int, batch: int, steps: int) -> None:
    """Run the yardstick's ``main`` unchanged, profiling its timed loop only (:class:`_ProfiledClock`)."""
    argv, out, clock = sys.argv, io.StringIO(), _ProfiledClock(logdir)
    sys.argv = [str(REFERENCE_STEP), "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    saved = module.time
    module.time = clock
    try:
        with contextlib.redirect_stdout(out):
            module.main()
    finally:
        module.time, sys.argv = saved, argv
    if clock.calls < 2:
        raise RuntimeError("the yardstick did not time its loop with two time.perf_counter() calls")


def run(*, size: int, batch_size: int, steps: int, threads: int, top: int, reference: str | None) -> int:
    """Print the per-op-type kernel time of ``steps`` steps of ours and of the yardstick."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    set_threads(threads)
    ref = Path(reference) if reference else REFERENCE_STEP
    timer = StepTimer(size, batch_size)
    steps = max(timer.cycle, steps // timer.cycle * timer.cycle)  # whole d_iter cycles
    with tempfile.TemporaryDirectory(prefix="cbigan-bench-ops-") as tmp:
        with _profiled(tmp, "ours") as d:
            timer.steps(steps)
        ours = op_times(d)
        theirs = None
        if ref.is_file():
            d = os.path.join(tmp, "yardstick")
            _profile_reference(_load_reference(ref), d, size, batch_size, steps)
            theirs = op_times(d)
    print(f"op time of {steps} train steps ({steps // timer.cycle} d_iter cycles) at {size} px, batch "
          f"{batch_size}, intra-op threads {threads or 'default'}; milliseconds summed over TensorFlow's "
          f"executor threads; yardstick: {ref if theirs else 'absent (' + str(ref) + ')'}")
    keys = set(ours[0]) | (set(theirs[0]) if theirs else set())
    order = sorted(keys, key=lambda k: -(ours[0][k] + (theirs[0][k] if theirs else 0.0)))
    print(f"{'op type':<42} {'ours ms':>9} {'calls':>7} {'yardstick ms':>13} {'calls':>7}")
    for k in order[:top]:
        other = f"{theirs[0][k]:13.1f} {theirs[1][k]:7d}" if theirs else f"{'':>13} {'':>7}"
        print(f"{k[:42]:<42} {ours[0][k]:9.1f} {ours[1][k]:7d} {other}")
    total = sum(ours[0].values()), sum(ours[1].values())
    line = f"{'all op types':<42} {total[0]:9.1f} {total[1]:7d}"
    if theirs:
        line += f" {sum(theirs[0].values()):13.1f} {sum(theirs[1].values()):7d}"
    print(line)
    return 0
