"""The inspection report: plain-data rendering, and the real page in headless Chromium."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthetic import make_untrained_run

from cbigan.cli import evaluate
from cbigan.reporting.report import ImageRow, ReportData, jpeg, order_rows, overlay, render_html
from cbigan.core.runfolder import REPORT_HTML, write_threshold

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _row(name, label, score, anomalous, thumb=b"\xff\xd8x"):
    return ImageRow(name, "good" if label == 0 else "scratch", label, score, anomalous, thumb)


def test_rows_errors_first_then_by_score():
    rows = [_row("tn", 0, 0.1, False), _row("tp", 1, 0.9, True), _row("fp", 0, 0.7, True),
            _row("fn", 1, 0.2, False), _row("fp2", 0, 0.8, True)]
    assert [r.outcome for r in rows] == ["TN", "TP", "FP", "FN", "FP"]
    assert [r.name for r in order_rows(rows)] == ["fn", "fp2", "fp", "tp", "tn"]
    no_threshold = [_row("a", 0, 0.1, None), _row("b", 1, 0.5, None)]
    assert [r.name for r in order_rows(no_threshold)] == ["b", "a"] and no_threshold[0].outcome == ""


def test_page_is_self_contained_with_one_row_per_image():
    rows = [_row(f"img{i}", i % 2, float(i), i > 2) for i in range(6)]
    page = render_html(ReportData("t <x>", [("category", "bottle")], [("selected_step", 50)], ["lambda", "auroc"],
                                  [[0.1, 0.75]], threshold=2.5, threshold_rule="99th percentile",
                                  figures={"ROC": b"\x89PNG"}, images=rows))
    assert page.count('<tr class="image-row') == 6
    assert "t &lt;x&gt;" in page and "selected_step" in page and "0.75" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    first = page.index('<tr class="image-row')
    assert 'data-outcome="FN"' in page[first:first + 300] or 'data-outcome="FP"' in page[first:first + 300]


def test_500_images_stay_under_20_mb():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # noise: the worst case for JPEG
    amap = rng.random((128, 128)).astype(np.float32)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:80, 40:80] = 1
    thumb, over = jpeg(image), overlay(image, amap, (0.0, 1.0), mask)
    assert Image.open(__import__("io").BytesIO(over)).size == (96, 96)
    rows = [ImageRow(f"scratch/{i:03d}.png", "scratch", 1, float(i), i % 3 == 0, thumb, over) for i in range(500)]
    page = render_html(ReportData("big", [], [], [], [], threshold=1.0, images=rows))
    assert len(page.encode()) < 20 * 2**20, len(page) / 2**20


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(synthetic_root, tmp_path, capsys):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome found (looked for " + ", ".join(BROWSERS) + "); .ci/run installs "
                    "Debian's 'chromium' with apt where it can")
    run = make_untrained_run(synthetic_root, tmp_path / "runs", "synth_obj", image_size=64, patch_size=64,
                             width=2, latent_dim=16, batch_size=4)["run"]
    assert evaluate.main([str(run), "--quiet"]) == 0
    scores = pd.read_csv(run / "scores.csv")
    good = np.sort(scores.loc[scores["label"] == 0, "score"].to_numpy())
    write_threshold(run, {"threshold": float(good[-2]), "score_lambda": 0.1, "percentile": 99.0, "n_val": 3,
                          "rule": "for the test: the second-highest good test score"})
    capsys.readouterr()
    assert evaluate.main([str(run), "--report", "--quiet"]) == 0
    page = run / REPORT_HTML
    assert f"wrote {page}" in capsys.readouterr().out
    n_images = len(pd.read_csv(run / "scores.csv"))
    text = page.read_text()
    assert text.count('<tr class="image-row') == n_images and "ROC curve" in text

    profile, shot = tmp_path / "profile", tmp_path / "shot.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    url = page.resolve().as_uri()
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,1600", url], check=True,
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10, pixels.std()  # not a blank page
    dom = subprocess.run(flags + ["--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count('<tr class="image-row') == n_images
    n_errors = dom.count('<tr class="image-row error"')
    assert n_errors > 0  # at least the highest-scoring good image is a false positive
    rows = re.findall(r'<tr class="(image-row[^"]*)"', dom)
    assert all("error" in r for r in rows[:n_errors])  # false negatives and positives first
    assert dom.count("data:image/jpeg;base64,") >= 2 * n_images  # thumbnail and map overlay per image


@pytest.mark.slow
def test_a_missing_mask_is_reported_once_with_the_report(synthetic_root, tmp_path, capsys):
    """evaluate.py --report reads the test folder twice (scoring, pictures): its warnings print once."""
    import warnings

    data = tmp_path / "data"
    shutil.copytree(synthetic_root / "synth_obj", data / "synth_obj")
    next((data / "synth_obj/ground_truth/red_square").glob("*_mask.png")).unlink()
    run = make_untrained_run(data, tmp_path / "runs", "synth_obj", image_size=64, patch_size=64,
                             width=2, latent_dim=16, batch_size=4)["run"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # as a user's interpreter: once per place it is raised
        assert evaluate.main([str(run), "--report", "--quiet", "--data-dir", str(data)]) == 0
    assert sum("have no mask" in str(w.message) for w in seen) == 1
    assert (run / REPORT_HTML).is_file()
