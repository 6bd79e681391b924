"""Keras callbacks of a training run: step/time budget, CSV logs, NaN guard, periodic evaluation."""

from __future__ import annotations

import csv
import math
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
    """One row per ``fit`` epoch (= ``log_every`` steps): step, wall time, and the mean of every loss."""

    def __init__(self, path: Path, batch_size: int):
        super().__init__()
        self.path, self.batch_size = Path(path), batch_size
        self.t0 = self.t_last = None
        self.step_last = 0
        self.keys = None

    def on_train_begin(self, logs=None):
        self.t0 = self.t_last = time.monotonic()
        self.step_last = model_step(self.model)

    def on_epoch_end(self, epoch, logs=None):
        now, step = time.monotonic(), model_step(self.model)
        logs = {k: float(v) for k, v in (logs or {}).items()}
        rate = (step - self.step_last) * self.batch_size / max(now - self.t_last, 1e-9)
        row = {"step": step, "seconds": round(now - self.t0, 2), "images_per_s": round(rate, 1), **logs}
        self.t_last, self.step_last = now, step
        new = not self.path.exists()
        if self.keys is None:
            self.keys = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


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


def append_csv(path: Path, row: dict) -> None:
    """Append one row to a CSV, writing the header the first time."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (round(v, 6) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
