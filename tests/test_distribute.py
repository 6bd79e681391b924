"""--distribute: mirrored replicas match one device; two workers on localhost train and only the chief
writes; TF_CONFIG and batch-size checks."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from conftest import ROOT
from synthetic import make_category

from cbigan.model import distribute as dist
from cbigan.core.config import Config

# d_iter 0: one step function to trace on the workers (the mirrored test covers both branches)
TINY = ["--image-size", "64", "--patch-size", "64", "--width", "1", "--latent-dim", "8", "--batch-size", "4",
        "--val-split", "0", "--eval-every", "1000", "--preview-every", "1000", "--log-every", "2",
        "--d-iter", "0", "--ema-every", "2", "--quiet", "--no-export"]


def _env(**extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ TF_CONFIG, checks
def _tf_config(monkeypatch, cluster, kind, index):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))


def test_chief_is_worker_zero_or_the_chief_task(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert dist.is_chief() and dist.task() == (None, 0)
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    _tf_config(monkeypatch, workers, "worker", 0)
    assert dist.is_chief()
    _tf_config(monkeypatch, workers, "worker", 1)
    assert not dist.is_chief() and dist.task() == ("worker", 1)
    assert not dist.writes_run_folder("multiworker")
    assert dist.writes_run_folder("none") and dist.writes_run_folder("mirrored")  # TF_CONFIG is ignored there
    with_chief = {"chief": ["127.0.0.1:0"], **workers}
    _tf_config(monkeypatch, with_chief, "worker", 0)
    assert not dist.is_chief()
    _tf_config(monkeypatch, with_chief, "chief", 0)
    assert dist.is_chief()


def test_bad_setups_are_refused_with_one_line(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(dist.DistributeError, match="needs the TF_CONFIG"):
        dist.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(dist.DistributeError, match="not valid JSON"):
        dist.make_strategy("multiworker")
    _tf_config(monkeypatch, {"worker": ["127.0.0.1:1"]}, "worker", 3)
    with pytest.raises(dist.DistributeError, match="index 3"):
        dist.make_strategy("multiworker")
    with pytest.raises(dist.DistributeError, match="unknown --distribute"):
        dist.make_strategy("tpu")
    assert dist.make_strategy("none") is None

    class Fake:
        num_replicas_in_sync = 4

    dist.check_batch_size(Fake(), 32)
    with pytest.raises(dist.DistributeError, match="global batch.*multiple of 4"):
        dist.check_batch_size(Fake(), 30)
    with pytest.raises(ValueError, match="distribute"):
        Config(distribute="horovod").resolved()


# ------------------------------------------------------------------------------ mirrored == one device
def _train_only_category(tmp_path):
    """8 training images and no test set (no scoring during training: these tests are about steps)."""
    root = tmp_path / "data"
    shutil.rmtree(make_category(root, "synth_obj", size=64, n_train=8, n_good=1, n_defect=1, masks=False)
                  / "test")
    return root



MIRRORED_CHECK = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import pandas as pd
    from cbigan.model import distribute as dist
    from cbigan.core.config import Config
    from cbigan.model.gan import load_trained as load_run
    from cbigan.training.run import train

    make = dist.make_strategy
    dist.make_strategy = lambda name, devices=None: make(name, ["/cpu:0", "/cpu:1"] if name == "mirrored" else None)
    root, out = sys.argv[1], sys.argv[2]
    base = dict(category="synth_obj", data_dir=root, output_dir=out, image_size=64, patch_size=64, width=1,
                latent_dim=8, batch_size=4, val_split=0, steps=4, log_every=2, eval_every=1000,
                preview_every=1000, d_iter=1, ema_every=2, alpha=0.5, seed=3)
    runs = {d: train(Config(**base, run_name=d, distribute=d), verbose=0, export=False) for d in ("none", "mirrored")}
    (_, one), (_, two) = load_run(runs["none"]), load_run(runs["mirrored"])
    weights = max(float(np.max(np.abs(a - b))) for a, b in zip(one.get_weights(), two.get_weights()))
    # Adam's second moments hold squared gradients (large: L_C sums over pixels): compare relatively
    opt = max(float(np.max(np.abs(a.numpy() - b.numpy()) / (1e-6 + 1e-4 * np.abs(a.numpy()))))
              for o1, o2 in ((one.d_optimizer, two.d_optimizer), (one.eg_optimizer, two.eg_optimizer))
              for a, b in zip(o1.variables, o2.variables))
    logs = [pd.read_csv(runs[d] / "train_log.csv") for d in ("none", "mirrored")]
    cols = ["loss_d", "gp", "d_real", "d_fake", "loss_eg", "loss_c", "loss_total"]
    rel = float(np.max(np.abs(logs[0][cols].values - logs[1][cols].values) / (np.abs(logs[0][cols].values) + 1e-3)))
    summary = json.loads((runs["mirrored"] / "summary.json").read_text())
    print("RESULT " + json.dumps({
        "weights": weights, "optimizers": opt, "log_rel": rel, "steps": [list(l["step"]) for l in logs],
        "counters": [int(m.train_counter.numpy()) for m in (one, two)],
        "iterations": [int(m.d_optimizer.iterations.numpy()) for m in (one, two)],
        "ema_updates": [int(m.ema_updates.numpy()) for m in (one, two)],
        "changed": float(np.max(np.abs(two.generator.get_weights()[0] - two.ema_generator.get_weights()[0]))),
        "distribute": summary["distribute"]}))
""")


@pytest.mark.slow
def test_mirrored_steps_match_one_device_with_the_same_global_batch(tmp_path):
    """Two replicas of 2 images each take the same steps as one device with the batch of 4: the losses
    are reduced over replicas correctly (GP and consistency included), and z is sliced, not re-drawn."""
    root = _train_only_category(tmp_path)
    r = subprocess.run([sys.executable, "-c", MIRRORED_CHECK, str(root), str(tmp_path / "runs")],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert "mirrored, 2 replica(s)" in res["distribute"]
    assert res["steps"] == [[2, 4], [2, 4]]
    assert res["counters"] == [4, 4] and res["iterations"] == [2, 2] and res["ema_updates"] == [2, 2]
    assert res["weights"] < 1e-5, res
    assert res["optimizers"] <= 1.0, res  # every slot within rtol 1e-4, atol 1e-6
    assert res["log_rel"] < 1e-4, res
    assert res["changed"] > 0  # the models did train


# ------------------------------------------------------------------------------ two workers on localhost
def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(tmp_path):
    root = _train_only_category(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in (0, 1):
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir()
        conf = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, str(ROOT / "train.py"), "--category", "synth_obj", "--data-dir", str(root),
               # the worker is given its own output folder, which must stay untouched
               "--output-dir", str(tmp_path / f"out{index}"), "--run-name", "mw", "--steps", "4",
               "--distribute", "multiworker", *TINY]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env(TF_CONFIG=conf, TMPDIR=str(tmp))))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=500))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "not the chief" in outs[1][0] and "not the chief" not in outs[0][0]

    run = tmp_path / "out0" / "synth_obj" / "mw"
    assert list(pd.read_csv(run / "train_log.csv")["step"]) == [2, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and "multi-worker, 2 replica(s)" in summary["distribute"]
    assert (run / "model.weights.h5").is_file() and (run / "backup" / "checkpoint.weights.h5").is_file()
    assert not (tmp_path / "out1").exists()  # the non-chief wrote nothing to its output folder
    assert not list((tmp_path / "tmp1").glob("cbigan-*"))  # and removed its temporary run folder
