"""Several categories in one command: ``python train.py --category all`` (or ``--category a,b,c``).

Each category trains in its own ``train.py`` process with the same flags, one after another, or
``--jobs N`` at once; with GPUs, each of the N job slots gets its own GPU(s) through
``CUDA_VISIBLE_DEVICES`` (the visible GPUs dealt round-robin over the slots). After training, every run
that finished is evaluated (``train.py --evaluate``: as ``evaluate.py RUN``, in the same process) and
``evaluate.py --table`` builds the paper's tables over them. A category that fails (missing data, non-finite loss, ...) is reported and
does not stop the others; the exit status is non-zero when any failed.

Files go to ``OUTPUT_DIR/multirun/<run-name>/``: ``<category>.log`` (the output of its training and
evaluation), ``summary.json`` and ``tables/`` (what ``evaluate.py --table`` writes). This process does not
import TensorFlow.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cbigan.core.config import CATEGORIES, Config, default_run_name
from cbigan.core.runfolder import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
EVALUATING = "evaluating"  # what train.py --evaluate prints before evaluating
#: Options of train.py that belong to this launcher, not to the per-category commands (value-taking).
OWN_OPTIONS = {"--category": True, "--jobs": True, "--no-table": False}


def is_multi(category: str) -> bool:
    return category == "all" or "," in category


def categories(spec: str) -> list[str]:
    """``all``: the 15 MVTec AD categories in the paper's order; else the comma-separated names."""
    if spec == "all":
        return list(CATEGORIES)
    names = []
    for name in (c.strip() for c in spec.split(",")):
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no category in --category {spec!r}")
    for name in names:
        if "/" in name or name in (".", "..") or name == "all":
            raise ValueError(f"bad category name {name!r} in --category {spec!r}")
    return names


def strip_own_options(argv: list[str]) -> list[str]:
    """``argv`` without this launcher's options (``--category X``, ``--jobs=N``, ``--no-table``, ...)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in OWN_OPTIONS:
            skip = OWN_OPTIONS[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what ``nvidia-smi -L`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def gpu_slots(gpus: list[str], jobs: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each job slot: the GPUs dealt round-robin over the slots (a slot gets
    several with more GPUs than jobs, slots share one with fewer); None everywhere without GPUs, and
    for a single slot (it keeps every GPU, e.g. for ``--distribute mirrored``)."""
    if not gpus or jobs == 1:
        return [None] * jobs
    if len(gpus) >= jobs:
        return [",".join(gpus[k::jobs]) for k in range(jobs)]
    return [gpus[k % len(gpus)] for k in range(jobs)]


@dataclass
class Result:
    category: str
    run_dir: str
    log: str
    status: str = "pending"  # ok | failed | interrupted | not started
    stage: str = ""          # train | evaluate: where it failed
    returncode: int | None = None
    seconds: float = 0.0
    gpus: str | None = None
    error: str = ""


@dataclass
class Launcher:
    """Runs the per-category commands in ``jobs`` slots and forwards SIGINT/SIGTERM to them."""

    child_args: list[str]
    cfg: Config
    out_dir: Path
    jobs: int = 1
    evaluate: bool = True
    stop_signal: int | None = None
    running: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_dir(self, category: str) -> Path:
        return Path(self.cfg.output_dir) / category / (self.cfg.run_name or default_run_name(self.cfg))

    def _call(self, cmd, log, env) -> int:
        with self.lock:
            if self.stop_signal is not None:
                return -self.stop_signal
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
            self.running.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.running.discard(proc)

    def run_one(self, category: str, gpus: str | None) -> Result:
        res = Result(category, str(self.run_dir(category)), str(self.out_dir / f"{category}.log"), gpus=gpus)
        env = dict(os.environ)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        t0 = time.monotonic()
        # the child evaluates its run itself (--evaluate): one TensorFlow start per category, not two
        # last, so they win over anything left in child_args (argparse: the last occurrence counts)
        cmd = [sys.executable, str(ROOT / "train.py"), *self.child_args, "--category", category, "--jobs", "1"]
        if self.evaluate:
            cmd.append("--evaluate")
        with open(res.log, "w") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            try:
                rc = self._call(cmd, log, env)
            except OSError as e:
                rc, res.error = 1, f"could not start: {e}"
        res.returncode = rc
        if rc == 0:
            res.status = "ok"
        else:
            res.status = "interrupted" if self.stop_signal is not None else "failed"
            res.error = res.error or _last_error(res.log)
            text = Path(res.log).read_text(errors="replace")
            res.stage = "evaluate" if f"\n{EVALUATING} " in text else "train"
        res.seconds = round(time.monotonic() - t0, 1)
        return res

    def stop(self, signum: int) -> None:
        """Stop launching; pass the signal to the running commands (they save a backup and exit)."""
        with self.lock:
            self.stop_signal = signum
            for proc in self.running:
                try:
                    proc.send_signal(signum)
                except OSError:
                    pass

    def run(self, names: list[str]) -> list[Result]:
        todo: queue.Queue = queue.Queue()
        for name in names:
            todo.put(name)
        results: dict[str, Result] = {}

        def slot(gpus):
            while self.stop_signal is None:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                print(f"[{name}] training" + (f" on GPU {gpus}" if gpus is not None else ""), flush=True)
                res = self.run_one(name, gpus)
                results[name] = res
                detail = f" ({res.stage}, exit {res.returncode}): {res.error}" if res.status != "ok" else ""
                print(f"[{name}] {res.status} in {res.seconds:.0f} s{detail}; log {res.log}", flush=True)

        threads = [threading.Thread(target=slot, args=(g,), daemon=True)
                   for g in gpu_slots(visible_gpus(), self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        return [results.get(n) or Result(n, str(self.run_dir(n)), "", status="not started") for n in names]


def _last_error(log_path: str) -> str:
    """The last ``error:``/``interrupted:`` line of a log, else its last non-empty line."""
    try:
        lines = [l.strip() for l in Path(log_path).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith(("error:", "interrupted:")):
            return line
    return lines[-1][:300] if lines else ""


def build_tables(run_dirs: list[str], out: Path) -> int:
    """``evaluate.py --table`` over the given runs, its output shown; returns its exit status."""
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--table", *run_dirs, "--out", str(out)]
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode


def train_categories(cfg: Config, args, argv: list[str]) -> int:
    """``train.py`` with several categories or ``--jobs``: train each, evaluate, tables, summary.

    ``args`` needs ``category`` (``all`` or ``a,b,c``), ``jobs`` and ``table`` (evaluate and tabulate);
    ``argv`` is the ``train.py`` command line, passed on to each category without those options.
    Returns the exit status."""
    from cbigan.model.distribute import DistributeError, writes_run_folder

    try:
        names = categories(args.category)
        chief = writes_run_folder(cfg.distribute)
    except (ValueError, DistributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    if cfg.distribute == "multiworker" and args.jobs != 1:
        print("error: --distribute multiworker trains one category at a time on every worker: use --jobs 1",
              file=sys.stderr)
        return 2
    run_name = cfg.run_name or default_run_name(cfg)
    out_dir = Path(cfg.output_dir) / "multirun" / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher([a for a in strip_own_options(argv) if a != "--evaluate"], cfg, out_dir,
                        jobs=min(args.jobs, len(names)), evaluate=args.table)
    print(f"{len(names)} categor{'y' if len(names) == 1 else 'ies'}: {', '.join(names)}; {launcher.jobs} at "
          f"a time; logs in {out_dir}", flush=True)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, lambda signum, frame: launcher.stop(signum))
               for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        results = launcher.run(names)
    finally:
        for s, h in old.items():
            signal.signal(s, h)

    ok = [r for r in results if r.status == "ok"]
    table_rc = None
    if args.table and chief and ok and launcher.stop_signal is None:
        table_rc = build_tables([r.run_dir for r in ok], out_dir / "tables")
    summary = {"categories": names, "jobs": launcher.jobs, "wall_seconds": round(time.monotonic() - t0, 1),
               "ok": [r.category for r in ok], "failed": [r.category for r in results if r.status != "ok"],
               "tables": str(out_dir / "tables") if table_rc == 0 else None, "table_exit": table_rc,
               "results": [asdict(r) for r in results]}
    write_json_atomic(out_dir / "summary.json", summary, sort_keys=False)

    print(f"\n{len(ok)}/{len(results)} categories trained" + (" and evaluated" if args.table and chief else ""))
    width = max(len(n) for n in names)
    for r in results:
        line = f"  {r.category:<{width}}  {r.status:<11}"
        if r.status == "ok":
            line += f" {r.run_dir}"
        elif r.status != "not started":
            line += f" {r.stage}: {r.error or f'exit {r.returncode}'} (log {r.log})"
        print(line)
    if table_rc not in (None, 0):
        print(f"error: evaluate.py --table failed (exit {table_rc})", file=sys.stderr)
    print(f"summary: {out_dir / 'summary.json'}")
    if launcher.stop_signal is not None:
        return 128 + launcher.stop_signal
    return 0 if len(ok) == len(results) and table_rc in (None, 0) else 1
