"""Real users' folders (issue 16): masks in any common naming, hidden files, test-folder names, high bit
depth, one decoder for training and serving, decoder failures, honest threshold and NaN messages.

Each test builds a small synthetic input of the kind people reported and checks the right value; the
two short trainings (a couple of steps at 64 px, width 1) are the only ones here.
"""

from __future__ import annotations

import io
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from synthetic import make_category, make_untrained_run

from cbigan.core.config import Config
from cbigan.core.errors import DataError

TINY = dict(image_size=64, patch_size=64, width=1, latent_dim=8, batch_size=2)
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # what macOS copies beside each file


# ---------------------------------------------------------------------------------- helpers
def png_bytes(a: np.ndarray, bit_depth: int, color_type: int, extra: bytes = b"", size=None) -> bytes:
    """A PNG written by hand (Pillow cannot write these): any bit depth, extra chunks before IDAT;
    ``size`` (w, h): what the header claims instead of the array's size."""
    a = np.asarray(a)
    h, w = a.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if bit_depth == 16:
        rows = a.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1)
    elif bit_depth < 8:
        per = 8 // bit_depth
        packed = np.pad(a.reshape(h, w), ((0, 0), (0, (-w) % per))).reshape(h, -1, per)
        rows = np.zeros(packed.shape[:2], np.uint8)
        for k in range(per):
            rows |= (packed[..., k] << (8 - bit_depth * (k + 1))).astype(np.uint8)
    else:
        rows = a.reshape(h, -1).astype(np.uint8)
    raw = b"".join(b"\0" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", *(size or (w, h)), bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def sbit(bits: int) -> bytes:
    data = bytes([bits])
    return struct.pack(">I", 1) + b"sBIT" + data + struct.pack(">I", zlib.crc32(b"sBIT" + data))


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(path: Path) -> Path:
    """A valid-looking PNG header claiming 20000 x 20000 pixels: Pillow raises DecompressionBombError."""
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 8, 0, size=(20000, 20000)))
    return path


def cfg_for(root, category, **kw) -> Config:
    return Config(category=category, data_dir=str(root), **dict(TINY, **kw)).resolved()


def category(root, name="cat", **kw) -> Path:
    return make_category(root, name, size=64, **dict(dict(n_train=4, n_good=2, n_defect=3), **kw))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from cbigan.model.gan import build_model

    cfg = Config(category="x", data_dir=str(tmp_path_factory.mktemp("none")), **TINY).resolved()
    return cfg, build_model(cfg)


# ---------------------------------------------------------------------------------- 1. mask values
@pytest.mark.parametrize("value", [1, 3, 255])
def test_any_non_zero_mask_pixel_is_a_defect(tmp_path, value):
    from cbigan.data.pipeline import load_mask

    m = np.zeros((20, 30), np.uint8)
    m[5:9, 10:20] = value                       # 0/1 masks, class ids 1..k and 0/255 alike
    Image.fromarray(m).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").sum() == 40


def test_palette_colour_and_16_bit_masks(tmp_path):
    from cbigan.data.pipeline import load_mask

    idx = np.zeros((20, 30), np.uint8)
    idx[2:4, 2:4] = 2
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 0, 0, 0, 0, 0, 0, 0] + [9] * 759)   # class 2 drawn black: read by index
    p.save(tmp_path / "p.png")
    rgb = np.zeros((20, 30, 4), np.uint8)
    rgb[..., 3] = 255                                         # opaque background is not a defect
    rgb[1:3, 1:4, 0] = 1
    Image.fromarray(rgb, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.where(idx > 0, 1, 0).astype(np.uint16)).save(tmp_path / "m16.png")
    assert load_mask(tmp_path / "p.png").sum() == 4
    assert load_mask(tmp_path / "rgba.png").sum() == 6
    assert load_mask(tmp_path / "m16.png").sum() == 4


def test_zero_one_masks_give_defect_pixels_and_an_empty_mask_is_named(tmp_path):
    from cbigan.data.pipeline import load_test_set

    cat = category(tmp_path)
    gt = cat / "ground_truth/red_square"
    for p in sorted(gt.iterdir()):
        Image.fromarray((np.asarray(Image.open(p)) > 0).astype(np.uint8)).save(p)   # 0/1
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(gt / "002_mask.png")          # exists, empty
    with pytest.warns(UserWarning, match=r"no defect pixel.*002_mask\.png"):
        te = load_test_set(cfg_for(tmp_path, "cat"))
    sums = te.masks[te.labels == 1].sum(axis=(1, 2))
    assert te.has_mask.all() and (sums[:2] > 0).all() and sums[2] == 0


@pytest.mark.slow
def test_pixel_metrics_with_zero_one_masks_named_like_btad(tmp_path):
    """The reported run: 0/1 masks gave 'pixel auROC n/a ... 0 defect regions'; here they are also named
    <stem>.bmp (BTAD/VisA style), the good folder is 'Good' and macOS left sidecars everywhere."""
    from cbigan.reporting.evaluation import evaluate_run

    cat = category(tmp_path)
    gt = cat / "ground_truth/red_square"
    for p in sorted(gt.glob("*_mask.png")):
        Image.fromarray((np.asarray(Image.open(p)) > 0).astype(np.uint8)).save(
            gt / p.name.replace("_mask.png", ".bmp"))
        p.unlink()
        (gt / f"._{p.name}").write_bytes(APPLEDOUBLE)
    (cat / "test/good").rename(cat / "test/Good")
    for sub in ("train/good", "test/Good", "test/red_square"):
        (cat / sub / "._000.png").write_bytes(APPLEDOUBLE)
    run = make_untrained_run(tmp_path, tmp_path / "runs", "cat", **TINY)
    s = evaluate_run(run["run"], progress=False).summary
    assert s["n_good"] == 2 and s["n_defective"] == 3
    assert s["pixel_auroc"] is not None and s["pixel"]["n_regions"] == 3
    assert s["pixel"]["n_excluded_no_mask"] == 0


# ---------------------------------------------------------------------------------- 2. mask names
@pytest.mark.parametrize("name", ["{stem}.png", "{stem}_mask.bmp", "{STEM}_MASK.PNG", "{stem}.TIFF",
                                  "{stem}_mask.jpeg"])
def test_mask_found_by_stem_with_any_extension_and_case(tmp_path, name):
    from cbigan.data.pipeline import load_test_set

    cat = category(tmp_path, n_defect=1)
    gt = cat / "ground_truth/red_square"
    mask = Image.open(gt / "000_mask.png")
    (gt / "000_mask.png").unlink()
    mask.save(gt / name.format(stem="000", STEM="000"))
    if name.endswith(".jpeg"):  # a lossy mask is binarized at half its range, with a warning (issue 37)
        with pytest.warns(UserWarning, match="lossy format"):
            te = load_test_set(cfg_for(tmp_path, "cat"))
    else:
        te = load_test_set(cfg_for(tmp_path, "cat"))
    assert te.has_mask.all() and te.masks[te.labels == 1].sum() > 0


def test_two_fitting_masks_are_refused_naming_both(tmp_path):
    from cbigan.data.pipeline import load_test_set

    cat = category(tmp_path, n_defect=1)
    gt = cat / "ground_truth/red_square"
    (gt / "000.png").write_bytes((gt / "000_mask.png").read_bytes())
    with pytest.raises(DataError, match=r"000\.png.*000_mask\.png|000_mask\.png.*000\.png") as e:
        load_test_set(cfg_for(tmp_path, "cat"))
    assert "ambiguous" in str(e.value)


def test_missing_mask_warning_names_image_looked_for_names_and_unmatched_files(tmp_path):
    from cbigan.data.pipeline import load_test_set

    cat = category(tmp_path, n_defect=2)
    gt = cat / "ground_truth/red_square"
    (gt / "001_mask.png").rename(gt / "img001_mask.png")
    with pytest.warns(UserWarning) as record:
        te = load_test_set(cfg_for(tmp_path, "cat"))
    msg = " ".join(str(w.message) for w in record if "no mask" in str(w.message))
    assert "001.png" in msg and "001_mask.*" in msg and "001.*" in msg and "img001_mask.png" in msg
    assert "000_mask.png" not in msg                     # matched: not listed as left over
    assert list(te.has_mask[te.labels == 1]) == [True, False]


# ---------------------------------------------------------------------------------- 3. hidden files
def test_hidden_files_and_folders_are_not_data(tmp_path):
    from cbigan.data.pipeline import load_test_set, load_train_set
    from cbigan.serving.predict import collect_inputs

    cat = category(tmp_path)
    for sub in ("train/good", "test/good", "test/red_square", "ground_truth/red_square"):
        (cat / sub / "._000.png").write_bytes(APPLEDOUBLE)
        (cat / sub / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / "ground_truth/red_square/._000_mask.png").write_bytes(APPLEDOUBLE)   # not a second mask
    (cat / "test/.ipynb_checkpoints").mkdir()
    (cat / "test/.ipynb_checkpoints/000.png").write_bytes((cat / "test/good/000.png").read_bytes())
    cfg = cfg_for(tmp_path, "cat")
    tr = load_train_set(cfg)                             # no --skip-bad-images needed
    assert tr.n_images == 4 and not tr.skipped
    te = load_test_set(cfg)
    assert len(te) == 5 and set(te.defect_types) == {"good", "red_square"} and te.has_mask.all()
    files, bad = collect_inputs([cat / "test"])
    assert len(files) == 5 and not bad and not any(p.name.startswith(".") for p in files)


# ---------------------------------------------------------------------------------- 4. good folder
@pytest.mark.slow
def test_normal_abnormal_folders_are_refused_with_where_normal_images_go(tmp_path):
    from cbigan.data.pipeline import load_test_set
    from cbigan.reporting.evaluation import EvaluationError, evaluate_run

    cat = category(tmp_path, masks=False)
    (cat / "test/good").rename(cat / "test/NORMAL")
    (cat / "test/red_square").rename(cat / "test/ABNORMAL")
    with pytest.raises(DataError) as e:
        load_test_set(cfg_for(tmp_path, "cat"))
    msg = str(e.value)
    assert "test/good is missing" in msg and "NORMAL" in msg and "ABNORMAL" in msg
    assert "move the normal test images" in msg and "\n" not in msg
    run = make_untrained_run(tmp_path, tmp_path / "runs", "cat", **TINY)
    with pytest.raises(EvaluationError, match="test/good is missing"):
        evaluate_run(run["run"], progress=False)


def test_good_folder_in_another_letter_case_is_good(tmp_path):
    from cbigan.data.pipeline import load_test_set, load_train_set
    from cbigan.reporting.evaluation import lambda_metrics

    cat = category(tmp_path)
    (cat / "test/good").rename(cat / "test/Good")
    (cat / "train/good").rename(cat / "train/GOOD")
    assert load_train_set(cfg_for(tmp_path, "cat")).n_images == 4
    te = load_test_set(cfg_for(tmp_path, "cat"))
    assert list(te.labels) == [0, 0, 1, 1, 1] and te.defect_types[:2] == ["good", "good"]
    assert te.has_mask.all() and te.masks[:2].sum() == 0
    row = lambda_metrics(te.labels, te.defect_types, te.labels + 0.5)
    assert row["auroc"] == 1.0 and set(k for k in row if k.startswith("auroc_")) == {"auroc_red_square"}


# ---------------------------------------------------------------------------------- 5. threshold reason
def test_no_threshold_rule_names_the_real_cause():
    from cbigan.scoring.threshold import NO_THRESHOLD_RULE, calibrate_threshold

    empty = np.zeros((0, 64, 64, 3), np.uint8)
    one = calibrate_threshold(None, Config(category="x"), empty, n_images=1)
    assert one["threshold"] is None and "(--val-split 0)" not in one["rule"]
    assert "only 1 training image" in one["rule"] and "none could be held out" in one["rule"]
    skipped = calibrate_threshold(None, Config(category="x"), empty, n_images=20)
    assert "unreadable" in skipped["rule"] and "(--val-split 0)" not in skipped["rule"]
    assert calibrate_threshold(None, Config(category="x", val_split=0.0), empty)["rule"] == NO_THRESHOLD_RULE


@pytest.mark.slow
def test_threshold_from_few_held_out_images_carries_a_warning(tiny_model):
    from cbigan.scoring.threshold import calibrate_threshold

    cfg, model = tiny_model
    rng = np.random.default_rng(0)
    few = calibrate_threshold(model, cfg, rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8), progress=False)
    assert few["threshold"] is not None and "warning" in few["rule"] and "only 3 held-out" in few["warning"]
    many = calibrate_threshold(model, cfg, rng.integers(0, 255, (10, 64, 64, 3), dtype=np.uint8),
                               progress=False)
    assert "warning" not in many and "warning" not in many["rule"]


@pytest.mark.slow
def test_training_on_one_image_says_why_there_is_no_threshold(tmp_path, capsys):
    """One training image, --val-split left at its default, AppleDouble sidecars in train/good and a
    NORMAL/ABNORMAL test folder: training runs, says test/good is missing, and names the real cause."""
    import json

    from cbigan.training.run import train

    cat = category(tmp_path, n_train=1, masks=False)
    (cat / "train/good/._000.png").write_bytes(APPLEDOUBLE)
    (cat / "test/good").rename(cat / "test/NORMAL")
    (cat / "test/red_square").rename(cat / "test/ABNORMAL")
    cfg = Config(category="cat", data_dir=str(tmp_path), output_dir=str(tmp_path / "runs"), run_name="r",
                 steps=2, log_every=1, eval_every=1000, preview_every=1000, d_iter=1, **TINY)
    run = train(cfg, verbose=0, export=False)
    out = capsys.readouterr().out
    assert "test/good is missing" in out and "NORMAL" in out
    rule = json.loads((run / "threshold.json").read_text())["rule"]
    assert "only 1 training image" in rule and "(--val-split 0)" not in rule and rule in out


# ---------------------------------------------------------------------------------- 6. 16-bit data
def test_twelve_bit_png_with_sbit_keeps_its_gray_levels(tmp_path):
    from cbigan.data.pipeline import load_image

    ramp = np.tile(np.arange(4096, dtype=np.uint16), (2, 1))           # Mono12: 0..4095
    (tmp_path / "m12.png").write_bytes(png_bytes(ramp, 16, 0, sbit(12)))
    a = load_image(tmp_path / "m12.png")[..., 0]
    assert np.array_equal(a[0], np.floor(np.arange(4096) * 255 / 4095 + 0.5).astype(np.uint8))
    assert len(np.unique(a)) == 256
    # data already scaled to 16 bits, as the PNG specification asks: unchanged, no warning
    (tmp_path / "shifted.png").write_bytes(png_bytes(ramp << 4, 16, 0, sbit(12)))
    b = load_image(tmp_path / "shifted.png")[..., 0]
    assert np.array_equal(b[0], np.floor((np.arange(4096) << 4) * 255 / 65535 + 0.5).astype(np.uint8))


def test_low_range_sixteen_bit_without_sbit_is_warned_once_per_load(tmp_path):
    from cbigan.data.pipeline import load_image, load_resized

    ramp = np.tile(np.arange(4096, dtype=np.uint16), (2, 1))
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(ramp, 16, 0))
    with pytest.warns(UserWarning, match=r"under 1/16 of the 16-bit range.*0\.png") as record:
        load_resized(sorted(tmp_path.glob("*.png")), 64)
    low = [str(w.message) for w in record if "1/16" in str(w.message)]
    assert len(low) == 1 and low[0].startswith("3 16-bit image(s)")
    with pytest.warns(UserWarning, match="sBIT"):
        assert load_image(tmp_path / "0.png").max() == 16


# ---------------------------------------------------------------------------------- 7. one decoder
def _formats():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:37, :53]
    smooth = np.stack([xx * 4 % 256, yy * 6 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    m12 = rng.integers(0, 4096, (37, 53))
    grey_palette = Image.fromarray(noise[..., 0], "P")                # a gray palette, not the identity
    grey_palette.putpalette([255 - i for i in range(256) for _ in range(3)])
    return {
        "png_rgb.png": encoded(Image.fromarray(noise), "PNG"),
        "png_gray.png": encoded(Image.fromarray(noise[..., 0]), "PNG"),
        "png_rgba.png": encoded(Image.fromarray(np.dstack([noise, noise[..., :1]])), "PNG"),
        "png_palette.png": encoded(Image.fromarray(noise).convert("P"), "PNG"),
        "png_1bit.png": encoded(Image.fromarray(noise[..., 0] > 128), "PNG"),
        "png_gray2bit.png": png_bytes(rng.integers(0, 4, (37, 53)), 2, 0),
        "png_gray16.png": encoded(Image.fromarray(rng.integers(0, 65536, (37, 53)).astype(np.uint16)), "PNG"),
        "png_gray16_sbit12.png": png_bytes(m12, 16, 0, sbit(12)),
        "png_gray16_sbit12_scaled.png": png_bytes(m12 << 4, 16, 0, sbit(12)),
        "png_gray16_12bit_no_sbit.png": png_bytes(m12, 16, 0),
        "png_rgb16.png": png_bytes(rng.integers(0, 65536, (37, 53, 3)), 16, 2),
        "png_rgba16.png": png_bytes(rng.integers(0, 65536, (37, 53, 4)), 16, 6),
        "png_gray_alpha16.png": png_bytes(rng.integers(0, 65536, (37, 53, 2)), 16, 4),
        "jpeg_rgb.jpg": encoded(Image.fromarray(smooth), "JPEG", quality=90),
        "jpeg_rgb444.jpg": encoded(Image.fromarray(smooth), "JPEG", quality=90, subsampling=0),
        "jpeg_progressive.jpg": encoded(Image.fromarray(smooth), "JPEG", progressive=True),
        "jpeg_gray.jpg": encoded(Image.fromarray(smooth[..., 0]), "JPEG"),
        "jpeg_cmyk.jpg": encoded(Image.fromarray(smooth).convert("CMYK"), "JPEG"),
        "bmp_rgb.bmp": encoded(Image.fromarray(noise), "BMP"),
        "bmp_rgbx32.bmp": encoded(Image.fromarray(np.dstack([noise, noise[..., :1]])), "BMP"),
        "bmp_palette.bmp": encoded(Image.fromarray(noise).convert("P"), "BMP"),
        "bmp_gray_palette.bmp": encoded(grey_palette, "BMP"),
        "bmp_gray.bmp": encoded(Image.fromarray(noise[..., 0]), "BMP"),
    }


REFUSED = {"tiff_rgb.tif": ("TIFF", lambda: encoded(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "TIFF")),
           "gif.gif": ("GIF", lambda: encoded(Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("P"), "GIF")),
           "bmp_1bit.bmp": ("BMP", lambda: encoded(Image.fromarray(np.zeros((8, 8), bool)), "BMP")),
           "junk.png": ("none of them", lambda: b"not an image at all")}


@pytest.fixture(scope="module")
def graph_decode():
    import tensorflow as tf

    from cbigan.serving.export import decode_image_bytes

    return tf.function(decode_image_bytes, input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_formats()))
def test_serving_bytes_decodes_every_format_as_training_does(tmp_path, graph_decode, name):
    import warnings

    from cbigan.data.pipeline import load_image

    data = _formats()[name]
    (tmp_path / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the 12-bit file without sBIT is warned about
        ref = load_image(tmp_path / name)
    got = graph_decode(data).numpy()
    assert got.dtype == np.uint8 and got.shape == ref.shape
    assert np.array_equal(got, ref), (name, np.abs(got.astype(int) - ref).max())


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_serving_bytes_refuses_what_it_cannot_decode_exactly(graph_decode, name):
    import tensorflow as tf

    what, make = REFUSED[name]
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"cbigan: serving_bytes.*{what}"):
        graph_decode(make())


@pytest.mark.slow
def test_palette_bmp_scores_the_same_through_bytes_and_pixels(tmp_path, tiny_model):
    import tensorflow as tf

    from cbigan.data.pipeline import load_image
    from cbigan.serving.export import ServingGraph

    cfg, model = tiny_model
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).convert("P")
    img.save(tmp_path / "p.bmp")
    graph = ServingGraph(model, cfg, None)
    by_bytes = graph.serve_bytes(tf.constant([(tmp_path / "p.bmp").read_bytes()]))["score"].numpy()
    by_pixels = graph.serve_images(tf.constant(load_image(tmp_path / "p.bmp")[None]))["score"].numpy()
    assert by_bytes == pytest.approx(by_pixels, rel=1e-6)


# ---------------------------------------------------------------------------------- 8. decoder failures
@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer of 4 bytes"), EOFError(),
                                   zlib.error("Error -3 while decompressing data"), RuntimeError("decoder"),
                                   IndexError("list index out of range"), KeyError("tile"),
                                   TypeError("bad tile"), Image.DecompressionBombError("too big")])
def test_every_decoder_exception_names_the_file(tmp_path, monkeypatch, error):
    from cbigan.data.pipeline import load_image, load_resized

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "victim.png")
    original = ImageFile.ImageFile.load

    def load(self):
        if Path(self.filename).name == "victim.png":
            raise error
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(DataError, match=r"victim\.png.*" + type(error).__name__):
        load_image(tmp_path / "victim.png")
    images, bad = load_resized([tmp_path / "ok.png", tmp_path / "victim.png"], 64, skip_bad=True)
    assert len(images) == 1 and bad == [tmp_path / "victim.png"]


def test_decompression_bomb_is_listed_and_skipped_in_train_and_predict(tmp_path):
    from cbigan.data.pipeline import load_train_set
    from cbigan.serving.predict import predict

    cat = category(tmp_path, masks=False)
    bomb = bomb_png(cat / "train/good/huge.png")
    with pytest.raises(DataError, match=r"1 unreadable image\(s\): .*huge\.png.*--skip-bad-images"):
        load_train_set(cfg_for(tmp_path, "cat"))
    tr = load_train_set(cfg_for(tmp_path, "cat"), skip_bad=True)
    assert tr.skipped == [bomb] and tr.n_images == 5

    class Model:
        threshold, rule, source = None, "", "fake"

        def __call__(self, images):
            return {"score": np.asarray(images, np.float64).mean(axis=(1, 2, 3))}

    res, _ = predict(Model(), [cat / "train/good/000.png", bomb])
    assert [p.name for p, _ in res.bad] == ["huge.png"] and "DecompressionBombError" in res.bad[0][1]
    assert len(res.predictions) == 1


# ---------------------------------------------------------------------------------- 9. smaller
def test_nan_stop_does_not_claim_a_checkpoint_that_does_not_exist():
    from cbigan.training.callbacks import NaNGuard

    for last, expected in ((None, "no checkpoint had been saved yet"), (8, "checkpoint, of step 8, is kept")):
        guard = NaNGuard(last_checkpoint=lambda last=last: last)
        guard.set_model(types.SimpleNamespace(train_counter=np.int64(3), stop_training=False))
        guard.on_train_batch_end(0, {"loss_eg": float("nan")})
        assert expected in guard.error and "step 3" in guard.error
        assert (last is None) == ("untouched" not in guard.error and "nothing to resume" in guard.error)


@pytest.mark.slow
def test_nan_before_the_first_backup_says_there_is_none(tmp_path, monkeypatch):
    import tensorflow as tf

    from cbigan.training.callbacks import NonFiniteLossError
    from cbigan.model.gan import CBiGAN
    from cbigan.training.run import train

    category(tmp_path, masks=False)
    original = CBiGAN.eg_losses

    def poisoned(self, x, z, *rest):
        losses = original(self, x, z, *rest)
        losses["loss_eg"] = losses["loss_eg"] + tf.constant(float("nan"))
        return losses

    monkeypatch.setattr(CBiGAN, "eg_losses", poisoned)
    cfg = Config(category="cat", data_dir=str(tmp_path), output_dir=str(tmp_path / "runs"), run_name="r",
                 steps=20, log_every=10, eval_every=1000, preview_every=1000, d_iter=1, **TINY)
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg, verbose=0, export=False)
    assert "loss_eg" in str(e.value) and "no checkpoint had been saved yet" in str(e.value)
    assert "untouched" not in str(e.value)
    assert not (tmp_path / "runs/cat/r/backup/checkpoint.weights.h5").exists()


@pytest.mark.slow
def test_evaluate_skip_bad_images_names_the_dropped_images(tmp_path, capsys):
    from cbigan.cli.evaluate import main

    cat = category(tmp_path)
    bomb_png(cat / "test/red_square/huge.png")
    (cat / "test/good/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = make_untrained_run(tmp_path, tmp_path / "runs", "cat", **TINY)
    assert main([str(run["run"]), "--skip-bad-images", "--quiet"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("skipped"))
    assert "2 unreadable test image(s)" in line and "huge.png" in line and "broken.png" in line
