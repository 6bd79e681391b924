"""The benchmarks run end to end on their smallest settings and print their figures (``python -m
cbigan.bench ...``). These check that each benchmark works and reads its flags, not its figures: those are
measured on a quiet machine (results/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "cbigan.bench", *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
def test_metrics_times_the_pixel_metrics_against_the_references():
    out = bench("metrics", "--maps", "3", "--size", "32", "--repeats", "1")
    assert "3 maps of 32x32" in out and "best of 1" in out
    assert re.search(r"sklearn roc_auc_score .* \(equal\)", out) and re.search(r"AUPRO recipe .* \(equal\)", out)
    assert "reference" not in bench("metrics", "--maps", "2", "--size", "16", "--repeats", "1", "--no-reference")


@pytest.mark.slow
def test_score_times_batched_scoring_against_the_per_patch_loop():
    out = bench("score", "--texture-images", "1", "--texture-loop-images", "1", "--object-images", "2",
                "--object-loop-images", "1", "--repeats", "1")
    assert re.search(r"texture 512px\s+64\s+[\d.]+\s+[\d.]+ \(", out), out
    assert "images: 1 textures / 2 objects" in out and "1 / 1 through the one-patch-per-call loops" in out


@pytest.mark.slow
def test_serve_times_the_export_beside_the_python_path():
    out = bench("serve", "--kinds", "object64", "--batches", "1", "--seconds", "0.05", "--min-calls", "1")
    assert re.search(r"object 64 px\s+1\s+[\d.]+", out), out
    assert "MFLOP per image" in out and "max rel. score diff" in out


@pytest.mark.slow
def test_loop_splits_a_short_run_into_the_step_and_the_rest(tmp_path):
    from synthetic import make_category

    make_category(tmp_path, "synth_obj", kind="object", size=64)
    out = bench("loop", "--data", str(tmp_path), "--categories", "synth_obj", "--steps", "4", "--preset", "fast",
                "--intra-op-threads", "1")
    assert re.search(r"outside the train steps: [\d.]+% of the fit loop", out), out
    assert "(outside fit) calibrate_threshold" in out
