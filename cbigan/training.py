"""One training run end to end: data, model, ``fit`` with callbacks, and the run folder.

Run folder ``<output_dir>/<category>/<run_name>/``:

* ``config.json``: the resolved configuration (rebuilds the model);
* ``train_log.csv``: every loss and critic score, one row per ``log_every`` steps;
* ``eval_log.csv``: test metrics every ``eval_every`` steps (monitoring only: never used to pick the
  model unless ``--select-on-test``);
* ``previews/``: inputs, reconstructions, differences and samples G(z) every ``preview_every`` steps;
* ``model.weights.h5``: the final model; its EMA encoder/generator are what evaluation uses;
* ``summary.json``: steps, wall time, why training stopped, final metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
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
from .config import Config, default_run_name
from .data import (DataError, download_category, load_test_set, load_train_set, to_model_range,
                   to_patches, train_dataset)
from .metrics import MetricError, image_metrics
from .model import CBiGAN, build_model
from .plots import make_preview_gif, save_preview
from .scoring import Scorer
from .selection import SnapshotSelector
from .threshold import calibrate_threshold, write_threshold

WEIGHTS = "model.weights.h5"
BACKUP = "backup/checkpoint.weights.h5"
SELECTED = "backup/selected.weights.h5"   # the snapshot the label-free rule prefers so far
SELECTED_INFO = "backup/selected.json"


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """Write weights to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(path).with_name(f".tmp-{Path(path).name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def load_run(run_dir: str | Path) -> tuple[Config, CBiGAN]:
    """Rebuild a trained model from its run folder (config.json + model.weights.h5)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise DataError(f"{run_dir} is not a finished run folder (needs config.json and {WEIGHTS}); "
                        f"pass runs/<category>/<run>")
    cfg = Config.from_json(cfg_path)
    model = build_model(cfg)
    model.load_weights(weights)
    return cfg, model


class RunEvaluator:
    """Test-set monitoring and previews during training (uses the EMA networks, like every output)."""

    def __init__(self, model, cfg: Config, run_dir: Path, test_set, val_images, start_step: int = 0):
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.test_set, self.val_images = test_set, val_images
        self.scorer = Scorer(model, cfg)
        self.best = None  # (auroc, step, weights) for --select-on-test
        self.t0 = time.monotonic()
        self.last = {}
        self.selector = SnapshotSelector(
            val_images, lambda imgs: self.scorer.score(imgs).image_scores(cfg.score_lambda),
            self._save_selected, rule="final" if cfg.select_on_test else cfg.select, seed=cfg.seed,
            best=self._previous_selection(start_step))

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
        (self.run_dir / SELECTED).parent.mkdir(exist_ok=True)
        save_weights_atomic(self.model, self.run_dir / SELECTED)
        write_json_atomic(self.run_dir / SELECTED_INFO, self.selector.best)

    def evaluate(self, step: int) -> dict:
        row = {"step": step, "seconds": round(time.monotonic() - self.t0, 1)}
        if len(self.val_images):
            val = self.scorer.score(self.val_images).image_scores(self.cfg.score_lambda)
            row["val_score_mean"] = float(np.mean(val))
            row.update(self.selector.observe(step, val))
        if self.test_set is not None:
            scores = self.scorer.score(self.test_set.images).image_scores(self.cfg.score_lambda)
            try:
                m = image_metrics(self.test_set.labels, scores)
                row.update(test_auroc=m["auroc"], test_max_balanced_accuracy=m["max_balanced_accuracy"])
            except MetricError as e:
                row["test_error"] = str(e)
            if self.cfg.select_on_test and "test_auroc" in row:
                if self.best is None or row["test_auroc"] > self.best[0]:
                    self.best = (row["test_auroc"], step, self.model.get_weights())
        cb.append_csv(self.run_dir / "eval_log.csv", row)
        self.last = row
        return row

    def preview(self, step: int, n: int = 8) -> None:
        source = self.test_set.images if self.test_set is not None else self.val_images
        if source is None or not len(source):
            return
        idx = np.linspace(0, len(source) - 1, min(n, len(source))).astype(int)
        out = self.scorer.raw(source[idx])
        ppi = self.scorer.patches_per_image
        pick = np.arange(len(idx)) * ppi + ppi // 2  # a central patch of each texture image
        x = out["reconstruction"].numpy()[pick]
        inputs = to_model_range(source[idx])
        if self.cfg.kind == "texture":
            inputs = to_patches(inputs, self.cfg.patch_size)
        inputs = np.asarray(inputs)[pick]
        z = np.random.default_rng(step).standard_normal((len(idx), self.model.latent_dim)).astype("float32")
        samples = self.model.ema_generator(z, training=False).numpy()
        save_preview(self.run_dir / "previews" / f"step_{step:07d}.png", inputs, x,
                     out["diff"].numpy()[pick], samples, title=f"{self.cfg.category} step {step}")


#: Config fields that may differ when a run is resumed (budget and bookkeeping, not the model).
RESUMABLE_CHANGES = {"steps", "minutes", "run_name", "output_dir", "data_dir", "eval_every", "log_every",
                     "preview_every", "extra", "distribute", "select"}
MIN_FREE_BYTES = 200 * 2**20


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``: two trainings never write the same folder.

    The kernel drops the lock when the process dies, even by SIGKILL, so a crashed run never blocks
    its own resumption.
    """

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = run_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise DataError(f"run folder {run_dir} is in use by another training (pid {owner}); wait for "
                            f"it to finish or pass another --run-name") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run folder and check that it is writable and has room, before any training."""
    run_dir = Path(cfg.output_dir) / cfg.category / cfg.run_name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to run folder {run_dir}: {e.strerror}; choose another "
                        f"--output-dir") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise DataError(f"only {free / 2**20:.0f} MiB free at {run_dir}; checkpoints need at least "
                        f"{MIN_FREE_BYTES / 2**20:.0f} MiB: free some space or choose another --output-dir")
    return run_dir


def clear_run(run_dir: Path) -> None:
    """``--fresh``: remove everything a previous training wrote into the folder (not the lock)."""
    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def check_resumable(run_dir: Path, cfg: Config) -> None:
    old = json.loads((run_dir / "config.json").read_text())
    new = dataclasses.asdict(cfg)
    diff = sorted(k for k in new if k not in RESUMABLE_CHANGES and k in old
                  and json.loads(json.dumps(new[k])) != old[k])
    if diff:
        raise DataError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); pass --fresh to "
                        f"start over there, or another --run-name")


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
    cfg = cfg.resolved()
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
        if download:
            download_category(cfg.category, cfg.data_dir)
        train_set = load_train_set(cfg, skip_bad=skip_bad_images)
        if train_set.skipped:
            print(f"skipped {len(train_set.skipped)} unreadable image(s): "
                  + ", ".join(str(p) for p in train_set.skipped))
        if chief:
            try:
                test_set = load_test_set(cfg, skip_bad=skip_bad_images)
            except DataError as e:
                print(f"note: no test-set monitoring ({e})")
            run_dir = prepare_run_dir(cfg)
            lock = RunLock(run_dir)
            if fresh:
                clear_run(run_dir)
            elif (run_dir / BACKUP).is_file():
                check_resumable(run_dir, cfg)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix=f"cbigan-{dist.task()[0]}{dist.task()[1]}-"))
    except DataError as e:
        error = e
    try:
        if not dist.all_ok(strategy, error is None):
            raise error or DataError("another worker could not start (see its output); stopped")
        model, threshold = _train_locked(cfg, run_dir, train_set, test_set, verbose, strategy, chief)
        if not chief:
            return Path(cfg.output_dir) / cfg.category / cfg.run_name
        if export:
            from .export import export_model

            path = export_model(model, cfg, Path(export_dir) if export_dir else run_dir / "export",
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
        for log in ("train_log.csv", "eval_log.csv"):
            cb.truncate_csv(run_dir / log, start)
        print(f"resuming {run_dir} from step {start} (pass --fresh to start over)")
    elif chief:
        for stale in ("train_log.csv", "eval_log.csv", "summary.json", WEIGHTS):
            (run_dir / stale).unlink(missing_ok=True)
    cfg.to_json(run_dir / "config.json")
    if chief:
        print(f"training {cfg.category} ({cfg.kind}, {len(train_set.images)} train / "
              f"{len(train_set.val_images)} held-out images) -> {run_dir}")

    def save_backup(step):
        backup.parent.mkdir(exist_ok=True)
        save_weights_atomic(model, backup)

    evaluator = RunEvaluator(model, cfg, run_dir, test_set, train_set.val_images, start_step=start)
    multiworker = dist.is_multiworker(strategy)
    budget = cb.StepBudget(cfg.steps, None if multiworker else cfg.minutes)
    guard = cb.NaNGuard()
    checkpointer = cb.Checkpointer(cfg.log_every, save_backup, guard)
    # logs before the backup: a kill between the two leaves rows the resumed run rewrites, never a gap
    callbacks = [guard, budget, cb.StepCSVLogger(run_dir / "train_log.csv", cfg.batch_size)]
    if chief:
        callbacks += [cb.PeriodicCallback(cfg.eval_every, evaluator.evaluate),
                      cb.PeriodicCallback(cfg.preview_every, evaluator.preview)]
    stopper = checkpointer  # what SIGINT/SIGTERM tell to stop
    if multiworker:
        stopper = SyncedStop(strategy, cfg.minutes, checkpointer)
        callbacks.append(stopper)
    callbacks.append(checkpointer)
    remaining = max(0, cfg.steps - start)
    per_epoch = max(1, min(cfg.log_every, remaining))
    t0 = time.monotonic()
    if remaining:
        data = train_dataset(train_set.images, cfg, start_step=start)
        if strategy is not None:
            data = dist.distribute_options(data)
        with _stop_on_signals(stopper):
            model.fit(data, steps_per_epoch=per_epoch, epochs=-(-remaining // per_epoch), callbacks=callbacks,
                      verbose=verbose if chief else 0, shuffle=False)
    wall = time.monotonic() - t0
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
        if best["step"] != selected_step:
            model.load_weights(run_dir / SELECTED)
        selected, selected_step = evaluator.selector.describe(), best["step"]
    save_weights_atomic(model, run_dir / WEIGHTS)
    if not chief:
        return model, None
    threshold = calibrate_threshold(model, cfg, train_set.val_images)
    write_threshold(run_dir, threshold)
    print(f"threshold: {threshold['threshold']} ({threshold['rule']})")
    stopped = budget.reason or getattr(stopper, "reason", None) or "fit ended"
    summary = {"steps": final_step, "wall_seconds": round(wall, 1), "resumed_from_step": start,
               "threshold": threshold["threshold"], "threshold_rule": threshold["rule"],
               "stopped_because": stopped, "model": selected, "selected_step": selected_step,
               "selected_on_test": bool(cfg.select_on_test), "last_eval": evaluator.last,
               "distribute": dist.describe(strategy)}
    write_json_atomic(run_dir / "summary.json", summary)
    make_preview_gif(run_dir)  # previews.gif: the evolution of the previews
    print(f"done: {summary['steps']} steps in {wall / 60:.1f} min ({summary['stopped_because']}); "
          f"model = {selected}; saved {run_dir / WEIGHTS}")
    return model, threshold


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
