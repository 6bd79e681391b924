"""One training run end to end: data, model, ``fit`` with callbacks, and the run folder.

Run folder ``<output_dir>/<category>/<run_name>/``:

* ``config.json``: the resolved configuration (rebuilds the model);
* ``train_log.csv``: every loss and critic score, one row per ``log_every`` steps;
* ``eval_log.csv``: every ``eval_every`` steps the label-free selection's figures and, every
  ``monitor_every`` steps and at the end, test metrics (monitoring only: never used to pick the model
  unless ``--select-on-test``; empty in the rows between). Scoring that chooses nothing waits while it
  would take over :data:`EVAL_SHARE` of the wall time, at the end too (an evaluation left with nothing
  to score writes no row);
* ``previews/``: inputs, reconstructions, differences and samples G(z) every ``preview_every`` steps;
* ``tensorboard/``: TensorBoard event files: losses every ``log_every`` steps, evaluations, preview grids;
* ``model.weights.h5``: the final model; its EMA encoder/generator are what evaluation uses;
* ``summary.json``: steps, wall time, why training stopped, final metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np

from cbigan.training import callbacks as cb
from cbigan.model import distribute as dist
from cbigan.core.config import MACHINE, Config, default_run_name, is_resolved, resolve_given, with_sources
from cbigan.data.pipeline import DataError, download_category, load_test_set, load_train_set, train_dataset
from cbigan.model.gan import build_model
from cbigan.training.machine import (
    apply_intra_op_threads, choose_intra_op_threads, choose_precision, has_gpu, precision_note)
from cbigan.training.monitor import TrainingMonitor
from cbigan.training.previews import make_preview_gif
from cbigan.core.runfolder import (
    BACKUP, EVAL_LOG, EXPORT, SELECTED, SUMMARY_JSON, TENSORBOARD, TRAIN_LOG, WEIGHTS, RunLock, check_resumable,
    clear_run, finished_run, prepare_run_dir, run_dir_of, save_weights_atomic, truncate_csv, write_config,
    write_summary)
from cbigan.scoring.threshold import calibrate_threshold, write_threshold

#: On one device, backups (every ``log_every`` steps) are written at most this often; the ones in
#: between are held in memory (:class:`cbigan.training.callbacks.Checkpointer`) (why: docs/decisions.md).
BACKUP_INTERVAL_S = 60.0
def fit_verbosity(verbose: int, stream=None) -> int:
    """Keras ``fit`` verbosity: its progress bar (1) on a terminal, one line per epoch (2) when the
    output goes to a file or a pipe (a log of a multi-category run: the bar's redraws would fill it),
    0 when ``verbose`` is 0."""
    import sys

    if not verbose:
        return 0
    stream = sys.stdout if stream is None else stream
    return 1 if getattr(stream, "isatty", lambda: False)() else 2


class TrainingInterrupted(RuntimeError):
    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def train(cfg: Config, *, download: bool = False, skip_bad_images: bool = False, verbose: int = 1,
          fresh: bool = False, export: bool = True, export_dir=None, model_name=None) -> Path:
    """Train one category as ``cfg`` says and return its run folder.

    The same call on the same run folder resumes from the last backup (``<run>/backup/``), continuing
    the CSV logs; ``fresh=True`` starts over. SIGINT/SIGTERM save a backup and raise
    :class:`TrainingInterrupted`. With ``cfg.distribute`` (:mod:`cbigan.model.distribute`) only the chief
    writes the run folder, locks it and exports; other workers write to a temporary folder that is
    removed at the end, and return the chief's run folder.
    """
    if not is_resolved(cfg):  # a hand-built config (train.py resolved its own): resolved here, once
        cfg, note = resolve_given(cfg, infer=True)  # an unknown category's kind from its images
        if note:
            print(note)
    # before anything starts TensorFlow's context (thread pools are fixed then); stored in config.json
    chosen = {"intra_op_threads": choose_intra_op_threads(cfg),
              "precision": choose_precision(cfg)}  # "auto" resolved for this machine
    cfg = with_sources(cfg, MACHINE, **{k: v for k, v in chosen.items() if v != getattr(cfg, k)})
    if not apply_intra_op_threads(cfg.intra_op_threads):
        print(f"note: TensorFlow started earlier in this process; intra_op_threads={cfg.intra_op_threads} "
              f"is not applied to this run")
    note = precision_note(cfg)
    if note:
        print(note)
    strategy = dist.make_strategy(cfg.distribute)  # first: MultiWorkerMirroredStrategy precedes any op
    chief = dist.writes_run_folder(cfg.distribute)
    if strategy is not None:
        dist.check_batch_size(strategy, cfg.batch_size)
        print(f"distributed: {dist.describe(strategy)}; global batch {cfg.batch_size}"
              + ("" if chief else "; not the chief: writes nothing to the run folder"))
    if cfg.run_name is None:
        cfg = dataclasses.replace(cfg, run_name=default_run_name(cfg))
    run_dir, lock, error, test_set = None, None, None, None
    try:  # every worker gets here, or none trains: a lone failure would leave the others waiting
        if chief and not fresh and (run_dir_of(cfg) / BACKUP).is_file():
            # before any image is loaded: a run with other settings is refused, a finished one left as it is
            check_resumable(run_dir_of(cfg), cfg)
            complete = finished_run(run_dir_of(cfg), cfg) if strategy is None else None
            if complete:  # the same command again on a finished run
                print(complete)
                return run_dir_of(cfg)
        if download:
            download_category(cfg.category, cfg.data_dir)
        train_set = load_train_set(cfg, skip_bad=skip_bad_images)
        if train_set.skipped:
            print(f"skipped {len(train_set.skipped)} unreadable image(s): "
                  + ", ".join(str(p) for p in train_set.skipped))
        if chief:
            try:
                test_set = load_test_set(cfg, skip_bad=skip_bad_images, with_masks=False)  # image level
            except DataError as e:
                print(f"note: no test-set monitoring ({e})")
            run_dir = prepare_run_dir(cfg)
            lock = RunLock(run_dir)
            if fresh:
                clear_run(run_dir)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix=f"cbigan-{dist.task()[0]}{dist.task()[1]}-"))
    except DataError as e:
        error = e
    try:
        if not dist.all_ok(strategy, error is None):
            raise error or DataError("another worker could not start (see its output); stopped")
        model, threshold = _train_locked(cfg, run_dir, train_set, test_set, verbose, strategy, chief)
        if not chief:
            return run_dir_of(cfg)
        if export:
            from cbigan.serving.export import export_model

            path = export_model(model, cfg, Path(export_dir) if export_dir else run_dir / EXPORT,
                                threshold_info=threshold, model_name=model_name, run_dir=run_dir)
            print(f"exported SavedModel {path} (serve it: docs/serving.md)")
        return run_dir
    finally:
        if lock is not None:
            lock.release()
        if not chief and run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train_locked(cfg, run_dir, train_set, test_set, verbose, strategy=None, chief=True):
    """The training proper, under the run lock; returns the final model and its threshold record.

    Non-chief workers (``chief`` False) get a temporary ``run_dir``: they train and save backups like
    the chief (the calls that synchronise must match) but skip evaluation and everything after ``fit``.
    """
    backup = run_dir / BACKUP
    with dist.scope(strategy):
        model = build_model(cfg)
    if backup.is_file():
        model.load_weights(backup)
    # multi-worker: every worker continues from the chief's state (a no-op otherwise)
    dist.broadcast_from_chief(strategy, model.variables + model.d_optimizer.variables
                              + model.eg_optimizer.variables)
    start = cb.model_step(model)
    if start and chief:
        for log in (TRAIN_LOG, EVAL_LOG):
            truncate_csv(run_dir / log, start)
        print(f"resuming {run_dir} from step {start} (pass --fresh to start over)")
    elif chief:
        for stale in (TRAIN_LOG, EVAL_LOG, SUMMARY_JSON, WEIGHTS):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    write_config(run_dir, cfg)
    if chief:
        budget_note = f" for {cfg.minutes:g} min (time budget)" if cfg.minutes is not None else ""
        print(f"training {cfg.category} ({cfg.kind}, {len(train_set.images)} train / "
              f"{len(train_set.val_images)} held-out images){budget_note} -> {run_dir}")

    state_vars = _state_variables(model)

    def snapshot():  # the whole training state in memory (see cb.Checkpointer)
        return [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in state_vars]

    def save_backup(step, state=None):
        backup.parent.mkdir(exist_ok=True)
        if chief:
            evaluator.flush_selected()  # first: a resume from this backup finds the selection it made
        if state is not None:  # an earlier, held state (after a non-finite loss): training is over
            for v, value in zip(state_vars, state):
                v.assign(value)
        save_weights_atomic(model, backup)

    tensorboard = cb.TensorBoardLogger(run_dir / TENSORBOARD) if chief else None
    evaluator = TrainingMonitor(model, cfg, run_dir, test_set, train_set.val_images, start_step=start,
                                tensorboard=tensorboard, val_regions=train_set.val_regions)
    multiworker = dist.is_multiworker(strategy)
    budget = cb.StepBudget(cfg.steps, None if multiworker else cfg.minutes)
    checkpointer = None
    # what the NaN stop can say about backups: the step of the last one written, or None (none yet)
    guard = cb.NaNGuard(last_checkpoint=lambda: checkpointer.backup_step(backup.is_file()))
    # one device: backups every log step, written at most every BACKUP_INTERVAL_S (held in memory in
    # between); workers of a strategy write every log step, at the same steps
    checkpointer = cb.Checkpointer(cfg.log_every, save_backup, guard, snapshot=snapshot,
                                   interval_s=BACKUP_INTERVAL_S if strategy is None else None)
    # logs before the backup: a kill between the two leaves rows the resumed run rewrites, never a gap
    callbacks = [guard, budget, cb.StepCSVLogger(run_dir / TRAIN_LOG, cfg.batch_size)]
    if tensorboard is not None:
        callbacks.append(tensorboard)
    if chief:
        callbacks += [cb.PeriodicCallback(cfg.eval_every, evaluator.evaluate,
                                          last_fn=functools.partial(evaluator.evaluate, final=True)),
                      cb.PeriodicCallback(cfg.preview_every, evaluator.preview),
                      cb.DurationEstimate(cfg.steps, None if multiworker else cfg.minutes, cfg.preset,
                                          gpu=has_gpu())]
    stopper = checkpointer  # what SIGINT/SIGTERM tell to stop
    if multiworker:
        stopper = SyncedStop(strategy, cfg.minutes, checkpointer)
        callbacks.append(stopper)
    callbacks.append(checkpointer)
    remaining = max(0, cfg.steps - start)
    per_epoch = max(1, min(cfg.log_every, remaining))
    t0 = time.monotonic()
    if remaining:
        data = train_dataset(train_set.images, cfg, start_step=start, regions=train_set.regions)
        if strategy is not None:
            data = dist.distribute_options(data)
        with _stop_on_signals(stopper):
            model.fit(data, steps_per_epoch=per_epoch, epochs=-(-remaining // per_epoch), callbacks=callbacks,
                      verbose=fit_verbosity(verbose) if chief else 0, shuffle=False)
    wall = time.monotonic() - t0
    if tensorboard is not None:
        tensorboard.close()
    if guard.error:
        raise cb.NonFiniteLossError(guard.error)
    if checkpointer.signal is not None:
        name = signal.Signals(checkpointer.signal).name
        where = backup.parent if chief else "the chief's run folder"
        raise TrainingInterrupted(checkpointer.signal,
                                  f"{name}: stopped at step {cb.model_step(model)}, checkpoint saved in "
                                  f"{where}; run the same command again to resume")

    final_step = cb.model_step(model)  # loading a snapshot below also restores its step counter
    selected, selected_step = "final EMA weights", final_step
    if cfg.select_on_test and evaluator.best is not None:
        auroc, step, weights = evaluator.best
        model.set_weights(weights)
        selected, selected_step = (f"best test auROC {auroc:.4f} at step {step} (--select-on-test: test "
                                   f"labels used)"), step
    elif chief and evaluator.selector.active and evaluator.selector.best is not None:
        best = evaluator.selector.best
        evaluator.flush_selected()
        if best["step"] != selected_step:
            model.load_weights(run_dir / SELECTED)
        selected, selected_step = evaluator.selector.describe(), best["step"]
    save_weights_atomic(model, run_dir / WEIGHTS)
    if not chief:
        return model, None
    threshold = calibrate_threshold(model, cfg, train_set.val_images, progress=bool(verbose),
                                    n_images=train_set.n_images, regions=train_set.val_regions)
    write_threshold(run_dir, threshold)
    print(f"threshold: {threshold['threshold']} ({threshold['rule']})")
    stopped = budget.reason or getattr(stopper, "reason", None) or "fit ended"
    summary = {"steps": final_step, "wall_seconds": round(wall, 1), "resumed_from_step": start,
               "threshold": threshold["threshold"], "threshold_rule": threshold["rule"],
               "stopped_because": stopped, "model": selected, "selected_step": selected_step,
               "selected_on_test": bool(cfg.select_on_test), "last_eval": evaluator.last,
               "distribute": dist.describe(strategy)}
    write_summary(run_dir, summary)
    make_preview_gif(run_dir)  # previews.gif: the evolution of the previews
    print(f"done: {summary['steps']} steps in {wall / 60:.1f} min ({summary['stopped_because']}); "
          f"model = {selected}; saved {run_dir / WEIGHTS}")
    return model, threshold


def _state_variables(model) -> list:
    """Every variable of the training state (networks, EMA, counters, both optimizers), once each."""
    seen, out = set(), []
    for v in list(model.variables) + list(model.d_optimizer.variables) + list(model.eg_optimizer.variables):
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


class SyncedStop(keras.callbacks.Callback):
    """Multi-worker only: stop every worker at the same step, at the end of a ``fit`` epoch (every
    ``--log-every`` steps), once any worker's wall-clock budget is spent or any got SIGINT/SIGTERM.

    A worker that stopped alone would leave the others waiting forever at the next all-reduce, so this
    agreement replaces the per-batch time budget and signal stop there.
    """

    def __init__(self, strategy, minutes: float | None, checkpointer: cb.Checkpointer):
        super().__init__()
        self.strategy, self.minutes, self.checkpointer = strategy, minutes, checkpointer
        self.start = None
        self.reason = None
        self.signal = None

    def request_stop(self, signum: int) -> None:  # from the signal handler
        self.signal = signum

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        late = self.minutes is not None and time.monotonic() - self.start > 60.0 * self.minutes
        n_late, n_signalled = dist.sum_over_workers(self.strategy, [late, self.signal is not None])
        if n_signalled:
            self.checkpointer.request_stop(self.signal or signal.SIGTERM)
            self.model.stop_training = True
        elif n_late:
            self.reason = f"time budget of {self.minutes:g} min spent"
            self.model.stop_training = True


@contextlib.contextmanager
def _stop_on_signals(checkpointer):
    """Turn SIGINT/SIGTERM into a clean stop at the next batch, or with several workers at the next
    agreed point (main thread only); ``checkpointer`` is whatever has ``request_stop(signum)``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda signum, frame: checkpointer.request_stop(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
