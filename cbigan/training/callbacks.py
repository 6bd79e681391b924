"""Keras callbacks of a training run: step/time budget, CSV logs, NaN guard, periodic evaluation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from cbigan.core.runfolder import append_csv, last_logged_row


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


def human_duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``5.3 h``, ``9.6 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


#: Suggested instead of a job this long on a machine without a GPU.
LONG_CPU_JOB_S = 3600.0
SUGGESTED_CPU_MINUTES = 15


def duration_message(total_steps: int, done_steps: int, steps_per_s: float, minutes: float | None = None,
                     preset: str = "paper", gpu: bool = True) -> str:
    """What the run will cost, from a measured speed. When ``--minutes`` stops it before ``total_steps``,
    the time budget and about how many steps it gives (not how long all the steps would take: a
    15-minute run is not a 2.6-day job); else the expected duration of all ``total_steps`` and of those
    left after ``done_steps``. On a machine without a GPU, when the whole job would take more than
    :data:`LONG_CPU_JOB_S` and the preset is not ``fast``, the ``--preset fast --minutes N`` hint."""
    rate = max(float(steps_per_s), 1e-9)
    eta = max(0, int(total_steps) - int(done_steps)) / rate
    if minutes is not None and eta > 60.0 * minutes:
        text = (f"speed: {rate:.3g} steps/s; training for {minutes:g} min (--minutes {minutes:g}): "
                f"it stops after about {int(done_steps + rate * 60.0 * minutes):,} steps at this rate")
    else:
        text = (f"speed: {rate:.3g} steps/s; {int(total_steps):,} steps would take about "
                f"{human_duration(int(total_steps) / rate)} in all")
        if int(done_steps) > 0:
            text += f" ({human_duration(eta)} from step {int(done_steps):,})"
    if not gpu and preset != "fast" and eta > LONG_CPU_JOB_S:
        n = f"{minutes:g}" if minutes is not None else str(SUGGESTED_CPU_MINUTES)
        text += (f"\nno GPU: --preset {preset} is a GPU job (the paper's {int(total_steps):,} steps would take "
                 f"about {human_duration(int(total_steps) / rate)}). On a CPU use the preset made for "
                 f"minutes: --preset fast --minutes {n} (results/NOTES.md)")
    return text


class DurationEstimate(keras.callbacks.Callback):
    """Prints :func:`duration_message` once, from the speed measured over ``measure_s`` seconds after
    ``warmup`` batches (the first ones include tracing). A pause between two batches longer than
    ``long_gap_s`` (a tiles run's first evaluation: half a minute) is left out, so one such early pause
    does not make the estimate of a run's steps a fraction of what it makes; shorter ones (the
    selection, backups: they recur all run long) count. Nothing for runs shorter than that."""

    def __init__(self, total_steps: int, minutes: float | None = None, preset: str = "paper",
                 gpu: bool = True, warmup: int = 5, measure_s: float = 20.0, long_gap_s: float = 2.0,
                 print_fn=print):
        super().__init__()
        self.total_steps, self.minutes, self.preset, self.gpu = int(total_steps), minutes, preset, gpu
        self.warmup, self.measure_s, self.print_fn = int(warmup), float(measure_s), print_fn
        self.long_gap_s = float(long_gap_s)
        self.batches = 0
        self.step_warm = None
        self.batch_s = 0.0      # seconds measured since the warm-up (batches and short pauses)
        self.t_batch = self.t_end = None
        self.message = None

    def on_train_batch_begin(self, batch, logs=None):
        self.t_batch = time.monotonic()
        if self.step_warm is not None and self.t_end is not None and self.message is None:
            gap = self.t_batch - self.t_end
            if gap < self.long_gap_s:
                self.batch_s += gap

    def on_train_batch_end(self, batch, logs=None):
        if self.message is not None:
            return
        self.batches += 1
        if self.batches == self.warmup:
            self.step_warm, self.t_end = model_step(self.model), time.monotonic()
        elif self.step_warm is not None:
            if self.t_batch is not None:
                self.batch_s += time.monotonic() - self.t_batch
            self.t_end = time.monotonic()
            if self.batch_s >= self.measure_s:
                step = model_step(self.model)
                rate = (step - self.step_warm) / max(self.batch_s, 1e-9)
                if rate > 0:
                    self.message = duration_message(self.total_steps, step, rate, self.minutes, self.preset,
                                                    self.gpu)
                    self.print_fn("\n" + self.message, flush=True)


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the step and the loss term.

    ``last_checkpoint``: a callable returning the step of the last backup written, or None when there
    is none yet, so the message says whether there is a checkpoint to resume from (without it the
    message does not claim one).
    """

    def __init__(self, last_checkpoint=None):
        super().__init__()
        self.error = None
        self.last_checkpoint = last_checkpoint

    def _checkpoint_note(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint is written after this point"
        step = self.last_checkpoint()
        if step is None:
            return "no checkpoint had been saved yet, so there is nothing to resume from"
        return f"the last checkpoint, of step {step}, is kept untouched"

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            v = float(value)
            if not math.isfinite(v):
                self.error = (f"loss '{name}' became {v} at step {model_step(self.model)}; training "
                              f"stopped ({self._checkpoint_note()}). Lower the learning rates "
                              f"or alpha, or check the data")
                self.model.stop_training = True
                return


class StepCSVLogger(keras.callbacks.Callback):
    """One row per ``fit`` epoch (= ``log_every`` steps): step, wall time, and the mean of every loss.

    A row covers the steps after the previous row up to its ``step``; when training stops between two
    rows (budget, interruption) a last, shorter row is written so no step goes unlogged. ``seconds``
    is the run's training time: a resumed run counts on from the last row at or before its step.
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
        before = last_logged_row(self.path, max_step=self.step_last) if self.step_last > 0 else None
        try:
            self.t0 -= float(before["seconds"]) if before else 0.0
        except (KeyError, TypeError, ValueError):  # a log without a usable seconds column
            pass

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


class TensorBoardLogger(keras.callbacks.Callback):
    """TensorBoard event files of a run (``<run>/tensorboard/``, ``tensorboard --logdir runs/``).

    As a callback: the mean of every loss over each ``fit`` epoch (= ``log_every`` steps, the rows of
    ``train_log.csv``) under ``train/<name>``, and a last shorter row when training stops between two.
    :meth:`scalars` and :meth:`image` write evaluations and preview grids. The x axis is the training
    step (the model's counter), not Keras's epoch count, which restarts at 0 when a run is resumed;
    that is why this writes with ``tf.summary`` itself rather than through ``keras.callbacks.TensorBoard``.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writer = None
        self.step_last = 0
        self.batch_logs = None

    @property
    def writer(self):
        if self._writer is None:
            import tensorflow as tf

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        return self._writer

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        """Every finite number of ``values`` as a scalar ``<prefix><name>`` at ``step``."""
        import tensorflow as tf

        numbers = {}
        for name, v in (values or {}).items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v) and name != "step":
                numbers[name] = v
        if not numbers:
            return
        with self.writer.as_default():
            for name, v in numbers.items():
                tf.summary.scalar(prefix + name, v, step=int(step))
        self.writer.flush()

    def image(self, step: int, name: str, image) -> None:
        """One image (``[H, W, C]`` uint8 or float in [0, 1]) as ``name`` at ``step``."""
        import numpy as np
        import tensorflow as tf

        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        with self.writer.as_default():
            tf.summary.image(name, image[None], step=int(step), max_outputs=1)
        self.writer.flush()

    def image_file(self, step: int, name: str, path) -> None:
        """The PNG/JPEG at ``path`` (e.g. a preview grid) as an image summary."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.image(step, name, np.asarray(im.convert("RGB")))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_begin(self, logs=None):
        self.step_last = model_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs = logs

    def on_epoch_end(self, epoch, logs=None):
        self.step_last = model_step(self.model)
        self.scalars(self.step_last, logs, "train/")

    def on_train_end(self, logs=None):
        step = model_step(self.model)
        if step > self.step_last and self.batch_logs is not None:
            self.step_last = step
            self.scalars(step, self.batch_logs, "train/")


class PeriodicCallback(keras.callbacks.Callback):
    """Calls ``fn(step)`` at the end of each epoch in which the step counter crossed a multiple of
    ``every`` and, if ``at_end``, once more when training ends. ``last_fn`` (default ``fn``) is
    called instead for the run's last call: in the epoch where training stops, or at its end."""

    def __init__(self, every: int, fn, at_end: bool = True, last_fn=None):
        super().__init__()
        self.every, self.fn, self.at_end = max(1, int(every)), fn, at_end
        self.last_fn = last_fn or fn
        self.last_done = self.last_step = None

    def on_train_begin(self, logs=None):
        self.last_done = model_step(self.model) // self.every

    def _call(self, step, last: bool = False):
        self.last_step = step
        (self.last_fn if last else self.fn)(step)

    def on_epoch_end(self, epoch, logs=None):
        step = model_step(self.model)
        if step // self.every > self.last_done:
            self.last_done = step // self.every
            epochs = (self.params or {}).get("epochs")
            self._call(step, last=bool(self.model.stop_training) or (epochs is not None and epoch + 1 >= epochs))

    def on_train_end(self, logs=None):
        step = model_step(self.model)
        if self.at_end and step != self.last_step:
            self._call(step, last=True)


class Checkpointer(keras.callbacks.Callback):
    """Backups of the whole training state every ``every`` steps, and a clean stop on SIGINT/SIGTERM.

    ``save(step, state=None)`` writes models, both optimizers, the EMA and the step counter (the random
    draws are keyed by the step, so that is the RNG state too); with ``state`` (a ``snapshot()``) it
    writes that earlier state instead of the current one. Nothing newer is saved once ``guard`` saw a
    non-finite loss: the last good state is what stays.

    ``interval_s`` None: every backup is written at once (multi-worker runs, whose workers must write
    at the same steps). Otherwise a backup that comes less than ``interval_s`` seconds after the last
    write is kept in memory (``snapshot()``: a copy of the variables, milliseconds instead of the
    0.5-0.9 s of a weights file) and the file is written by the next backup due on time and when
    training ends: the current state after a signal, the budget or the last step, and after a
    non-finite loss the last good copy. The first backup of a run is always written, so a run killed
    (SIGKILL) after its first backup resumes, from the last written one, to the same weights.
    """

    def __init__(self, every: int, save, guard: NaNGuard, snapshot=None, interval_s: float | None = None):
        super().__init__()
        self.every, self.save, self.guard = max(1, int(every)), save, guard
        self.snapshot = snapshot
        self.interval_s = None if snapshot is None else interval_s
        self.last_saved = None   # step of the backup file written last
        self.last_backup = None  # step of the last backup, written or held in memory
        self.held = None         # (step, state) of a backup newer than the file
        self.t_saved = None
        self.signal = None

    def request_stop(self, signum: int) -> None:
        self.signal = signum

    def backup_step(self, file_exists: bool = True) -> int | None:
        """The step a resume will start from: the held copy (written when training ends), else the
        file's; None when there is neither."""
        if self.held is not None:
            return self.held[0]
        return self.last_saved if file_exists else None

    def on_train_begin(self, logs=None):
        self.last_saved = self.last_backup = model_step(self.model)
        self.held, self.t_saved = None, None

    def on_train_batch_end(self, batch, logs=None):
        if self.signal is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = model_step(self.model)
        if step - self.last_backup < self.every or self.guard.error is not None:
            return
        if (self.interval_s is None or self.t_saved is None
                or time.monotonic() - self.t_saved >= self.interval_s):
            self._save(step)
        else:
            self.held, self.last_backup = (step, self.snapshot()), step

    def on_train_end(self, logs=None):
        if self.guard.error is not None:  # the current state is not finite: write the last good copy
            if self.held is not None:
                step, state = self.held
                self.save(step, state)
                self.last_saved, self.held = step, None
            return
        step = model_step(self.model)
        if step != self.last_saved:
            self._save(step)

    def _save(self, step):
        if self.guard.error is None:
            self.save(step)
            self.last_saved = self.last_backup = step
            self.held, self.t_saved = None, time.monotonic()
