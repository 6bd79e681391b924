"""Files as users have them (issue 37): phone photos with EXIF orientation, JPEG masks, WebP/JFIF images,
lot and day sub-folders, overlays of same-stem images, read-only run folders, test-only data folders and
a category folder passed as ``--data-dir``.

One test per reported input, then one per rule on an input of our own of the same class:
1. every file a user would call an image is read, or named; 2. every decoded image keeps its levels;
3. nothing is lost to a place that cannot be written; 4. evaluation needs only what it uses.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import make_category

from cbigan.core.config import Config
from cbigan.core.errors import DataError

TINY = dict(image_size=64, patch_size=64, width=1, latent_dim=8, batch_size=2)


def cfg_for(root, category, **kw) -> Config:
    return Config(category=category, data_dir=str(root), **dict(TINY, **kw)).resolved()


def exif_with(orientation: int):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex


def upright_photo(h=160, w=96, seed=0) -> np.ndarray:
    """A smooth picture whose top and bottom differ (a turned one is told apart)."""
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([yy * 255 // h, xx * 255 // w, np.full((h, w), 90)], -1).astype(np.uint8)
    return a


def read_only(monkeypatch, *roots):
    """Simulate read-only folders (tests run as root, where chmod does not block writes): os.access
    says no write under ``roots``."""
    roots = [str(Path(r).resolve()) for r in roots]
    real = os.access

    def access(path, mode, *a, **kw):
        p = str(Path(path).resolve())
        if mode & os.W_OK and any(p == r or p.startswith(r + os.sep) for r in roots):
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)


def dummy_run(root: Path) -> Path:
    """A folder that passes the run-folder check (the checks under test run before any loading)."""
    run = root / "runs" / "part" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "model.weights.h5").write_bytes(b"")
    return run


# ---------------------------------------------------------------------------------- the reports
def test_exif_orientation_6_phone_photos_are_read_upright_and_fit_their_masks(tmp_path):
    """tensorflow #49834, darkflow #774, vision #7947: stored sideways with Orientation 6, masks drawn
    on the upright picture (160 x 96 px)."""
    from cbigan.data.pipeline import load_image, load_test_set
    from cbigan.core.layout import load_image_size

    cat = make_category(tmp_path, "part", size=64, n_train=2, n_good=1, n_defect=1)
    up = upright_photo()
    stored = np.rot90(up, 1)  # a phone writes the sensor's rows: turned 90 degrees counter-clockwise
    path = cat / "test/red_square/000.png"
    path.unlink()
    Image.fromarray(stored).save(cat / "test/red_square/000.jpg", quality=95, exif=exif_with(6))
    mask = np.zeros(up.shape[:2], np.uint8)
    mask[10:40, 20:50] = 255
    Image.fromarray(mask).save(cat / "ground_truth/red_square/000_mask.png")
    got = load_image(cat / "test/red_square/000.jpg")
    assert got.shape == up.shape and np.abs(got.astype(int) - up).mean() < 4
    assert load_image_size(cat / "test/red_square/000.jpg") == (160, 96)
    te = load_test_set(cfg_for(tmp_path, "part"))  # no "mask is 160x96 but its image is 96x160"
    assert te.has_mask.all() and te.masks[te.labels == 1].sum() > 0


def test_jpeg_masks_are_binarized_at_half_their_range_with_a_warning(tmp_path):
    """anomalib #1006, #785, Dinomaly #14: a 304-pixel defect saved as JPEG became 320-449 pixels."""
    from cbigan.data.pipeline import load_mask

    m = np.zeros((64, 64), np.uint8)
    m[10:26, 20:39] = 255                                   # 16 x 19 = 304 pixels
    for q in (50, 75, 95):
        Image.fromarray(m).save(tmp_path / f"m{q}.jpg", quality=q)
        with pytest.warns(UserWarning, match="lossy format.*half their range"):
            got = load_mask(tmp_path / f"m{q}.jpg")
        assert abs(int(got.sum()) - 304) <= 16, (q, int(got.sum()))
    lossy = []
    assert load_mask(tmp_path / "m95.jpg", lossy).sum() > 0 and lossy == [tmp_path / "m95.jpg"]


def test_webp_and_jfif_images_are_trained_on_and_evaluated(tmp_path):
    """vision #735, pytorch-image-models #1335: 5 of 12 training images were .webp / .jfif."""
    from cbigan.data.pipeline import load_test_set, load_train_set

    cat = make_category(tmp_path, "part", size=64, n_train=12, n_good=2, n_defect=2)
    good = sorted((cat / "train/good").iterdir())
    for p, ext in zip(good[:5], (".webp", ".jfif", ".WEBP", ".JFIF", ".jpe")):
        im = Image.open(p)
        im.save(p.with_suffix(ext), format="WEBP" if "webp" in ext.lower() else "JPEG")
        p.unlink()
    test_img = cat / "test/good/000.png"
    Image.open(test_img).save(test_img.with_suffix(".webp"), lossless=True)
    test_img.unlink()
    tr = load_train_set(cfg_for(tmp_path, "part"))
    assert tr.n_images == 12 and not tr.skipped
    te = load_test_set(cfg_for(tmp_path, "part"))
    assert any(p.suffix == ".webp" for p in te.paths) and len(te) == 4


def test_images_in_day_and_lot_sub_folders_are_used(tmp_path):
    """yolov5 #1379, CellProfiler #2770: train/good/day*, test/<type>/lot_* (and their masks)."""
    from cbigan.data.pipeline import load_test_set, load_train_set

    cat = make_category(tmp_path, "part", size=64, n_train=12, n_good=2, n_defect=4)
    for i, p in enumerate(sorted((cat / "train/good").iterdir())):
        day = cat / "train/good" / ("day1" if i % 2 else "day2")
        day.mkdir(exist_ok=True)
        p.rename(day / p.name)
    (cat / "test/scratch/lot_A").mkdir(parents=True)
    (cat / "ground_truth/scratch/lot_A").mkdir(parents=True)
    for p in sorted((cat / "test/red_square").iterdir()):
        p.rename(cat / "test/scratch/lot_A" / p.name)
        (cat / "ground_truth/red_square" / f"{p.stem}_mask.png").rename(
            cat / "ground_truth/scratch/lot_A" / f"{p.stem}_mask.png")
    (cat / "test/red_square").rmdir()
    tr = load_train_set(cfg_for(tmp_path, "part"))
    assert tr.n_images == 12
    te = load_test_set(cfg_for(tmp_path, "part"))
    assert sorted(te.labels.tolist()) == [0, 0, 1, 1, 1, 1] and set(te.defect_types) == {"good", "scratch"}
    assert te.has_mask.all() and all(te.masks[i].any() for i in np.flatnonzero(te.labels))


def test_overlays_of_same_stem_images_do_not_overwrite_each_other(tmp_path):
    """AniConvert #3, careamics PR #996: 000.png + 000.jpg, 001.png + 001.PNG wrote 4 of 7 files."""
    from cbigan.serving.predict import Prediction, Results, map_names, write_maps

    names = ["000.png", "000.jpg", "001.png", "001.PNG", "002.png", "sub/000.png", "sub/000.JPG"]
    paths = []
    for n in names:
        (tmp_path / "in" / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / n).write_bytes(b"")
        paths.append((tmp_path / "in" / n).resolve())
    got = map_names(paths)
    assert len({v.lower() for v in got.values()}) == len(names)
    res = Results(predictions=[Prediction(p, 0.5, None) for p in paths])
    tile = np.zeros((8, 8, 3), np.uint8)
    display = {p: (tile, tile, np.zeros((8, 8), np.float16)) for p in paths}
    written = write_maps(res, display, tmp_path / "maps")
    assert len(written) == len(names) == len(list((tmp_path / "maps").iterdir()))


def test_read_only_run_folder_stops_every_command_before_work_naming_the_flag(tmp_path, monkeypatch, capsys):
    """codalab-worksheets #2743, Kaggle input folders: evaluate, predict and export ended in tracebacks
    (Errno 30), predict after scoring every image."""
    from cbigan.cli import evaluate, export, predict

    run = dummy_run(tmp_path)
    read_only(monkeypatch, tmp_path / "runs")
    monkeypatch.chdir(run)
    assert evaluate.main([str(run)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write the evaluation files to {run}" in err and "--out DIR" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    def no_scoring(*a, **kw):
        raise AssertionError("scored before checking where the results go")

    monkeypatch.setattr("cbigan.serving.predict.open_model", no_scoring)
    assert predict.main([str(run), str(tmp_path), "--maps", str(run / "maps")]) == 1  # --csv: the cwd, read-only
    err = capsys.readouterr().err
    assert "predictions CSV" in err and "--csv FILE" in err and str(run) in err
    assert export.main([str(run)]) == 1
    err = capsys.readouterr().err
    assert f"to {run / 'export'}" in err and "--export-dir DIR" in err


def test_test_only_data_folder_loads_without_training_images(tmp_path):
    """pytorch/examples PR #288, DIGITS #1685: only test/ and ground_truth/ (the training images
    stayed on the training machine); --download is not an evaluate option."""
    import shutil

    from cbigan.data.pipeline import load_test_set

    cat = make_category(tmp_path, "part", size=64, n_train=2, n_good=2, n_defect=2)
    shutil.rmtree(cat / "train")
    te = load_test_set(cfg_for(tmp_path, "part"))
    assert len(te) == 4 and te.has_mask.all()
    shutil.rmtree(cat / "test")
    with pytest.raises(DataError, match="no test images") as e:
        load_test_set(cfg_for(tmp_path, "part"))
    assert "--download" not in str(e.value)


def test_data_dir_pointing_at_the_category_folder_says_pass_its_parent(tmp_path):
    """VT-ADL #13, CutPaste #14: "DATA_DIR/part/part/train/good does not exist", then advice to make it."""
    from cbigan.data.pipeline import load_test_set, load_train_set

    cat = make_category(tmp_path, "part", size=64, n_train=2, n_good=1, n_defect=1)
    for load in (load_train_set, load_test_set):
        with pytest.raises(DataError, match=f"is itself a category folder.*pass its parent: --data-dir "
                                            f"{tmp_path.resolve()}$") as e:
            load(cfg_for(cat, "part"))
        assert "make" not in str(e.value) and "put the MVTec" not in str(e.value)


@pytest.mark.slow
def test_evaluate_a_test_only_folder_and_a_read_only_run_with_out(tmp_path, monkeypatch, capsys):
    """Rules 3 and 4 end to end: a run evaluated on a data folder holding only test/ and ground_truth/,
    from a read-only run folder, its files written to --out."""
    import shutil

    from synthetic import make_untrained_run

    from cbigan.cli import evaluate

    cat = make_category(tmp_path / "data", "part", size=64, n_train=2, n_good=2, n_defect=2)
    run = make_untrained_run(tmp_path / "data", tmp_path / "runs", "part", **TINY)["run"]
    shutil.rmtree(cat / "train")
    read_only(monkeypatch, tmp_path / "runs")
    before = sorted(p.name for p in run.iterdir())
    assert evaluate.main([str(run), "--quiet", "--out", str(tmp_path / "ev"), "--report"]) == 0
    out = capsys.readouterr().out
    assert f"in {tmp_path / 'ev'}" in out
    assert (tmp_path / "ev" / "metrics.csv").is_file() and (tmp_path / "ev" / "evaluation.json").is_file()
    # the report goes with the evaluation files, and shows them (the run folder holds no scores)
    assert f"wrote {tmp_path / 'ev' / 'report.html'}" in out
    html = (tmp_path / "ev" / "report.html").read_text()
    assert html.count("<img") >= 4 and "auroc" in html.lower()
    assert sorted(p.name for p in run.iterdir()) == before


# ---------------------------------------------------------------------------------- rule 1, our own input
def test_every_image_file_is_read_in_any_case_and_linked_folder_and_the_rest_named(tmp_path):
    """Orientation 8 PNG, upper-case .TIF and .GIF, a symlinked day folder (and a loop), a notes.txt."""
    from cbigan.data.pipeline import load_image, load_train_set
    from cbigan.serving.predict import collect_inputs

    cat = make_category(tmp_path, "part", size=64, n_train=4, n_good=1, n_defect=1)
    good = cat / "train/good"
    outside = tmp_path / "elsewhere/day3"
    outside.mkdir(parents=True)
    up = upright_photo(64, 40)
    Image.fromarray(np.rot90(up, -1)).save(outside / "a.png", exif=exif_with(8))
    Image.fromarray(up).save(outside / "b.TIF")
    Image.fromarray(up).convert("P").save(outside / "c.GIF")
    (good / "day3").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(outside, target_is_directory=True)
    (good / "notes.txt").write_text("lot 7")
    assert np.array_equal(load_image(outside / "a.png"), up)
    with pytest.warns(UserWarning, match=r"1 file\(s\) in .* not read as images: not an image file: .*notes.txt"):
        tr = load_train_set(cfg_for(tmp_path, "part"))
    assert tr.n_images == 7
    files, bad = collect_inputs([good])
    assert len(files) == 7 and [(p.name, why.split(" (")[0]) for p, why in bad] == [("notes.txt", "not an image file")]


# ---------------------------------------------------------------------------------- rule 2, our own input
@pytest.mark.parametrize("kind", ["float01", "float255", "float65535", "int32_16bit", "int32_24bit"])
def test_every_bit_depth_and_sample_type_keeps_its_levels(tmp_path, kind):
    from cbigan.data.pipeline import load_image

    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    a = {"float01": ramp.astype(np.float32), "float255": (ramp * 255).astype(np.float32),
         "float65535": (ramp * 65535).astype(np.float32),
         "int32_16bit": (ramp * 60000).astype(np.int32), "int32_24bit": (ramp * (2**24 - 1)).astype(np.int32)}[kind]
    Image.fromarray(a).save(tmp_path / "x.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_image(tmp_path / "x.tif")
    assert got.dtype == np.uint8 and len(np.unique(got)) >= 200, (kind, len(np.unique(got)))
    assert got.max() >= 230


@pytest.mark.parametrize("values", [(-1.0, 1.0), (0.0, 1e6), (0.0, np.nan)])
def test_float_images_outside_every_range_are_refused_by_name(tmp_path, values):
    from cbigan.data.pipeline import load_image

    a = np.linspace(*values, 16 * 16).reshape(16, 16).astype(np.float32) if not np.isnan(values[1]) else \
        np.full((16, 16), np.nan, np.float32)
    Image.fromarray(a).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=f"cannot read image {tmp_path / 'f.tif'}: .*floating-point"):
        load_image(tmp_path / "f.tif")


# ---------------------------------------------------------------------------------- rule 3, our own input
def test_check_writable_names_path_flag_and_nearest_existing_parent(tmp_path, monkeypatch):
    from cbigan.core.runfolder import check_writable

    assert check_writable(tmp_path / "new/deeper", "--out DIR") == tmp_path / "new/deeper"
    read_only(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=f"cannot write the CSV to {tmp_path / 'new'} .* at {tmp_path}\\); pass "
                                        f"--csv FILE to write them elsewhere"):
        check_writable(tmp_path / "new", "--csv FILE", "the CSV")
    (tmp_path / "f").write_text("")
    monkeypatch.undo()
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "x", "--out DIR")


def test_overlay_names_unique_for_many_case_and_extension_collisions(tmp_path):
    from cbigan.serving.predict import map_names

    names = ["a.png", "A.png", "a.PNG", "a.jpg", "a_jpg.png", "a", "b/a.png", "b__a.png"]
    paths = [tmp_path / n for n in names]
    got = map_names(paths)
    assert len({v.lower() for v in got.values()}) == len(names)
    assert all(v.endswith(".png") for v in got.values())


def test_a_read_only_data_folder_is_named_before_a_download(tmp_path, monkeypatch):
    from cbigan.data.pipeline import download_category

    read_only(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=f"cannot write the downloaded category to {tmp_path / 'd'}.*--data-dir DIR"):
        download_category("bottle", tmp_path / "d", url="http://127.0.0.1:9/none.tar.xz", sha256="0")


# ---------------------------------------------------------------------------------- rule 4, our own input
def test_category_folder_of_another_name_says_pass_its_parent_and_its_name(tmp_path):
    from cbigan.data.pipeline import load_test_set

    cat = make_category(tmp_path, "widget_v2", size=64, n_train=2, n_good=1, n_defect=1)
    import shutil

    shutil.rmtree(cat / "train")                              # a test-only category folder, too
    with pytest.raises(DataError, match=f"--data-dir {tmp_path.resolve()} --category widget_v2"):
        load_test_set(cfg_for(cat, "widget"))


def exif_block(orientation: int, order: str) -> bytes:
    """An EXIF block (``Exif\\0\\0`` + TIFF header + IFD0 with the orientation tag) in byte order II or MM."""
    e = "little" if order == "II" else "big"
    u16, u32 = (lambda v: v.to_bytes(2, e)), (lambda v: v.to_bytes(4, e))
    ifd = u16(2) + u16(0x010F) + u16(2) + u32(4) + b"cam\0" + u16(0x0112) + u16(3) + u32(1) + u16(orientation) + u16(0)
    return b"Exif\0\0" + order.encode() + u16(42) + u32(8) + ifd + u32(0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_serving_bytes_applies_exif_orientation_as_training_does(tmp_path, fmt):
    """The export's serving_bytes decodes in TensorFlow, whose decoders ignore EXIF: the graph reads the
    orientation tag itself (JPEG APP1, PNG eXIf; either byte order) and gives load_image's pixels."""
    from cbigan.data.pipeline import load_image
    from cbigan.serving.export import EXIF_NOTE, decode_image_bytes

    stored = np.rot90(upright_photo(48, 32), 1).copy()
    for orientation in range(1, 9):
        for order in ("II", "MM"):
            path = tmp_path / f"{orientation}{order}.{fmt.lower()}"
            Image.fromarray(stored).save(path, fmt, exif=exif_block(orientation, order), quality=95)
            expected = load_image(path)
            assert expected.shape == ((48, 32, 3) if orientation >= 5 else (32, 48, 3))  # Pillow turned it
            got = decode_image_bytes(path.read_bytes()).numpy()
            assert np.array_equal(got, expected), (fmt, orientation, order)
    assert "applies" in EXIF_NOTE


def test_predict_applies_exif_orientation_before_the_model(tmp_path):
    """predict hands the model upright pixels (Pillow); the export's metadata says what each signature does."""
    from cbigan.serving.export import EXIF_NOTE, metadata
    from cbigan.serving.predict import predict

    up = upright_photo(48, 32)
    Image.fromarray(np.rot90(up, 1)).save(tmp_path / "p.png", exif=exif_with(6))
    seen = []

    class Model:
        threshold, rule, source = None, "", "fake"

        def __call__(self, images):
            seen.append(images)
            n = len(images)
            return {"score": np.zeros(n), "anomaly_map": np.zeros((n, 8, 8)),
                    "reconstruction": np.zeros((n, 8, 8, 3))}

    res, _ = predict(Model(), [tmp_path / "p.png"], progress=False)
    assert len(res.predictions) == 1 and np.array_equal(seen[0][0], up)
    meta = metadata(cfg_for(tmp_path, "part"), None, None)
    assert meta["exif_orientation"] == EXIF_NOTE


def test_map_vmax_sets_the_top_of_the_heat_map_colour_scale(tmp_path):
    """``predict --map-vmax V``: one colour scale for every overlay (a map at V or above is red), instead of
    the largest 99.5th percentile of the batch; the same map draws hotter under a lower V."""
    from PIL import Image

    from cbigan.cli.predict import build_parser
    from cbigan.serving.predict import Prediction, Results, write_maps

    args = build_parser().parse_args(["RUN", "IMAGES", "--map-vmax", "0.5"])
    path = (tmp_path / "a.png").resolve()
    res = Results(predictions=[Prediction(path, 0.5, None)])
    tile = np.zeros((32, 32, 3), np.uint8)
    amap = np.tile(np.linspace(0, 1, 32, dtype=np.float16), (32, 1))
    low = write_maps(res, {path: (tile, tile, amap)}, tmp_path / "low", args.map_vmax)
    auto = write_maps(res, {path: (tile, tile, amap)}, tmp_path / "auto")
    a, b = (np.asarray(Image.open(p[0]).convert("RGB"), np.int32) for p in (low, auto))
    assert a.shape == b.shape and np.abs(a - b).sum() > 0
