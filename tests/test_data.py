import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from synthetic import make_category

from cbigan.core.config import Config
from cbigan.data.pipeline import (
    DataError, category_dir, download_category, from_patches, load_image, load_test_set, load_train_set,
    rotate_objects, rotated_texture_crops, split_train_val, to_patches, train_dataset)


def test_missing_category_error_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        category_dir(tmp_path, "grid")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "grid" / "train" / "good") in msg and "--download" in msg


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("I;16", ".png"),
                                         ("CMYK", ".jpg"), ("RGB", ".bmp"), ("RGB", ".jpg")])
def test_load_image_any_mode_to_rgb(tmp_path, mode, suffix):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray((rng.integers(0, 65535, (20, 30))).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img{suffix}"
    im.save(path)
    a = load_image(path)
    assert a.shape == (20, 30, 3) and a.dtype == np.uint8


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "w.png")
    assert load_image(tmp_path / "w.png").min() == 255


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_image_error_names_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content is None:  # truncated PNG
        buf = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
        content = buf.getvalue()[:60]
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        load_image(path)


def test_split_is_disjoint_reproducible_and_seeded():
    paths = [f"{i}.png" for i in range(50)]
    tr, va = split_train_val(paths, 0.1, seed=3)
    assert len(va) == 5 and not set(tr) & set(va) and sorted(tr + va) == sorted(paths)
    assert split_train_val(paths, 0.1, seed=3) == (tr, va)
    assert split_train_val(paths, 0.1, seed=4)[1] != va
    assert split_train_val(paths, 0.0, seed=3) == (paths, [])


def test_train_and_test_sets(synthetic_root):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), image_size=64, patch_size=64)
    tr = load_train_set(cfg)
    assert tr.images.shape == (22, 64, 64, 3) and tr.val_images.shape == (2, 64, 64, 3)
    te = load_test_set(cfg)
    assert len(te) == 12 and te.labels.sum() == 6
    assert set(te.defect_types) == {"good", "red_square"}
    assert te.masks.shape == (12, 64, 64) and te.has_mask.all()
    assert te.masks[te.labels == 0].sum() == 0 and (te.masks[te.labels == 1].sum(axis=(1, 2)) > 0).all()


def test_test_set_without_masks(tmp_path):
    make_category(tmp_path, "nomask", size=32, n_train=2, n_good=2, n_defect=2, masks=False)
    te = load_test_set(Config(category="nomask", data_dir=str(tmp_path), image_size=64, patch_size=64))
    assert te.masks is None and te.images.shape == (4, 64, 64, 3)


def test_mask_of_wrong_size_is_reported(tmp_path):
    cat = make_category(tmp_path, "badmask", size=32, n_train=2, n_good=1, n_defect=1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(cat / "ground_truth/red_square/000_mask.png")
    with pytest.raises(DataError, match="000_mask.png"):
        load_test_set(Config(category="badmask", data_dir=str(tmp_path), image_size=64, patch_size=64))


@pytest.mark.slow
def test_mask_of_wrong_size_does_not_stop_image_level_use(tmp_path):
    """Training monitors and ``evaluate.py --no-pixel`` score images only: they neither read nor check masks."""
    from synthetic import make_untrained_run

    from cbigan.core.errors import EvaluationError
    from cbigan.reporting.evaluation import evaluate_run

    cat = make_category(tmp_path, "badmask", size=32, n_train=2, n_good=1, n_defect=1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(cat / "ground_truth/red_square/000_mask.png")
    cfg = Config(category="badmask", data_dir=str(tmp_path), image_size=64, patch_size=64)
    assert load_test_set(cfg, with_masks=False).masks is None
    run = make_untrained_run(tmp_path, tmp_path / "runs", "badmask", image_size=64, patch_size=64, width=1,
                             latent_dim=8)["run"]
    assert evaluate_run(run, pixel=False, progress=False).metrics is not None
    with pytest.raises(EvaluationError, match="000_mask.png is 10x10 but its image"):
        evaluate_run(run, pixel=True, progress=False)


def test_patches_round_trip_and_order():
    x = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
    p = to_patches(x, 4).numpy()
    assert p.shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(p[1], x[0, 0:4, 4:8])  # row-major within an image
    np.testing.assert_array_equal(p[4], x[1, 0:4, 0:4])
    np.testing.assert_array_equal(from_patches(p, 2).numpy(), x)


def test_texture_crops_have_no_empty_corners_and_rotate_in_degrees():
    # outside the image the transform fills 0: a crop reaching outside would show black corners
    img = np.full((200, 256, 256, 3), 255, np.uint8)
    crops = rotated_texture_crops(tf.constant(img), 64, 45.0, [1, 2]).numpy()
    assert crops.shape == (200, 64, 64, 3)
    assert crops.min() > 250
    # and crops do cover the whole image, up to its border
    marked = img[:1].copy()
    marked[:, :, :4] = 0
    seen = rotated_texture_crops(tf.constant(np.repeat(marked, 200, 0)), 64, 45.0, [1, 3]).numpy()
    assert seen.min() < 5
    # degrees, not radians: a vertical edge rotated by at most 45 degrees stays within 45 degrees
    stripe = np.zeros((1, 256, 256, 3), np.uint8)
    stripe[:, :, 128:] = 255
    ok = 0
    for c in rotated_texture_crops(tf.constant(np.repeat(stripe, 64, 0)), 64, 45.0, [1, 4]).numpy():
        col = c[..., 0] > 127
        rows_with_edge = [r for r in range(64) if 0 < col[r].sum() < 64]
        if len(rows_with_edge) > 10:
            xs = [np.argmax(col[r]) for r in rows_with_edge]
            slope = abs(np.polyfit(rows_with_edge, xs, 1)[0])
            assert slope <= 1.05  # tan(45 deg) = 1
            ok += 1
    assert ok > 0


def test_object_rotation_keeps_shape_and_fills_edges():
    img = np.full((4, 64, 64, 3), 100, np.uint8)
    out = rotate_objects(tf.constant(img), 45.0, [1, 5]).numpy()
    assert out.shape == (4, 64, 64, 3) and np.allclose(out, 100, atol=1e-3)


def test_shuffled_indices_are_permutations_per_pass_and_seeded():
    from cbigan.data.pipeline import shuffled_indices

    n, b = 10, 4
    stream = np.concatenate([shuffled_indices(s, b, n, 7).numpy() for s in range(5)])  # 20 = 2 passes
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])
    np.testing.assert_array_equal(shuffled_indices(3, b, n, 7).numpy(), stream[12:16])
    assert not np.array_equal(shuffled_indices(0, b, n, 8).numpy(), stream[:4])
    big = shuffled_indices(2, 25, 3, 7).numpy()  # a batch larger than the data spans several passes
    assert len(big) == 25 and set(big) == {0, 1, 2}


def test_train_dataset_resumes_exactly(synthetic_root):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), image_size=64, patch_size=64,
                 batch_size=4).resolved()
    images = load_train_set(cfg).images
    full = [b.numpy() for b in train_dataset(images, cfg).take(5)]
    resumed = [b.numpy() for b in train_dataset(images, cfg, start_step=3).take(2)]
    np.testing.assert_array_equal(full[3], resumed[0])
    np.testing.assert_array_equal(full[4], resumed[1])
    assert not np.array_equal(full[0], full[1])


def test_train_dataset_batches_in_range(synthetic_root):
    cfg = Config(category="synth_tex", data_dir=str(synthetic_root), kind="texture", image_size=128,
                 patch_size=64, batch_size=4).resolved()
    tr = load_train_set(cfg)
    b = next(iter(train_dataset(tr.images, cfg))).numpy()
    assert b.shape == (4, 64, 64, 3) and b.min() >= -1 and b.max() <= 1


@pytest.mark.parametrize("kind", ["texture", "tiles"])
def test_per_image_normalization_of_crops_uses_each_whole_images_statistics(synthetic_root, kind):
    """Training crops are standardized with their whole image's mean and std (computed once for the
    pool), exactly as the batch's own images would give: what scoring the whole image does."""
    from cbigan.data.pipeline import shuffled_indices
    from cbigan.core.imageops import image_stats, to_model_range
    from cbigan.core.kinds import kind_of

    cfg = Config(category="synth_tex", data_dir=str(synthetic_root), kind=kind, image_size=128,
                 patch_size=64, batch_size=4, normalize="per_image").resolved()
    images = load_train_set(cfg).images
    got = [b.numpy() for b in train_dataset(images, cfg).take(2)]
    for step in (0, 1):
        batch = tf.gather(images, shuffled_indices(tf.constant(step, tf.int64), 4, len(images), cfg.seed))
        seed = tf.stack([tf.constant(cfg.seed + 7919, tf.int64), tf.constant(step, tf.int64)])
        crops = kind_of(cfg).geometric_augment(batch, cfg, seed)
        want = to_model_range(crops, "per_image", image_stats(batch)).numpy()
        np.testing.assert_allclose(got[step], want, rtol=1e-5, atol=1e-5)
    # a crop's own statistics would differ: the whole image's are what scoring uses
    own = to_model_range(crops, "per_image").numpy()
    assert np.abs(own - want).max() > 1e-3


def _serve(directory):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_download_from_local_server(tmp_path):
    src = tmp_path / "src"
    make_category(src, "tinycat", size=16, n_train=2, n_good=1, n_defect=1)
    make_category(src, "other", size=16, n_train=1, n_good=1, n_defect=1)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "mvtec.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(src / "tinycat", arcname="tinycat")
        tar.add(src / "other", arcname="other")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    httpd = _serve(served)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/mvtec.tar.xz"
    try:
        data_dir = tmp_path / "data"
        with pytest.raises(DataError, match="checksum"):
            download_category("tinycat", data_dir, url=url, sha256="0" * 64)
        assert not (data_dir / "tinycat").exists() and not list(data_dir.glob("*.part"))
        out = download_category("tinycat", data_dir, url=url, sha256=sha)
        assert out == data_dir / "tinycat" and len(list((out / "train/good").iterdir())) == 2
        assert not (data_dir / "other").exists()
        assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]  # no temporary folders left
    finally:
        httpd.shutdown()


def test_download_refuses_a_name_outside_mvtec_ad_before_fetching(tmp_path, monkeypatch):
    import cbigan.data.pipeline as data

    def fetch(url, dest):
        raise AssertionError("fetched although the name is not an MVTec AD category")

    monkeypatch.setattr(data, "_fetch", fetch)
    monkeypatch.delenv("CBIGAN_MVTEC_URL", raising=False)
    with pytest.raises(DataError, match="'bottel' is not an MVTec AD category") as e:
        download_category("bottel", tmp_path / "data")
    assert "\n" not in str(e.value) and "bottle" in str(e.value)


def test_square_resize_of_an_image_of_that_size_is_the_identity_and_what_the_resize_gives():
    """resize_uint8 skips the resize for images already at the size, in eager and in a graph whose input
    size is known only at run time (the SavedModel), with exactly the antialiased resize's result."""
    from cbigan.core.imageops import resize_uint8

    x = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    full = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(tf.cast(x, tf.float32), (48, 48), "bilinear",
                                                               antialias=True)), 0, 255), tf.uint8).numpy()
    np.testing.assert_array_equal(full, x)  # the antialiased resize to the same size is the identity
    graph = tf.function(lambda t: resize_uint8(t, 48), input_signature=[tf.TensorSpec([None, None, None, 3])])
    np.testing.assert_array_equal(resize_uint8(x, 48).numpy(), x)
    np.testing.assert_array_equal(graph(tf.constant(x, tf.float32)).numpy(), x)
    other = graph(tf.constant(x[:, :40, :44], tf.float32)).numpy()  # another size is resized
    assert other.shape == (2, 48, 48, 3)
    np.testing.assert_array_equal(other, resize_uint8(x[:, :40, :44], 48).numpy())
