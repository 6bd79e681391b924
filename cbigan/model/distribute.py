"""``--distribute``: data-parallel training of one category on several devices or hosts.

* ``none``: one device, TensorFlow's default placement (the fast path: nothing here is used);
* ``mirrored``: :class:`tf.distribute.MirroredStrategy` on every visible GPU of this host (on a host
  without GPUs: the CPU, one replica);
* ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across hosts (every GPU of every
  worker), configured through the ``TF_CONFIG`` environment variable exactly as TensorFlow documents:
  ``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}``.
  Every worker runs the same command with its own ``task``; worker 0 (or the ``chief`` task when the
  cluster has one) is the chief: it alone writes the run folder, the others write to a temporary folder
  that is deleted at the end (TensorFlow's documented pattern).

``--batch-size`` is the GLOBAL batch (the paper's 32): each of N replicas gets ``batch_size / N``
images per step, and the model (:mod:`cbigan.model.gan`) reduces its losses so that N replicas compute the
gradients of the global-batch means.

A multi-worker run only works if every worker makes the same calls that synchronise: all of them train,
save backups (non-chief ones to their temporary folder) and stop at the same step.
:class:`cbigan.training.run.SyncedStop` makes the wall-clock budget and SIGINT/SIGTERM agree across workers
(through :func:`sum_over_workers`); :func:`broadcast_from_chief` gives every worker the state the chief
resumed from; :func:`all_ok` lets a failure on one worker stop all before training instead of leaving
the others waiting for it.
"""

from __future__ import annotations

import contextlib
import json
import os

from cbigan.core.config import DISTRIBUTE as STRATEGIES

# TensorFlow is imported inside the functions that need it: the multi-category launcher reads TF_CONFIG
# here without paying for a TensorFlow import.


class DistributeError(RuntimeError):
    """A bad ``--distribute`` setup (TF_CONFIG, batch size), with a one-line message."""


def tf_config() -> dict:
    """The parsed ``TF_CONFIG`` ({} when unset); :class:`DistributeError` when it is not valid JSON."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        conf = json.loads(raw)
    except ValueError as e:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(conf, dict):
        raise DistributeError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return conf


def task() -> tuple[str | None, int]:
    """This process's (task type, index) from TF_CONFIG; (None, 0) without one."""
    t = tf_config().get("task") or {}
    return t.get("type"), int(t.get("index", 0))


def is_chief() -> bool:
    """True for the process that writes the run folder: the ``chief`` task, else worker 0, else (no
    TF_CONFIG: single host) always."""
    conf = tf_config()
    if not conf:
        return True
    kind, index = task()
    if kind is None:
        return True
    if kind == "chief":
        return True
    has_chief = bool((conf.get("cluster") or {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief


def writes_run_folder(distribute: str | None) -> bool:
    """Whether this process writes the run folder: always, except a non-chief ``multiworker`` worker
    (a TF_CONFIG left in the environment does not matter to the other modes)."""
    return distribute != "multiworker" or is_chief()


def check_tf_config() -> None:
    """Refuse a TF_CONFIG that MultiWorkerMirroredStrategy cannot use, with a message saying why."""
    conf = tf_config()
    if not conf:
        raise DistributeError("--distribute multiworker needs the TF_CONFIG environment variable, e.g. "
                              "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                              "\"task\": {\"type\": \"worker\", \"index\": 0}}' on the first host (index 1 "
                              "on the second); see docs/distributed.md")
    cluster = conf.get("cluster")
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise DistributeError("TF_CONFIG has no 'cluster' with a 'worker' list of host:port addresses")
    kind, index = task()
    if kind not in ("worker", "chief"):
        raise DistributeError(f"TF_CONFIG task type must be 'worker' or 'chief', got {kind!r}")
    members = cluster.get(kind) or []
    if not 0 <= index < len(members):
        raise DistributeError(f"TF_CONFIG task index {index} is not in cluster[{kind!r}] "
                              f"({len(members)} address(es))")


def make_strategy(name: str | None, devices=None):
    """The ``tf.distribute`` strategy of ``--distribute NAME`` (None for ``none``). ``devices``: mirrored
    only, e.g. ``["/cpu:0", "/cpu:1"]`` (default: every GPU, else the CPU).

    Call this before any other TensorFlow op: MultiWorkerMirroredStrategy must be created first.
    """
    name = name or "none"
    if name not in STRATEGIES:
        raise DistributeError(f"unknown --distribute {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "none":
        return None
    if name == "multiworker":
        check_tf_config()
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def scope(strategy):
    """``strategy.scope()``, or nothing without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def describe(strategy) -> str:
    if strategy is None:
        return "one device"
    kind = "multi-worker" if is_multiworker(strategy) else "mirrored"
    devices = ", ".join(strategy.extended.worker_devices)
    return f"{kind}, {strategy.num_replicas_in_sync} replica(s) (this host: {devices})"


def check_batch_size(strategy, batch_size: int) -> None:
    n = strategy.num_replicas_in_sync if strategy is not None else 1
    if batch_size % n:
        raise DistributeError(f"--batch-size {batch_size} is the global batch and must split evenly over "
                              f"the {n} replicas; pass a multiple of {n}")


def distribute_options(dataset):
    """Shard by data: every worker builds the same (step-keyed) global batches and keeps its share."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(opts)


_SUM_FUNCTIONS: dict = {}


def sum_over_workers(strategy, values) -> list[float]:
    """All-reduce float ``values`` over the workers: the sum over workers of each worker's ``values``
    (counted once per worker, not per replica). Every worker must call it at the same point."""
    import tensorflow as tf

    key = id(strategy)
    if key not in _SUM_FUNCTIONS:
        n_local = len(strategy.extended.worker_devices)

        @tf.function
        def run(vector):
            def replica_fn(v):
                ctx = tf.distribute.get_replica_context()
                first = tf.equal(ctx.replica_id_in_sync_group % n_local, 0)
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(first, v, tf.zeros_like(v)))

            return strategy.run(replica_fn, args=(vector,))

        _SUM_FUNCTIONS[key] = run
    out = _SUM_FUNCTIONS[key](tf.constant([float(v) for v in values], tf.float32))
    return [float(v) for v in strategy.experimental_local_results(out)[0].numpy()]


def all_ok(strategy, ok: bool) -> bool:
    """True when every worker passes ``ok`` True (just ``ok`` without a multi-worker strategy)."""
    if strategy is None or not is_multiworker(strategy):
        return ok
    (failed,) = sum_over_workers(strategy, [0.0 if ok else 1.0])
    return failed == 0.0


def broadcast_from_chief(strategy, variables) -> None:
    """Give every worker the chief's values of ``variables`` (e.g. the checkpoint it resumed from).

    The chief holds replica 0 of MultiWorkerMirroredStrategy; the other replicas add zeros to a sum.
    A no-op without a multi-worker strategy (a mirrored load assigns every local copy already).
    """
    if strategy is None or not is_multiworker(strategy):
        return
    import tensorflow as tf

    variables = list(variables)

    @tf.function
    def run():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            by_dtype = {}  # one all-reduce per dtype (float weights, int64 counters)
            for var in variables:
                by_dtype.setdefault(var.dtype, []).append(var)
            for group in by_dtype.values():
                values = [tf.convert_to_tensor(v) for v in group]
                summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                        [tf.where(first, v, tf.zeros_like(v)) for v in values])
                for var, value in zip(group, summed):
                    var.assign(value)
            return tf.constant(0)

        return strategy.run(replica_fn)

    run()
