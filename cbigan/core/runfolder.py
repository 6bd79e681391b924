"""The run folder ``<output_dir>/<category>/<run_name>/``: its file names and all reading and writing
of its records. No TensorFlow import: reading results stays fast.

| file | what | written by |
|---|---|---|
| ``config.json`` | the resolved :class:`cbigan.core.config.Config` (rebuilds the model) | training |
| ``model.weights.h5`` | the model (the selected snapshot, EMA networks included) | training |
| ``train_log.csv`` / ``eval_log.csv`` | losses every ``log_every`` / evaluations every ``eval_every`` steps | training |
| ``previews/step_*.png``, ``previews.gif`` | inputs, reconstructions, differences, samples | training |
| ``backup/`` | resumable state and the snapshot label-free selection prefers so far | training |
| ``summary.json`` | steps, wall time, why training stopped, which weights are the model | training |
| ``tensorboard/`` | TensorBoard event files: losses, evaluations, preview grids (``tensorboard --logdir``) | training |
| ``report.html`` | the self-contained inspection report (:mod:`cbigan.reporting.report`) | evaluate ``--report`` |
| ``threshold.json`` | the calibrated decision threshold (also merged into ``config.json``) | training, export |
| ``scores_parts.npz``, ``pixel_maps.npz``, ``scores.csv``, ``metrics.csv``, ``evaluation.json`` | evaluation | evaluate |
| ``export/<model>/<version>/`` | the TF Serving SavedModel | training, export |
| ``.lock`` | held (``flock``) while a training writes the folder | training |

Every file is written to a temporary name in the same folder and renamed into place
(:func:`write_atomic`), so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from cbigan.core.anomaly_score import PAPER_LAMBDA
from cbigan.core.config import BEFORE_THE_FIELD, Config
from cbigan.core.errors import DataError, EvaluationError

CONFIG_JSON = "config.json"
WEIGHTS = "model.weights.h5"
TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"
PREVIEWS = "previews"
PREVIEWS_GIF = "previews.gif"
SUMMARY_JSON = "summary.json"
THRESHOLD_JSON = "threshold.json"
BACKUP = "backup/checkpoint.weights.h5"
SELECTED = "backup/selected.weights.h5"   # the snapshot the label-free rule prefers so far
SELECTED_INFO = "backup/selected.json"
SCORES_CSV = "scores.csv"
METRICS_CSV = "metrics.csv"
PARTS_NPZ = "scores_parts.npz"
PIXEL_NPZ = "pixel_maps.npz"
EVALUATION_JSON = "evaluation.json"
EXPORT = "export"
TENSORBOARD = "tensorboard"   # TensorBoard event files (one folder per run)
REPORT_HTML = "report.html"
LOCK = ".lock"

#: Config fields that may differ when a run is resumed (budget and bookkeeping, not the model).
RESUMABLE_CHANGES = {"steps", "minutes", "run_name", "output_dir", "data_dir", "eval_every", "log_every",
                     "preview_every", "monitor_every", "extra", "distribute", "select", "intra_op_threads",
                     "precision", "sources"}
#: Free space a training needs in its run folder before it starts.
MIN_FREE_BYTES = 200 * 2**20


# ---------------------------------------------------------------------------------- atomic writes
def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffixes (``.tmp-<pid>-<name>``), so writers that look at the
    extension (Keras ``.weights.h5``, pandas) behave as for ``path``. On an error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data, sort_keys: bool = True) -> Path:
    """``data`` as indented JSON (values JSON cannot hold are written with ``str``)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def save_weights_atomic(model, path: str | Path) -> Path:
    """``model.save_weights`` through :func:`write_atomic`: a crash never leaves half a checkpoint."""
    return write_atomic(path, model.save_weights)


def read_json(path: str | Path, what: str = "file"):
    """Parsed JSON of ``path``; a one-line :class:`DataError` when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {what} {path}: {e}; fix or delete it") from None


# ---------------------------------------------------------------------------------- CSV logs
def append_csv(path: str | Path, row: dict, keys: list | None = None) -> None:
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


def truncate_csv(path: str | Path, max_step: int) -> None:
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

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + keep)

    write_atomic(path, write)


# ---------------------------------------------------------------------------------- writable places
def check_writable(folder: str | Path, flag: str, what: str = "files") -> Path:
    """``folder`` (made later if missing) when this process may write there; else a one-line
    :class:`DataError` naming the folder, why (a read-only file system, no permission) and ``flag``,
    the option that writes elsewhere (``--out``, ``--csv``, ``--export-dir``, ...).

    The one check of every command, run before its work starts, so that nothing computed is lost to a
    place it cannot be written. A missing folder is judged by its nearest existing parent."""
    given = Path(folder).expanduser()
    folder = Path(os.path.abspath(given))  # the messages name where it is, also for "."
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(f"cannot write {what} to {folder}: {probe} is a file, not a folder; pass {flag} "
                        f"to write elsewhere")
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "a read-only file system" if read_only else "no write permission"
        raise DataError(f"cannot write {what} to {folder} ({why} at {probe}); pass {flag} to write them "
                        f"elsewhere")
    return given


# ---------------------------------------------------------------------------------- the folder itself
def run_dir_of(cfg: Config) -> Path:
    """``<output_dir>/<category>/<run_name>`` of a config whose ``run_name`` is set."""
    return Path(cfg.output_dir) / cfg.category / cfg.run_name


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run folder and check that it is writable and has room, before any training."""
    run_dir = run_dir_of(cfg)  # its own probe below: the folder is made and written at once
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


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``: two trainings never write the same folder.

    The kernel drops the lock when the process dies, even by SIGKILL, so a crashed run never blocks
    its own resumption.
    """

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = Path(run_dir) / LOCK
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


def clear_run(run_dir: Path) -> None:
    """``--fresh``: remove everything a previous training wrote into the folder (not the lock)."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume a run whose stored config differs from ``cfg`` in a field that shapes the model."""
    old = {**BEFORE_THE_FIELD, **read_json(Path(run_dir) / CONFIG_JSON, "run config")}
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as config.json holds it (tuples as lists)
    diff = sorted(k for k in new if k not in RESUMABLE_CHANGES and k in old and new[k] != old[k])
    if diff:
        what = "; ".join(f"{k} {old[k]!r} there, {new[k]!r} now" for k in diff)
        k = "kind" if "kind" in diff else diff[0]  # the setting that decides the others
        example = f" (e.g. --{k.replace('_', '-')} {old[k]})" if isinstance(old[k], (str, int, float)) else ""
        raise DataError(f"{run_dir} holds a run with other settings ({what}); pass those settings to "
                        f"continue it{example}, --fresh to start over there, or another --run-name")


def finished_run(run_dir: Path, cfg: Config) -> str | None:
    """A one-line note when ``run_dir`` holds a run that finished (its ``summary.json`` is of the last
    logged step) and ``cfg`` asks no more of it: its ``--steps`` are reached, or it spent its time budget
    and the command gives the same ``--steps`` and ``--minutes`` again. None otherwise (no run, an
    interrupted one, or a longer budget: the run then resumes)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if not summary or not (run_dir / BACKUP).is_file() or not (run_dir / WEIGHTS).is_file():
        return None
    done = summary.get("steps")
    logged = last_logged_step(run_dir / TRAIN_LOG)
    if not isinstance(done, int) or (logged is not None and logged != done):
        return None  # trained on after the summary was written (an interrupted resume)
    reason = str(summary.get("stopped_because", ""))
    try:
        old = read_json(run_dir / CONFIG_JSON, "run config")
    except DataError:
        return None
    same_budget = old.get("steps") == cfg.steps and old.get("minutes") == cfg.minutes
    if not (done >= cfg.steps or (reason.startswith("time budget") and same_budget)):
        return None
    return (f"{run_dir} is already complete ({done} steps, {reason}): nothing was trained or rewritten; "
            f"evaluate.py {run_dir} scores it, --fresh trains it again, a larger --steps or --minutes "
            f"continues it")


def last_logged_row(path: Path, max_step: int | None = None) -> dict | None:
    """The last row (strings by column) of a CSV log with a ``step`` column whose step is at most
    ``max_step`` (None: any), or None (no file, no such row)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if str(r.get("step", "")).isdigit()
                    and (max_step is None or int(r["step"]) <= max_step)]
    except OSError:
        return None
    return rows[-1] if rows else None


def last_logged_step(path: Path) -> int | None:
    """The step of the last row of a CSV log with a ``step`` column, or None (no file or no rows)."""
    row = last_logged_row(path)
    return int(row["step"]) if row else None


def is_run_dir(path: str | Path) -> bool:
    """A finished run folder: it has ``config.json`` and ``model.weights.h5``."""
    path = Path(path)
    return (path / CONFIG_JSON).is_file() and (path / WEIGHTS).is_file()


def check_run_dir(path: str | Path) -> Path:
    """``path`` as a finished run folder; a one-line :class:`EvaluationError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"{path} does not exist; pass a run folder runs/<category>/<run>")
    if not is_run_dir(path):
        raise EvaluationError(f"{path} is not a run folder (needs {CONFIG_JSON} and {WEIGHTS}); "
                              f"pass runs/<category>/<run>")
    return path


# ---------------------------------------------------------------------------------- records
def write_config(run_dir: str | Path, cfg: Config) -> Path:
    return write_json_atomic(Path(run_dir) / CONFIG_JSON, dataclasses.asdict(cfg))


def read_config(run_dir: str | Path) -> Config:
    """The run's resolved :class:`Config`; :class:`EvaluationError` when missing or invalid."""
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise EvaluationError(f"{run_dir} is not a run folder (no {CONFIG_JSON}); pass runs/<category>/<run>")
    try:
        return Config.from_json(path)
    except (ValueError, TypeError) as e:
        raise EvaluationError(f"{path} is not a valid run config: {e}") from None


def weights_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of the weights and of the model's configuration: stored parts are reused only for them.

    ``extra`` (e.g. the calibrated threshold merged into ``config.json`` later) does not change scores
    and is left out.
    """
    h = hashlib.sha256()
    with open(Path(run_dir) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    try:
        cfg = dataclasses.asdict(Config.from_json(Path(run_dir) / CONFIG_JSON))
    except (ValueError, TypeError):
        cfg = {"unreadable": (Path(run_dir) / CONFIG_JSON).read_text()}
    cfg.pop("extra", None)
    cfg.pop("sources", None)  # where the values came from: not the model
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def write_threshold(run_dir: str | Path, info: dict) -> Path:
    """Write ``threshold.json`` and merge ``info`` into ``config.json`` (key ``threshold``), atomically."""
    run_dir = Path(run_dir)
    path = write_json_atomic(run_dir / THRESHOLD_JSON, info)
    cfg_path = run_dir / CONFIG_JSON
    if cfg_path.is_file():
        data = json.loads(cfg_path.read_text())
        data["threshold"] = info
        # A config re-saved after loading carries the old value in "extra": keep one source of truth.
        if isinstance(data.get("extra"), dict):
            data["extra"].pop("threshold", None)
        write_json_atomic(cfg_path, data)
    return path


def read_threshold(run_dir: str | Path) -> dict | None:
    """The threshold record of a run as stored: ``threshold.json``, else the ``threshold`` key of
    ``config.json``. None when the run was never calibrated; a run without held-out images returns a
    record whose ``threshold`` is None."""
    run_dir = Path(run_dir)
    path = run_dir / THRESHOLD_JSON
    if path.is_file():
        return json.loads(path.read_text())
    cfg_path = run_dir / CONFIG_JSON
    if cfg_path.is_file():
        data = json.loads(cfg_path.read_text())
        rec = data.get("threshold", (data.get("extra") or {}).get("threshold"))
        if isinstance(rec, dict):
            return rec
    return None


def calibrated_threshold(run_dir: str | Path) -> dict | None:
    """The usable calibrated threshold of ``threshold.json`` (a finite number), or None.

    Returns ``{"threshold", "score_lambda", "percentile", "n_val", "rule", "rule_thresholds",
    "has_fusion"}`` (``rule_thresholds``: every image-score rule's threshold at the same percentile,
    empty for a record that predates them; ``has_fusion``: whether it holds the fused rules'
    statistics, :func:`cbigan.scoring.threshold.calibrate_threshold`); :class:`EvaluationError`
    when the file exists but cannot be read.
    """
    path = Path(run_dir) / THRESHOLD_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {e}; fix or delete it") from None
    return usable_threshold(data)


def usable_threshold(data) -> dict | None:
    """The fields of :func:`calibrated_threshold` from a threshold record as calibrated (or as read), or
    None when it holds no finite threshold."""
    if not isinstance(data, dict) or data.get("threshold") is None:
        return None
    thr = float(data["threshold"])
    if not math.isfinite(thr):
        return None
    return {"threshold": thr, "score_lambda": float(data.get("score_lambda", PAPER_LAMBDA)),
            "percentile": data.get("percentile"), "n_val": data.get("n_val"), "rule": data.get("rule"),
            "rule_thresholds": data.get("rule_thresholds") or {}, "has_fusion": "fusion" in data}


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    return write_json_atomic(Path(run_dir) / SUMMARY_JSON, summary)


def read_summary(run_dir: str | Path) -> dict | None:
    """``summary.json`` of a trained run, or None when absent or unreadable."""
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def selected_on_test(run_dir: str | Path, cfg: Config) -> bool:
    """True when the saved model was picked with test labels (``--select-on-test``)."""
    summary = read_summary(run_dir) or {}
    return bool(summary.get("selected_on_test")) or bool(cfg.select_on_test)


def write_evaluation(run_dir: str | Path, summary: dict) -> Path:
    return write_json_atomic(Path(run_dir) / EVALUATION_JSON, summary, sort_keys=False)


def read_evaluation(run_dir: str | Path) -> dict:
    """``evaluation.json`` of an evaluated run; :class:`EvaluationError` when there is none."""
    path = Path(run_dir) / EVALUATION_JSON
    if not path.is_file():
        if is_run_dir(run_dir):
            raise EvaluationError(f"{run_dir} is not evaluated yet; run: python evaluate.py {run_dir}")
        raise EvaluationError(f"{run_dir} is not an evaluated run folder (no {EVALUATION_JSON})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {e}; evaluate the run again") from None
