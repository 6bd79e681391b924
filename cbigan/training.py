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
import json
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np

from . import callbacks as cb
from . import distribute as dist
from .config import MACHINE, Config, default_run_name, is_resolved, resolve_given, with_sources
from .data import (DataError, download_category, load_test_set, load_train_set,
                   train_dataset)
from .kinds import kind_of
from .metrics import MetricError, image_metrics
from .model import build_model
from .previews import make_preview_gif, save_preview
from .runfolder import (BACKUP, EVAL_LOG, EXPORT, SELECTED, SELECTED_INFO, SUMMARY_JSON, TENSORBOARD, TRAIN_LOG,
                        WEIGHTS, RunLock, append_csv, check_resumable, clear_run, finished_run, prepare_run_dir,
                        run_dir_of, save_weights_atomic, truncate_csv, write_config, write_json_atomic,
                        write_summary)
from .localization import ImageScorer
from .networks import feature_extractor
from .scoring import score_patches
from .selection import SnapshotSelector
from .threshold import calibrate_threshold, write_threshold

#: On one device, backups (every ``log_every`` steps) are written at most this often; the ones in
#: between are held in memory (:class:`cbigan.callbacks.Checkpointer`) (why: docs/decisions.md).
BACKUP_INTERVAL_S = 60.0
#: Scoring that chooses nothing (test-set monitoring; the held-out images' score when the last weights
#: are the model, ``--select final``) takes at most this share of the wall time since the monitor
#: started: a due one waits while its predicted cost (seconds per image of the last scoring times the
#: images) would pass it: on tiles' large canvases a test set can take minutes, many steps' worth, while
#: a small test set is never held back (:data:`EVAL_FREE_S`) (why: docs/decisions.md).
EVAL_SHARE = 0.1
#: Such scoring predicted to take under this many seconds always runs when due.
EVAL_FREE_S = 2.0
#: ... and the test set's at the end of training, the run's own test figure, under this many.
FINAL_FREE_S = 60.0
#: TensorFlow intra-op threads by network input side and core count, on a machine without a GPU
#: (``intra_op_threads`` left unset): ``((largest side, most cores, threads), ...)``, first match;
#: otherwise 0, TensorFlow's default (every core). Measured with ``python -m cbigan.bench train`` on 2
#: cores: at 64 px TensorFlow spreads each small convolution over both cores and leaves them idle, so one
#: thread is faster; at 128 px the difference is within the noise (why: docs/decisions.md). Machines
#: with more cores keep the default until measured.
INTRA_OP_THREADS: tuple = ((64, 2, 1),)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_intra_op_threads(cfg: Config) -> int:
    """``cfg.intra_op_threads`` when set, else the measured choice of :data:`INTRA_OP_THREADS`
    (0 on a GPU machine or with ``--distribute``)."""
    if cfg.intra_op_threads is not None:
        return int(cfg.intra_op_threads)
    if cfg.distribute != "none" or _has_gpu():
        return 0
    cores = available_cores()
    return next((n for side, most, n in INTRA_OP_THREADS if cfg.patch_size <= side and cores <= most), 0)


#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic; without one, TensorFlow emulates it.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` text (read when None); None where unknown
    (not Linux, unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags or None


def native_bfloat16(cpuinfo: str | None = None, gpu: bool | None = None) -> bool | None:
    """Whether this machine trains bfloat16 natively: None with a GPU (it decides, not the CPU) or where
    the CPU's flags are unknown; else whether they (:func:`cpu_flags` of ``cpuinfo``, ``/proc/cpuinfo``
    when None) name one of :data:`BF16_CPU_FLAGS` (without one, TensorFlow emulates it)."""
    if _has_gpu() if gpu is None else gpu:
        return None
    flags = cpu_flags(cpuinfo)
    return None if flags is None else any(f in flags for f in BF16_CPU_FLAGS)


def choose_precision(cfg: Config, cpuinfo: str | None = None, gpu: bool | None = None) -> str:
    """The training precision of ``cfg``: as given, or for ``auto`` ``mixed_bfloat16`` on a CPU with
    native bfloat16 and no GPU (:func:`native_bfloat16`), else ``float32``."""
    if cfg.precision != "auto":
        return cfg.precision
    return "mixed_bfloat16" if native_bfloat16(cpuinfo, gpu) else "float32"


def precision_note(cfg: Config, cpuinfo: str | None = None, gpu: bool | None = None) -> str | None:
    """A one-line note when ``cfg.precision`` is bfloat16 on a machine that will run it slower than
    float32: no GPU and a CPU without native bfloat16 (:func:`native_bfloat16` False). None otherwise
    (float32, a GPU, or flags unknown)."""
    if cfg.precision == "float32" or native_bfloat16(cpuinfo, gpu) is not False:
        return None
    return (f"note: --precision {cfg.precision} on a CPU without native bfloat16 (no "
            f"{' / '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo): TensorFlow emulates it, so this run will "
            f"likely train slower than with --precision float32")


def apply_intra_op_threads(n: int) -> bool:
    """Set TensorFlow's intra-op thread count (0: its default) before its context starts; False when
    it started already with another count (e.g. an earlier run in this process): it is kept then."""
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == n:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
    except RuntimeError:
        return False
    return True


def fit_verbosity(verbose: int, stream=None) -> int:
    """Keras ``fit`` verbosity: its progress bar (1) on a terminal, one line per epoch (2) when the
    output goes to a file or a pipe (a log of a multi-category run: the bar's redraws would fill it),
    0 when ``verbose`` is 0."""
    import sys

    if not verbose:
        return 0
    stream = sys.stdout if stream is None else stream
    return 1 if getattr(stream, "isatty", lambda: False)() else 2


class TrainingMonitor:
    """Test-set monitoring and previews during training (uses the EMA networks, like every output)."""

    def __init__(self, model, cfg: Config, run_dir: Path, test_set, val_images, start_step: int = 0,
                 tensorboard: cb.TensorBoardLogger | None = None, val_regions=None):
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.tensorboard = tensorboard  # also writes evaluations and previews there, when given
        self.test_set, self.val_images = test_set, val_images
        self.features = feature_extractor(model.critic, cfg.feature_layer)  # previews
        scorer = ImageScorer(model, cfg)              # the run's own image-score rule
        self.image_scorer = lambda images, regions: scorer(images, regions=regions)
        self.test_scorer = lambda images: scorer(images, regions=getattr(test_set, "regions", None))
        self.best = None  # (auroc, step, weights) for --select-on-test
        # test-set monitoring: at the first evaluation past each multiple of monitor_every, at the end
        self.monitored = start_step // cfg.monitor_every if cfg.monitor_every else None
        self.t0 = time.monotonic()
        self.last = {}
        self.optional_s = 0.0         # seconds spent in scoring that chooses nothing (EVAL_SHARE)
        self.s_per_image = None       # the last scoring's seconds per image (None: none timed yet)
        self.selector = SnapshotSelector(
            val_images, self.image_scorer,
            self._save_selected, rule="final" if cfg.select_on_test else cfg.select, seed=cfg.seed,
            best=self._previous_selection(start_step), val_regions=val_regions)
        if self.selector.active:
            self.val_images = self.selector.val_images  # a view of the selector's array: held once
        if self.selector.note and start_step == 0:
            print(self.selector.note)

    def _previous_selection(self, start_step: int):
        """On resume: the snapshot chosen before the interruption, if it precedes the resumed step
        (a later one is re-judged when the deterministic replay reaches it)."""
        info = self.run_dir / SELECTED_INFO
        if start_step and info.is_file() and (self.run_dir / SELECTED).is_file():
            best = json.loads(info.read_text())
            if best.get("step", start_step + 1) <= start_step:
                return best
        return None

    def _save_selected(self, step: int) -> None:
        """Keep the newly selected snapshot in memory (a copy of the weights, milliseconds); it is
        written with the next backup (:meth:`flush_selected`), so a resume finds it beside the backup."""
        self.pending_selected = (self.model.get_weights(), dict(self.selector.best))

    pending_selected = None  # (weights, selector.best) not written yet

    def flush_selected(self) -> None:
        """Write the snapshot held in memory, if any: ``SELECTED`` (its weights, with the optimizer
        state of the moment, which nothing reads from it), then ``SELECTED_INFO``."""
        if self.pending_selected is None:
            return
        weights, best = self.pending_selected
        (self.run_dir / SELECTED).parent.mkdir(exist_ok=True)
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            save_weights_atomic(self.model, self.run_dir / SELECTED)
        finally:
            self.model.set_weights(current)
        write_json_atomic(self.run_dir / SELECTED_INFO, best)
        self.pending_selected = None

    def evaluate(self, step: int, final: bool = False) -> dict:
        """One ``eval_log.csv`` row: the label-free snapshot selection (held-out images), and the
        test-set monitoring when it is due (:meth:`monitor_due`; ``final``: the run's last evaluation),
        else empty test columns (None). Scoring that chooses nothing waits while it would pass
        :data:`EVAL_SHARE` of the wall time; an evaluation left with nothing to score writes no row
        and returns {}."""
        row = {"step": step, "seconds": round(time.monotonic() - self.t0, 1)}
        scored = False  # anything at this evaluation
        if len(self.val_images):
            if self.selector.active:  # held-out images and their synthetic-defect copies in one call
                val, defects = self._timed(lambda: self.selector.scores(), 3 * len(self.val_images))  # + 2 copies each
                scored = True
            elif final or self.affordable(len(self.val_images)):  # informative only: the last weights
                val = self._timed(lambda: self.image_scorer(self.val_images, self.selector.val_regions),
                                  len(self.val_images), optional=not final)
                defects, scored = None, True
            if scored:
                row["val_score_mean"] = float(np.mean(val))
                row.update(self.selector.observe(step, val, defects))
        if self.test_set is not None:
            monitored = self.final_monitor_affordable() if final else self.monitor_due(step)
            if monitored or scored:
                row.update(test_auroc=None, test_max_balanced_accuracy=None)  # empty cells unless monitored
            if monitored:
                row.update(self.monitor(step, optional=not final and not self.cfg.select_on_test))
                scored = True
        if not scored and not final:
            return {}
        append_csv(self.run_dir / EVAL_LOG, row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, {k: v for k, v in row.items() if k != "seconds" and v is not None}, "eval/")
        self.last = row
        return row

    def _timed(self, fn, n_images: int, optional: bool = False):
        """``fn()``, timing it per image (:attr:`s_per_image`); ``optional``: counted in the scoring
        that chooses nothing (:data:`EVAL_SHARE`)."""
        t = time.monotonic()
        out = fn()
        seconds = time.monotonic() - t
        self.s_per_image = seconds / max(1, n_images)
        if optional:
            self.optional_s += seconds
        return out

    def affordable(self, n_images: int) -> bool:
        """Whether scoring ``n_images`` that chooses nothing may run now: predicted under
        :data:`EVAL_FREE_S`, or within :data:`EVAL_SHARE` of the wall time together with such scoring so
        far. The first one, with nothing timed yet, always may."""
        if self.s_per_image is None:
            return True
        cost = self.s_per_image * n_images
        return cost < EVAL_FREE_S or self.optional_s + cost <= EVAL_SHARE * (time.monotonic() - self.t0)

    def final_monitor_affordable(self) -> bool:
        """Test-set monitoring at the run's last evaluation, unless it would take over
        :data:`FINAL_FREE_S` and pass :data:`EVAL_SHARE` (then a note says so: ``evaluate.py RUN``
        scores the test set)."""
        n = len(self.test_set.images)
        if self.cfg.select_on_test or self.affordable(n) or self.s_per_image * n < FINAL_FREE_S:
            return True
        print(f"note: the test set is not scored at the end of training (about {self.s_per_image * n:.0f} s, "
              f"over {EVAL_SHARE:.0%} of the run's time); evaluate.py {self.run_dir} scores it", flush=True)
        return False

    def monitor_due(self, step: int) -> bool:
        """Test-set monitoring at this evaluation: always with ``select_on_test``, else when ``step``
        passed a multiple of ``monitor_every`` since the last one (never when it is 0) and it is
        :meth:`affordable` (else it stays due, for a later evaluation)."""
        if self.cfg.select_on_test:
            return True
        if not self.cfg.monitor_every or step // self.cfg.monitor_every <= self.monitored:
            return False
        if not self.affordable(len(self.test_set.images)):
            return False
        self.monitored = step // self.cfg.monitor_every
        return True

    def monitor(self, step: int, optional: bool = False) -> dict:
        """Test auROC and max balanced accuracy of the current model (monitoring: never the choice,
        except with ``select_on_test``, which keeps the best weights here)."""
        scores = self._timed(lambda: self.test_scorer(self.test_set.images), len(self.test_set.images), optional)
        try:
            m = image_metrics(self.test_set.labels, scores)
        except MetricError as e:
            return {"test_error": str(e)}
        row = {"test_auroc": m["auroc"], "test_max_balanced_accuracy": m["max_balanced_accuracy"]}
        if self.cfg.select_on_test and (self.best is None or row["test_auroc"] > self.best[0]):
            self.best = (row["test_auroc"], step, self.model.get_weights())
        return row

    def preview(self, step: int, n: int = 8) -> None:
        source = self.test_set.images if self.test_set is not None else self.val_images
        if source is None or not len(source):
            return
        idx = np.linspace(0, len(source) - 1, min(n, len(source))).astype(int)
        ppi = kind_of(self.cfg).patches_per_image(self.cfg)
        pick = np.arange(len(idx)) * ppi + ppi // 2  # a central patch of each texture image
        inputs = kind_of(self.cfg).model_inputs(source[idx], self.cfg)
        inputs = np.asarray(inputs)[pick]
        # only the shown patches go through the networks (eagerly: nothing to trace for n patches)
        out = score_patches(self.model.ema_encoder, self.model.ema_generator, self.features, inputs)
        x = out["reconstruction"].numpy()
        z = np.random.default_rng(step).standard_normal((len(idx), self.model.latent_dim)).astype("float32")
        samples = self.model.ema_generator(z, training=False).numpy()
        path = save_preview(self.run_dir / "previews" / f"step_{step:07d}.png", inputs, x,
                            out["diff"].numpy(), samples, title=f"{self.cfg.category} step {step}")
        if self.tensorboard is not None:
            self.tensorboard.image_file(step, "previews", path)


class TrainingInterrupted(RuntimeError):
    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def train(cfg: Config, *, download: bool = False, skip_bad_images: bool = False, verbose: int = 1,
          fresh: bool = False, export: bool = True, export_dir=None, model_name=None) -> Path:
    """Train one category as ``cfg`` says and return its run folder.

    The same call on the same run folder resumes from the last backup (``<run>/backup/``), continuing
    the CSV logs; ``fresh=True`` starts over. SIGINT/SIGTERM save a backup and raise
    :class:`TrainingInterrupted`. With ``cfg.distribute`` (:mod:`cbigan.distribute`) only the chief
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
            from .export import export_model

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
                                          gpu=_has_gpu())]
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


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


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
