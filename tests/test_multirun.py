"""Several categories in one command: parsing, GPU slots, and a 3-category run where one category fails."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT
from synthetic import make_category

from cbigan import multirun
from cbigan.core.config import CATEGORIES


def test_category_lists():
    assert multirun.categories("all") == list(CATEGORIES) and len(CATEGORIES) == 15
    assert multirun.categories(" bottle, grid,bottle,") == ["bottle", "grid"]
    assert multirun.is_multi("all") and multirun.is_multi("a,b") and not multirun.is_multi("grid")
    for bad in (",", "a,../x", "a,all"):
        with pytest.raises(ValueError):
            multirun.categories(bad)


def test_launcher_options_are_not_passed_on():
    argv = ["--category", "a,b", "--jobs", "2", "--steps", "5", "--jobs=3", "--category=all", "--no-table",
            "--data-dir", "d"]
    assert multirun.strip_own_options(argv) == ["--steps", "5", "--data-dir", "d"]


def test_the_launcher_does_not_import_tensorflow():
    code = "import sys, train, cbigan.multirun, cbigan.model.distribute; print('tensorflow' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr


def test_gpus_are_dealt_round_robin_over_job_slots(monkeypatch):
    assert multirun.gpu_slots([], 3) == [None, None, None]
    assert multirun.gpu_slots(["0", "1", "2", "3"], 1) == [None]  # one slot keeps them all
    assert multirun.gpu_slots(["0", "1", "2", "3"], 2) == ["0,2", "1,3"]
    assert multirun.gpu_slots(["0", "1"], 2) == ["0", "1"]
    assert multirun.gpu_slots(["0", "1"], 3) == ["0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert multirun.visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert multirun.visible_gpus() == []


@pytest.mark.slow
def test_two_jobs_train_evaluate_and_tabulate_and_a_broken_category_fails_alone(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs"
    for i, name in enumerate(("bottle", "cable")):  # MVTec AD names: the paper's tables have their columns
        make_category(data, name, size=64, n_train=6, n_good=2, n_defect=2, masks=False, seed=i)
    (data / "broken" / "train" / "good").mkdir(parents=True)
    (data / "broken" / "train" / "good" / "000.png").write_bytes(b"not an image")
    cmd = [sys.executable, str(ROOT / "train.py"), "--category", "bottle,broken,cable", "--jobs", "2",
           "--data-dir", str(data), "--output-dir", str(out), "--run-name", "r", "--steps", "2",
           "--image-size", "64", "--patch-size", "64", "--width", "1", "--latent-dim", "8", "--batch-size", "4",
           "--val-split", "0", "--eval-every", "1000", "--preview-every", "1000", "--log-every", "2",
           "--d-iter", "0", "--quiet", "--no-export"]  # d_iter 0: E+G steps only, the quickest to trace
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 1, r.stdout + r.stderr  # one category failed

    folder = out / "multirun" / "r"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ok"] == ["bottle", "cable"] and summary["failed"] == ["broken"]
    broken = next(x for x in summary["results"] if x["category"] == "broken")
    assert broken["stage"] == "train" and "000.png" in broken["error"]
    assert "broken" in r.stdout and "000.png" in r.stdout  # reported in the printed summary
    assert "000.png" in (folder / "broken.log").read_text()  # each category has its own log
    assert "000.png" not in (folder / "bottle.log").read_text()
    for name in ("bottle", "cable"):
        run = out / name / "r"
        assert (run / "model.weights.h5").is_file() and (run / "evaluation.json").is_file()
    assert not (out / "broken" / "r" / "model.weights.h5").exists()

    table = pd.read_csv(folder / "tables" / "table3_auroc.csv")
    ours = table[table["source"] == "this repository"]
    assert len(ours) == 1  # one method row: the CBiGAN of this command, with both categories
    for name in ("bottle", "cable"):
        assert pd.to_numeric(ours[name], errors="coerce").between(0, 1).any(), table
    assert "broken" not in table.columns
