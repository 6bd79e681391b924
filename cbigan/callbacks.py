"""Keras callbacks of a training run: step/time budget, CSV logs, NaN guard, periodic evaluation."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import keras
import numpy as np


def model_step(model) -> int:
    return int(keras.ops.convert_to_numpy(model.train_counter))


class NonFiniteLossError(RuntimeError):
    pass


class StepBudget(keras.callbacks.Callback):
    """Stops ``fit`` after ``steps`` batches in all or ``minutes`` of wall time, whichever comes first."""

    def __init__(self, steps: int, minutes: float | None = None):
        super().__init__()
        self.steps, self.minutes = int(steps), minutes
        self.start = None
        self.reason = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if model_step(self.model) >= self.steps:
            self.reason = f"reached {self.steps} steps"
            self.model.stop_training = True
        elif self.minutes is not None and time.monotonic() - self.start > 60.0 * self.minutes:
            self.reason = f"time budget of {self.minutes:g} min spent"
            self.model.stop_training = True


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the step and the loss term."""

    def __init__(self):
        super().__init__()
        self.error = None

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            v = float(value)
            if not math.isfinite(v):
                self.error = (f"loss '{name}' became {v} at step {model_step(self.model)}; training "
                              f"stopped (the last checkpoint is untouched). Lower the learning rates "
                              f"or alpha, or check the data")
                self.model.stop_training = True
                return


class StepCSVLogger(keras.callbacks.Callback):
    """One row per ``fit`` epoch (= ``log_every`` steps): step, wall time, and the mean of every loss.

    A row covers the steps after the previous row up to its ``step``; when training stops between two
    rows (budget, interruption) a last, shorter row is written so no step goes unlogged.
    """

    def __init__(self, path: Path, batch_size: int):
        super().__init__()
        self.path, self.batch_size = Path(path), batch_size
        self.t0 = self.t_last = None
        self.step_last = 0
        self.keys = None
        self.batch_logs = None

    def on_train_begin(self, logs=None):
        self.t0 = self.t_last = time.monotonic()
        self.step_last = model_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs = logs

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs)

    def on_train_end(self, logs=None):
        if model_step(self.model) > self.step_last and self.batch_logs is not None:
            self._write(self.batch_logs)

    def _write(self, logs):
        now, step = time.monotonic(), model_step(self.model)
        logs = {k: float(v) for k, v in (logs or {}).items()}
        rate = (step - self.step_last) * self.batch_size / max(now - self.t_last, 1e-9)
        row = {"step": step, "seconds": round(now - self.t0, 2), "images_per_s": round(rate, 1), **logs}
        self.t_last, self.step_last = now, step
        if self.keys is None:
            self.keys = list(row)
        append_csv(self.path, row, self.keys)


class PeriodicCallback(keras.callbacks.Callback):
    """Calls ``fn(step)`` at the end of each epoch in which the step counter crossed a multiple of
    ``every`` and, if ``at_end``, once more when training ends."""

    def __init__(self, every: int, fn, at_end: bool = True):
        super().__init__()
        self.every, self.fn, self.at_end = max(1, int(every)), fn, at_end
        self.last_done = self.last_step = None

    def on_train_begin(self, logs=None):
        self.last_done = model_step(self.model) // self.every

    def _call(self, step):
        self.last_step = step
        self.fn(step)

    def on_epoch_end(self, epoch, logs=None):
        step = model_step(self.model)
        if step // self.every > self.last_done:
            self.last_done = step // self.every
            self._call(step)

    def on_train_end(self, logs=None):
        step = model_step(self.model)
        if self.at_end and step != self.last_step:
            self._call(step)


def append_csv(path: Path, row: dict, keys: list | None = None) -> None:
    """Append one row to a CSV (flushed and synced), writing the header the first time."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if keys is None and not new:
        with open(path, newline="") as f:
            keys = next(csv.reader(f), None)
    keys = keys or list(row)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (round(v, 6) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())


def truncate_csv(path: Path, max_step: int) -> None:
    """Drop rows logged after ``max_step`` (written after the checkpoint a run resumes from); atomic."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    i = header.index("step") if "step" in header else 0
    keep = [r for r in body if len(r) == len(header) and r[i].isdigit() and int(r[i]) <= max_step]
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + keep)
    os.replace(tmp, path)


class Checkpointer(keras.callbacks.Callback):
    """Periodic backup of the whole training state, and a clean stop on SIGINT/SIGTERM.

    ``save(step)`` writes models, both optimizers, the EMA and the step counter (the random draws are
    keyed by the step, so that is the RNG state too). Nothing is saved once ``guard`` saw a
    non-finite loss: the last good checkpoint stays untouched.
    """

    def __init__(self, every: int, save, guard: "NaNGuard"):
        super().__init__()
        self.every, self.save, self.guard = max(1, int(every)), save, guard
        self.last_saved = None
        self.signal = None

    def request_stop(self, signum: int) -> None:
        self.signal = signum

    def on_train_begin(self, logs=None):
        self.last_saved = model_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.signal is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = model_step(self.model)
        if step - self.last_saved >= self.every:
            self._save(step)

    def on_train_end(self, logs=None):
        step = model_step(self.model)
        if step != self.last_saved:
            self._save(step)

    def _save(self, step):
        if self.guard.error is None:
            self.save(step)
            self.last_saved = step
