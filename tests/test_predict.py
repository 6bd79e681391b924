"""``python -m cbigan.predict``: scores folders, survives corrupt files, writes CSV and heat maps."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_export import OBJ, make_data, make_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A calibrated, exported object run and an input folder with one corrupt file in it."""
    from cbigan.data.pipeline import load_train_set
    from cbigan.serving.export import export_model
    from cbigan.scoring.threshold import calibrate_threshold, write_threshold

    data = make_data(tmp_path_factory.mktemp("data"))
    run_dir, cfg, model = make_run(data, tmp_path_factory.mktemp("runs"), "big_obj", return_model=True,
                                   **OBJ)
    info = calibrate_threshold(model, cfg, load_train_set(cfg).val_images)
    write_threshold(run_dir, info)
    export = export_model(model, cfg, run_dir / "export", threshold_info=info, run_dir=run_dir)

    inputs = tmp_path_factory.mktemp("inputs")
    for sub in ("good", "red_square"):
        shutil.copytree(data / "big_obj" / "test" / sub, inputs / sub)   # 90 px RGB PNGs, same names
    (inputs / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (inputs / "notes.txt").write_text("not an image: named")
    gray = (np.arange(50 * 70) % 251).reshape(50, 70).astype(np.uint8)
    Image.fromarray(gray, "L").save(inputs / "small_gray.jpg")           # other size and mode
    return {"run": run_dir, "export": export, "inputs": inputs, "threshold": info["threshold"]}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run(argv, capsys):
    from cbigan.cli.predict import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_folder_with_corrupt_file(setup, tmp_path, capsys):
    csv_path, maps = tmp_path / "pred.csv", tmp_path / "maps"
    rc, out, err = _run([setup["export"], setup["inputs"], "--csv", csv_path, "--maps", maps], capsys)
    assert rc == 0
    assert "broken.png" in err and "cannot read image" in err            # reported by name
    rows = _read_csv(csv_path)
    names = [Path(r["path"]).name for r in rows]
    assert len(rows) == 7 and "broken.png" not in names and "notes.txt" not in names
    assert list(rows[0]) == ["path", "score", "is_anomaly"]
    thr = setup["threshold"]
    for r in rows:
        assert np.isfinite(float(r["score"]))
        assert r["is_anomaly"] == ("true" if float(r["score"]) > thr else "false")
    assert "7 scored" in out and "2 skipped" in out and "threshold:" in out
    assert "notes.txt: not an image file" in err                         # named, with the reason (issue 37)
    # one overlay per scored image; same file names in two folders do not collide
    pngs = sorted(p.name for p in maps.iterdir())
    assert len(pngs) == 7 and "good__000.png" in pngs and "red_square__000.png" in pngs
    with Image.open(maps / "good__000.png") as im:
        assert im.size[0] > 200


@pytest.mark.slow
def test_run_dir_and_export_agree(setup, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _run([setup["export"], setup["inputs"], "--csv", a, "--quiet"], capsys)[0] == 0
    assert _run([setup["run"], setup["inputs"], "--csv", b, "--quiet"], capsys)[0] == 0
    ra, rb = _read_csv(a), _read_csv(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    sa, sb = (np.array([float(r["score"]) for r in rows]) for rows in (ra, rb))
    assert np.max(np.abs(sa - sb) / np.abs(sb)) <= 1e-4
    assert [r["is_anomaly"] for r in ra] == [r["is_anomaly"] for r in rb]


@pytest.mark.slow
def test_without_threshold(setup, tmp_path, capsys):
    """An uncalibrated run: scores still come out, is_anomaly stays empty, and it is said."""
    run = tmp_path / "uncalibrated"
    run.mkdir()
    cfg = json.loads((setup["run"] / "config.json").read_text())
    cfg.pop("threshold")
    (run / "config.json").write_text(json.dumps(cfg))
    shutil.copy(setup["run"] / "model.weights.h5", run)
    img = setup["inputs"] / "red_square" / "000.png"
    from cbigan.serving.predict import open_model, predict, print_table, write_csv

    model = open_model(run)
    res, _ = predict(model, [img])
    assert res.threshold is None and "not calibrated" in res.threshold_rule
    print_table(res)
    assert "threshold: none" in capsys.readouterr().out
    (row,) = _read_csv(write_csv(res, tmp_path / "p.csv"))
    assert row["is_anomaly"] == "" and float(row["score"]) > 0
    res, _ = predict(model, [img], threshold=0.0)                       # --threshold overrides
    assert res.predictions[0].is_anomaly is True and "--threshold" in res.threshold_rule


@pytest.mark.slow
def test_nothing_readable(setup, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    rc, _, err = _run([setup["export"], bad, tmp_path / "missing.png", "--csv", tmp_path / "p.csv"], capsys)
    assert rc == 1 and "x.jpg" in err and "missing.png" in err and "no image could be scored" in err
    assert not (tmp_path / "p.csv").exists()
    rc, _, err = _run([tmp_path, bad, "--csv", tmp_path / "p.csv"], capsys)
    assert rc == 1 and "no SavedModel" in err


@pytest.mark.slow
def test_a_category_folder_is_refused_naming_its_runs(tmp_path):
    from synthetic import make_category, make_untrained_run

    from cbigan.serving.export import ExportError
    from cbigan.serving.predict import open_model

    make_category(tmp_path / "data", "widget", size=32, n_train=2, n_good=1, n_defect=1)
    run = make_untrained_run(tmp_path / "data", tmp_path / "runs", "widget", image_size=64, patch_size=64,
                             width=1, latent_dim=8)["run"]
    with pytest.raises(ExportError, match=f"is a category folder holding the run\\(s\\) r; pass one of them "
                                          f"\\({run}\\)"):
        open_model(run.parent)


def test_tiles_inputs_larger_than_the_canvas_get_a_note(tmp_path):
    """A tiles model shrinks an image larger than its canvas: the user is told which and by how much."""
    from cbigan.serving.predict import input_notes, predict

    class FakeTiles:  # a tiles model's interface: kind, canvas (image_size), scale; scores of a batch
        kind, image_size, scale, threshold, rule, source = "tiles", 64, 1.0, None, "", "fake"

        def __call__(self, images):
            return {"score": np.zeros(len(images))}

    for name, (h, w) in {"fits.png": (40, 64), "wide.png": (40, 256), "big.png": (200, 100)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / name)
    files = sorted(tmp_path.glob("*.png"))
    res, _ = predict(FakeTiles(), files, progress=False)
    assert len(res.predictions) == 3
    assert len(res.notes) == 1
    assert res.notes[0].startswith("2 of 3 images are larger than the model's 64 px canvas")
    assert "wide.png: 256x40 px, by 0.25" in res.notes[0]
    # at the model's own scale: 0.25 makes every one fit; objects are resized to a square by design
    assert input_notes("tiles", 64, 0.25, {"a": (40, 256)}) == []
    assert input_notes("tiles", 64, 1.0, {"a": (64, 64)}) == []


def test_elongated_inputs_to_a_square_model_get_a_note():
    """Objects and textures squash every input to a square: a 2:1 or longer image is named."""
    from cbigan.serving.predict import input_notes

    sizes = {"square.png": (300, 310), "strip.png": (500, 1250), "tall.png": (900, 400)}
    notes = input_notes("object", 64, 1.0, sizes)
    assert len(notes) == 1
    assert notes[0].startswith("2 of 3 images are elongated (e.g. strip.png: 1250x500 px, 2.5:1)")
    assert "--kind tiles" in notes[0]
    assert input_notes("texture", 512, 1.0, {"a": (512, 512), "b": (500, 700)}) == []
    assert input_notes(None, 64, 1.0, sizes) == []  # a model that does not say its kind
