"""End-to-end training: run folder contents, learning on obvious defects, real-data smoke, CLI errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, shared_category
from synthetic import learning_config, make_category, make_learning_category

from cbigan.core.config import Config
from cbigan.data.pipeline import load_test_set
from cbigan.scoring.metrics import auroc
from cbigan.model.gan import build_model
from cbigan.scoring.parts import Scorer
from cbigan.model.gan import load_trained as load_run
from cbigan.training.run import train

pytestmark = pytest.mark.slow  # every test here trains or scores a model (python -m pytest -m 'not slow' leaves them out)


def test_learning_on_obvious_defects(tmp_path):
    """A small CBiGAN learns a synthetic category: defects invisible to the untrained model are found."""
    # a bright square in the dark background: |x| is unchanged, so an untrained model cannot see it
    make_learning_category(tmp_path / "data", "learn")
    cfg = learning_config(tmp_path / "data", tmp_path, "learn", val_split=0)
    test = load_test_set(cfg)
    before = auroc(test.labels, Scorer(build_model(cfg), cfg).score(test.images).image_scores(0.1))
    run = train(cfg, verbose=0, export=False)
    _, model = load_run(run)
    after = auroc(test.labels, Scorer(model, cfg).score(test.images).image_scores(0.1))
    assert before < 0.6, before
    assert after >= 0.9, after
    log = pd.read_csv(run / "train_log.csv")
    assert log["loss_rx"].iloc[-1] < 0.7 * log["loss_rx"].iloc[0]


def test_run_folder_contents(synthetic_root, tmp_path):
    cfg = Config(category="synth_tex", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="t",
                 kind="texture", image_size=128, patch_size=64, steps=6, batch_size=4, log_every=3,
                 eval_every=3, preview_every=6)
    run = train(cfg, verbose=0)
    assert run == tmp_path / "synth_tex" / "t"
    saved = json.loads((run / "config.json").read_text())
    assert saved["kind"] == "texture" and saved["patch_size"] == 64 and saved["alpha"] == 1e-4
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["step"]) == [3, 6]
    for col in ("loss_d", "gp", "d_real", "d_fake", "loss_eg", "loss_c", "loss_rx", "loss_rz", "loss_total"):
        assert col in log.columns
    ev = pd.read_csv(run / "eval_log.csv")
    # one held-out image: no snapshot choice, so the step-3 monitoring waits for its share of the time
    assert list(ev["step"]) == [3, 6] and 0 <= ev["test_auroc"].iloc[-1] <= 1
    assert (run / "previews" / "step_0000006.png").stat().st_size > 1000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["selected_on_test"] is False
    cfg2, model = load_run(run)
    assert int(model.train_counter.numpy()) == summary["selected_step"] and cfg2.kind == "texture"
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["n_val"] == 1 and threshold["threshold"] > 0 and summary["threshold"] == threshold["threshold"]
    assert (run / "export" / "synth_tex" / "1" / "saved_model.pb").is_file()


def test_select_on_test_is_labelled(synthetic_root, tmp_path):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="s",
                 image_size=64, patch_size=64, steps=4, batch_size=4, log_every=2, eval_every=2,
                 preview_every=100, select_on_test=True)
    run = train(cfg, verbose=0, export=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_on_test"] is True and "test labels used" in summary["model"]


@pytest.mark.parametrize("monitor_every, monitored", [(4, [4, 8, 9]), (0, [9]), (None, [2, 4, 6, 8, 9])])
def test_test_set_monitoring_every_monitor_every_steps_and_at_the_end(synthetic_root, tmp_path, monitor_every,
                                                                      monitored):
    """Selection every eval_every steps; the test set scored at the first evaluation past each multiple of
    monitor_every (None: every evaluation; 0: never before the end) and at the run's last step."""
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="mon",
                 image_size=64, patch_size=64, steps=9, batch_size=4, log_every=2, eval_every=2,
                 preview_every=100, monitor_every=monitor_every, val_split=0.3)
    run = train(cfg, verbose=0, export=False)
    ev = pd.read_csv(run / "eval_log.csv")
    assert list(ev["step"]) == [2, 4, 6, 8, 9]
    assert ev["val_synthetic_auroc"].notna().all()  # the label-free selection runs at every evaluation
    assert list(ev["step"][ev["test_auroc"].notna()]) == monitored
    assert ev["test_auroc"].dropna().between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["last_eval"]["test_auroc"] <= 1


@pytest.mark.parametrize("select, rows", [("final", [2, 9]), ("synthetic", [2, 4, 6, 8, 9])])
def test_scoring_that_chooses_nothing_waits_for_its_share_of_the_time(synthetic_root, tmp_path, monkeypatch,
                                                                        select, rows, capsys):
    """With no time to spare (share 0, nothing free), the last weights' held-out scoring runs once to be
    timed and then only at the end, the test set is never scored (a note says so) and the label-free
    selection keeps every evaluation."""
    import cbigan.training.monitor as monitor

    monkeypatch.setattr(monitor, "EVAL_SHARE", 0.0)
    monkeypatch.setattr(monitor, "EVAL_FREE_S", 0.0)
    monkeypatch.setattr(monitor, "FINAL_FREE_S", 0.0)
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="share",
                 image_size=64, patch_size=64, steps=9, batch_size=4, log_every=2, eval_every=2,
                 preview_every=100, monitor_every=None, val_split=0.3, select=select)
    run = train(cfg, verbose=0, export=False)
    ev = pd.read_csv(run / "eval_log.csv")
    assert list(ev["step"]) == rows
    assert "test_auroc" not in ev or ev["test_auroc"].isna().all()
    assert "the test set is not scored at the end of training" in capsys.readouterr().out
    assert ev["val_score_mean"].notna().all()
    if select == "synthetic":
        assert ev["val_synthetic_auroc"].notna().all()


def test_time_budget_stops_training(synthetic_root, tmp_path):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="m",
                 image_size=64, patch_size=64, steps=10_000, minutes=0.001, batch_size=4, log_every=2,
                 eval_every=100, preview_every=100)
    run = train(cfg, verbose=0, export=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] < 10_000 and "time budget" in summary["stopped_because"]


def test_cli_missing_data_folder_gives_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--category", "grid", "--data-dir",
                        str(tmp_path / "nowhere"), "--steps", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "nowhere/grid/train/good" in err[0] and "--download" in err[0]


def test_cli_corrupt_image_is_named(synthetic_root, tmp_path):
    root = tmp_path / "data"
    cat = make_category(root, "broken", size=64, n_train=4, n_good=2, n_defect=2)
    (cat / "train/good/bad.png").write_bytes(b"not an image")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--category", "broken", "--data-dir", str(root),
                        "--steps", "1", "--output-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "bad.png" in r.stderr


@pytest.mark.parametrize("category", ["bottle", "leather"])
def test_real_data_smoke(category, tmp_path):
    path = shared_category("mvtec_ad", category)
    cfg = Config(category=category, data_dir=str(path.parent), output_dir=str(tmp_path), run_name="smoke",
                 steps=2, batch_size=4, log_every=2, eval_every=2, preview_every=2, d_iter=1).resolved()
    run = train(cfg, verbose=0, export=False)
    ev = pd.read_csv(run / "eval_log.csv")
    assert np.isfinite(ev["test_auroc"]).all()
    assert cfg.patch_size == (64 if category == "leather" else 128)
