"""Figures of a tiny synthetic run: every command writes a non-empty image of the expected size."""

import json
import os
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbigan.reporting import figures, plots
from cbigan.training import previews
from cbigan.cli.plots import main
from cbigan.core.runfolder import write_config

DPI = 40  # small images keep the tests fast; sizes scale exactly with it


@pytest.fixture(scope="module")
def obj_run(synthetic_root, tmp_path_factory):
    """A trained 6-step run of the 64 px object category (with masks, logs and 2 previews)."""
    from cbigan.core.config import Config
    from cbigan.training.run import train

    out = tmp_path_factory.mktemp("runs")
    return train(Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(out), steps=6,
                        batch_size=4, image_size=64, patch_size=64, log_every=3, eval_every=6,
                        preview_every=3, run_name="r"), verbose=0)


@pytest.fixture(scope="module")
def tex_run(synthetic_root, tmp_path_factory):
    """An untrained texture run (128 px images, 4 patches of 64 px): config and weights, no logs."""
    from cbigan.core.config import Config
    from cbigan.model.gan import build_model

    run = tmp_path_factory.mktemp("runs") / "synth_tex" / "untrained"
    run.mkdir(parents=True)
    cfg = Config(category="synth_tex", kind="texture", data_dir=str(synthetic_root), image_size=128,
                 patch_size=64, run_name="untrained").resolved()
    write_config(run, cfg)
    build_model(cfg).save_weights(run / "model.weights.h5")
    return run


def copy_run(run, dest, **config_changes):
    """A copy of a run folder, with some config.json fields changed."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "figures", ignore_errors=True)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(config_changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def png(path, size_in):
    """Check a non-blank PNG of ``size_in`` inches at DPI; return its pixels."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        expected = (round(size_in[0] * DPI), round(size_in[1] * DPI))
        assert abs(im.size[0] - expected[0]) <= 1 and abs(im.size[1] - expected[1]) <= 1, im.size
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 5  # not a blank canvas
    return pixels


def test_headless_backend():
    assert matplotlib.get_backend().lower() == "agg"


def test_select_examples_most_and_least_of_each_type():
    types = ["good"] * 4 + ["crack"] * 3 + ["hole"]
    scores = [1, 4, 2, 3, 10, 30, 20, 5]
    # default: most and least anomalous of good, crack, hole (one image only): good first
    assert plots.select_examples(types, scores) == [1, 0, 5, 4, 7]
    assert plots.select_examples(types, scores, 3) == [1, 5, 7]   # the most anomalous of each
    assert plots.select_examples(types, scores, 4) == [1, 0, 5, 7]
    assert len(plots.select_examples(types, scores, 8)) == 8
    assert len(plots.select_examples(types, scores, 50)) == 8     # at most every image


@pytest.mark.slow
def test_curves(obj_run, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["curves", str(obj_run), "--out", str(out), "--dpi", str(DPI)]) == 0
    png(out, figures.CURVES_SIZE)
    with Image.open(out) as im:
        assert "cbigan.plots curves" in im.info.get("Description", "")
    assert "curves.png: python -m cbigan.plots curves" in (tmp_path / "commands.txt").read_text()


def test_curves_symlog_where_losses_span_orders_of_magnitude():
    steps = np.arange(1, 201) * 100
    log = pd.DataFrame({"step": steps, "loss_d": -np.linspace(5, 1, 200), "gp": 0.5,
                        "loss_eg": 0.1, "loss_total": 0.2, "loss_c": 5000 / np.sqrt(steps),
                        "loss_rx": 4990 / np.sqrt(steps), "loss_rz": 0.3 + 10 / np.sqrt(steps),
                        "d_real": 0.1, "d_fake": -0.1})
    fig = figures.curves_figure(log, None)
    scales = [ax.get_yscale() for ax in fig.axes[:3]]
    assert scales == ["linear", "log", "linear"]  # all positive: plain log
    log["loss_rz"] = np.where(steps % 200 == 0, 0.0, 0.5)  # the panel now holds zeros: symmetric log
    log["d_real"] = np.linspace(-300, 1, 200)  # critic scores across zero and 3 orders of magnitude
    fig2 = figures.curves_figure(log, None)
    assert [ax.get_yscale() for ax in fig2.axes[:3]] == ["linear", "symlog", "symlog"]
    matplotlib.pyplot.close(fig2)
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_recon_requested_rows_and_pdf(obj_run, tmp_path):
    out = tmp_path / "recon.png"
    assert main(["recon", str(obj_run), "--rows", "3", "--out", str(out), "--dpi", str(DPI),
                       "--pdf"]) == 0
    png(out, figures.recon_size(3, 1))
    assert (tmp_path / "recon.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.slow
def test_recon_default_rows_go_to_the_run_folder(obj_run):
    assert main(["recon", str(obj_run), "--dpi", str(DPI)]) == 0
    # synth_obj: good and red_square, the most and least anomalous of each
    png(obj_run / "figures" / "recon.png", figures.recon_size(4, 1))


@pytest.mark.slow
def test_recon_rows_in_the_figure(obj_run):
    rows, labels, title, _ = plots.recon_data([obj_run], n_rows=5)
    fig = figures.recon_figure(rows, labels, title=title)
    assert len(rows) == 5 and len(labels) == 1
    assert len(fig.axes) == 5 * 3 + 1  # input, reconstruction, difference per row + colour bar
    assert [r.mask is not None and r.mask.any() for r in rows] == [r.defect_type != "good" for r in rows]
    assert all(p.reconstruction.shape == (64, 64, 3) and p.diff.shape == (64, 64)
               for r in rows for p in r.panels)
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_recon_compare_two_runs(obj_run, tmp_path):
    out = tmp_path / "cmp.png"
    assert main(["recon", str(obj_run), "--compare", str(obj_run), "--names", "EGBAD", "CBiGAN",
                       "--rows", "2", "--out", str(out), "--dpi", str(DPI)]) == 0
    png(out, figures.recon_size(2, 2))


@pytest.mark.slow
def test_recon_without_masks(obj_run, tmp_path):
    from synthetic import make_category

    make_category(tmp_path, "synth_obj", kind="object", size=64, masks=False)  # the same, no masks
    rows, _, _, _ = plots.recon_data([obj_run], n_rows=4, data_dir=str(tmp_path))
    assert all(r.mask is None for r in rows)
    out = tmp_path / "nomask.png"
    assert main(["recon", str(obj_run), "--data-dir", str(tmp_path), "--out", str(out),
                       "--dpi", str(DPI)]) == 0
    png(out, figures.recon_size(4, 1))


@pytest.mark.slow
def test_recon_texture_stitches_patches(tex_run, tmp_path):
    rows, labels, _, _ = plots.recon_data([tex_run], n_rows=2)
    panel = rows[0].panels[0]
    assert panel.reconstruction.shape == (128, 128, 3) and panel.diff.shape == (128, 128)
    assert panel.patch_box is not None and panel.patch_box[2] == 64
    out = tmp_path / "tex.png"
    assert main(["recon", str(tex_run), "--rows", "2", "--out", str(out), "--dpi", str(DPI)]) == 0
    png(out, figures.recon_size(2, 1))


@pytest.mark.slow
def test_maps_rows_and_figure(obj_run, tex_run, tmp_path):
    """Anomaly maps over images: the localization maps of the picked images, at the model resolution
    or at every image's original size, with the masks."""
    from cbigan.scoring.localization import Localizer

    rows, title, note = plots.maps_data(obj_run, n_rows=4, sigma=0)
    assert len(rows) == 4 and "anomaly maps" in title and "sigma 0" in note
    assert all(r.amap.shape == (64, 64) and r.image.shape == (64, 64, 3) for r in rows)
    assert [r.mask is not None and r.mask.any() for r in rows] == [r.defect_type != "good" for r in rows]
    run = plots.RunFolderView(obj_run)
    maps = Localizer(run.scorer.model, run.cfg, sigma=0, lam=run.lam).maps(np.stack([r.image for r in rows]))
    np.testing.assert_allclose(np.stack([r.amap for r in rows]), maps, rtol=1e-5, atol=1e-6)
    fig = figures.maps_figure(rows, title=title, note=note)
    assert len(fig.axes) == 4 * 3 + 1  # input, map, overlay per row + colour bar
    matplotlib.pyplot.close(fig)

    out = tmp_path / "maps.png"
    assert main(["maps", str(tex_run), "--rows", "2", "--stride", "32", "--original-size",
                       "--out", str(out), "--dpi", str(DPI)]) == 0
    png(out, figures.maps_size(2))
    assert main(["maps", str(tex_run), "--stride", "100"]) == 2


@pytest.mark.slow
def test_roc_and_hist_of_several_categories(obj_run, tex_run, tmp_path):
    (tex_run / "threshold.json").write_text(json.dumps({"threshold": 1.0, "score_lambda": 0.1}))
    roc, hist = tmp_path / "roc.png", tmp_path / "hist.png"
    runs = [str(obj_run), str(tex_run)]
    assert main(["roc", *runs, "--out", str(roc), "--dpi", str(DPI)]) == 0
    png(roc, figures.ROC_SIZE)
    assert main(["hist", *runs, "--out", str(hist), "--dpi", str(DPI), "--by-type"]) == 0
    png(hist, figures.hist_size(2))


@pytest.mark.slow
def test_stored_scores_and_threshold_are_used(obj_run, tmp_path):
    run = copy_run(obj_run, tmp_path / "synth_obj" / "evaluated")
    fake = pd.DataFrame({"path": [f"/x/test/good/{i:03d}.png" for i in range(3)]
                         + [f"/x/test/red_square/{i:03d}.png" for i in range(3)],
                         "defect_type": ["good"] * 3 + ["red_square"] * 3, "label": [0] * 3 + [1] * 3,
                         "l_r": 0.0, "l_fd": 0.0, "score": [1.0, 2.0, 3.0, 2.5, 4.0, 5.0]})
    fake.to_csv(run / "scores.csv", index=False)
    (run / "threshold.json").write_text(json.dumps({"threshold": 2.2, "score_lambda": 0.1}))
    s = plots.RunFolderView(run).score_set()
    assert s.scores.tolist() == fake["score"].tolist() and s.threshold == 2.2
    out = tmp_path / "hist.png"
    assert main(["hist", str(run), "--out", str(out), "--dpi", str(DPI)]) == 0
    png(out, figures.hist_size(1))
    # a null threshold (no held-out images) draws none; scores older than the weights are not used
    (run / "threshold.json").write_text(json.dumps({"threshold": None}))
    later = (run / "scores.csv").stat().st_mtime + 10
    os.utime(run / "model.weights.h5", (later, later))
    r = plots.RunFolderView(run)
    assert r.threshold is None and r.stored is None


@pytest.mark.slow
def test_preview_gif(obj_run, tex_run):
    steps = previews.preview_steps(obj_run)
    assert [s for s, _ in steps] == [3, 6]
    gif = previews.make_preview_gif(obj_run)
    assert gif == obj_run / "previews.gif"
    with Image.open(gif) as im, Image.open(steps[0][1]) as first:
        assert im.format == "GIF" and im.n_frames == 2 and im.size == first.size
    assert previews.make_preview_gif(tex_run) is None  # no previews: nothing to animate
    # the command line: --max-frames 1 keeps one frame
    assert main(["gif", str(obj_run), "--max-frames", "1"]) == 0
    with Image.open(obj_run / "previews.gif") as im:
        assert im.n_frames == 1


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["curves", str(tmp_path)]) == 2
    assert main(["recon", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 2
