"""Interrupted runs, NaN losses, bad images and locked or unwritable run folders."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from conftest import ROOT
from synthetic import make_category

from cbigan.training.callbacks import NonFiniteLossError
from cbigan.core.config import Config
from cbigan.data.pipeline import DataError
from cbigan.model.gan import CBiGAN, build_model, load_trained as load_run
from cbigan.core.runfolder import RunLock
from cbigan.training.run import train

TINY = ["--image-size", "64", "--patch-size", "64", "--width", "1", "--latent-dim", "8", "--batch-size", "4",
        "--val-split", "0", "--eval-every", "1000", "--preview-every", "1000", "--log-every", "5",
        "--d-iter", "2", "--quiet", "--no-export"]


def _cmd(root, out, name, steps=30, extra=()):
    return [sys.executable, str(ROOT / "train.py"), "--category", "synth_obj", "--data-dir", str(root),
            "--output-dir", str(out), "--run-name", name, "--steps", str(steps), *TINY, *extra]


def _wait_for_row(log, min_step, proc, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if log.is_file():
            try:
                steps = pd.read_csv(log)["step"]
                if len(steps) and steps.max() >= min_step:
                    return
            except (pd.errors.EmptyDataError, KeyError):
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise TimeoutError(log)


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_weights(synthetic_root, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    det = ["--deterministic"]
    killed = subprocess.Popen(_cmd(synthetic_root, tmp_path, "killed", extra=det), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_row(tmp_path / "synth_obj/killed/train_log.csv", 10, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = subprocess.run(_cmd(synthetic_root, tmp_path, "killed", extra=det), env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    straight = subprocess.run(_cmd(synthetic_root, tmp_path, "straight", extra=det), env=env,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    log = pd.read_csv(tmp_path / "synth_obj/killed/train_log.csv")
    assert list(log["step"]) == [5, 10, 15, 20, 25, 30]  # consecutive, no duplicate, none missing
    _, a = load_run(tmp_path / "synth_obj/killed")
    _, b = load_run(tmp_path / "synth_obj/straight")
    assert int(a.train_counter.numpy()) == 30
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    for wa, wb in zip(a.d_optimizer.variables, b.d_optimizer.variables):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


@pytest.mark.slow
def test_sigterm_leaves_a_loadable_checkpoint(synthetic_root, tmp_path):
    proc = subprocess.Popen(_cmd(synthetic_root, tmp_path, "term", steps=100_000),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_row(tmp_path / "synth_obj/term/train_log.csv", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "resume" in err and "Traceback" not in err
    cfg = Config.from_json(tmp_path / "synth_obj/term/config.json")
    model = build_model(cfg)
    model.load_weights(tmp_path / "synth_obj/term/backup/checkpoint.weights.h5")
    assert int(model.train_counter.numpy()) >= 5
    steps = pd.read_csv(tmp_path / "synth_obj/term/train_log.csv")["step"]
    assert steps.iloc[-1] == int(model.train_counter.numpy())  # the log reaches the checkpoint


def _tiny_cfg(root, out, **kw):
    base = dict(category="synth_obj", data_dir=str(root), output_dir=str(out), run_name="r", image_size=64,
                patch_size=64, width=1, latent_dim=8, batch_size=4, val_split=0, log_every=4, eval_every=1000,
                preview_every=1000, d_iter=1)
    base.update(kw)
    return Config(**base)


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_term_and_keeps_the_checkpoint(synthetic_root, tmp_path, monkeypatch):
    original = CBiGAN.eg_losses

    def poisoned(self, x, z, *rest):
        losses = original(self, x, z, *rest)
        bad = tf.cast(self.train_counter.value, tf.float32) >= 9.0
        losses["loss_eg"] = tf.where(bad, tf.constant(float("nan")), losses["loss_eg"])
        return losses

    monkeypatch.setattr(CBiGAN, "eg_losses", poisoned)
    with pytest.raises(NonFiniteLossError) as e:
        train(_tiny_cfg(synthetic_root, tmp_path, steps=40), verbose=0, export=False)
    msg = str(e.value)
    assert "loss_eg" in msg and "step 10" in msg and "\n" not in msg
    monkeypatch.setattr(CBiGAN, "eg_losses", original)
    model = build_model(_tiny_cfg(synthetic_root, tmp_path))
    model.load_weights(tmp_path / "synth_obj/r/backup/checkpoint.weights.h5")
    assert int(model.train_counter.numpy()) == 8  # the last backup before the NaN
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert not (tmp_path / "synth_obj/r/model.weights.h5").exists()


def _bad_images_category(root):
    cat = make_category(root, "badimgs", size=32, n_train=6, n_good=2, n_defect=2, masks=False)
    good = cat / "train/good"
    png = (good / "000.png").read_bytes()
    (good / "truncated.png").write_bytes(png[: len(png) // 2])
    (good / "empty.png").write_bytes(b"")
    (good / "notes.jpg").write_text("this is not an image")
    rgb = np.asarray(Image.open(good / "001.png"))
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(good / "sixteen.png")
    Image.fromarray(rgb).convert("P").save(good / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(good / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(good / "rgba.png")
    return cat


@pytest.mark.slow
def test_bad_images_refused_with_a_full_list_or_skipped(tmp_path):
    root = tmp_path / "data"
    _bad_images_category(root)
    args = ["--category", "badimgs", "--data-dir", str(root), "--output-dir", str(tmp_path / "runs"),
            "--steps", "2", *TINY]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True)
    assert r.returncode == 1
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1
    for name in ("truncated.png", "empty.png", "notes.jpg"):
        assert name in err[0]
    for name in ("sixteen.png", "palette.png", "cmyk.jpg", "rgba.png"):  # odd but valid: converted
        assert name not in err[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--skip-bad-images"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipped 3 unreadable image(s)" in r.stdout and "notes.jpg" in r.stdout


@pytest.mark.slow
def test_locked_run_folder_is_refused(synthetic_root, tmp_path):
    run_dir = tmp_path / "synth_obj" / "r"
    run_dir.mkdir(parents=True)
    lock = RunLock(run_dir)
    try:
        with pytest.raises(DataError, match="in use by another training"):
            train(_tiny_cfg(synthetic_root, tmp_path, steps=2), verbose=0, export=False)
    finally:
        lock.release()
    train(_tiny_cfg(synthetic_root, tmp_path, steps=2), verbose=0, export=False)  # free again


@pytest.mark.slow
def test_resume_refuses_other_settings_and_fresh_starts_over(synthetic_root, tmp_path):
    run = train(_tiny_cfg(synthetic_root, tmp_path, steps=4), verbose=0, export=False)
    with pytest.raises(DataError, match=r"other settings \(alpha 0\.0001 there, 0\.5 now\); pass those "
                                        r"settings to continue it \(e\.g\. --alpha 0\.0001\)"):
        train(_tiny_cfg(synthetic_root, tmp_path, steps=8, alpha=0.5), verbose=0, export=False)
    train(_tiny_cfg(synthetic_root, tmp_path, steps=8), verbose=0, export=False)  # more steps: resumes
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["step"]) == [4, 8]
    assert log["seconds"][1] > log["seconds"][0]  # the resumed segment counts on from the first one's time
    train(_tiny_cfg(synthetic_root, tmp_path, steps=4, alpha=0.5), verbose=0, fresh=True, export=False)
    assert list(pd.read_csv(run / "train_log.csv")["step"]) == [4]


@pytest.mark.slow
def test_the_same_command_on_a_finished_run_rewrites_nothing(synthetic_root, tmp_path, capsys, monkeypatch):
    import cbigan.training.run as training

    run = train(_tiny_cfg(synthetic_root, tmp_path, steps=4), verbose=0, export=True)

    def stamps():  # every file of the run but the lock, which each command takes
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    files = stamps()
    summary = (run / "summary.json").read_text()
    capsys.readouterr()
    with monkeypatch.context() as m:  # decided before any image is loaded
        m.setattr(training, "load_train_set", lambda *a, **k: pytest.fail("loaded the training images"))
        assert train(_tiny_cfg(synthetic_root, tmp_path, steps=4), verbose=0, export=True) == run
    out = capsys.readouterr().out
    assert "is already complete (4 steps, reached 4 steps): nothing was trained or rewritten" in out
    assert stamps() == files  # no new export either
    assert (run / "summary.json").read_text() == summary
    train(_tiny_cfg(synthetic_root, tmp_path, steps=6), verbose=0, export=False)  # a larger budget resumes
    assert list(pd.read_csv(run / "train_log.csv")["step"]) == [4, 6]


@pytest.mark.slow
def test_a_run_that_spent_its_time_budget_is_complete_for_the_same_budget(synthetic_root, tmp_path, capsys):
    cfg = _tiny_cfg(synthetic_root, tmp_path, steps=100_000, minutes=0.01)
    run = train(cfg, verbose=0, export=False)
    done = json.loads((run / "summary.json").read_text())
    assert done["stopped_because"] == "time budget of 0.01 min spent"
    capsys.readouterr()
    train(cfg, verbose=0, export=False)
    assert f"already complete ({done['steps']} steps, time budget of 0.01 min spent)" in capsys.readouterr().out
    train(_tiny_cfg(synthetic_root, tmp_path, steps=100_000, minutes=0.02), verbose=0, export=False)
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == done["steps"]


def test_unwritable_output_is_reported_before_training(synthetic_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write to run folder"):
        train(_tiny_cfg(synthetic_root, blocker, steps=2), verbose=0, export=False)
