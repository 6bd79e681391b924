"""The machine a run trains on: TensorFlow's intra-op threads and the training precision chosen for it.

:func:`choose_intra_op_threads` (``--threads``) and :func:`choose_precision` (``--precision auto``)
read the CPU (its cores, its bfloat16 flags) and whether a GPU is present; training applies them before
building the model.
"""

from __future__ import annotations

from pathlib import Path

from cbigan.core.config import Config

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
    if cfg.distribute != "none" or has_gpu():
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
    if has_gpu() if gpu is None else gpu:
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


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
