"""Native-resolution tiles for images of any size and aspect ratio (issue 15, part 1)."""

import numpy as np
import pytest
from PIL import Image

from cbigan.core.config import Config


def _strip(rng, h=200, w=520) -> np.ndarray:
    """A smooth horizontal gradient with fine noise: a surface strip."""
    base = 90 + 60 * (np.arange(w)[None, :] / w) + rng.normal(0, 3, (h, w))
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def _scratch(rng, img: np.ndarray):
    """A dark scratch 3 pixels wide and 80 long at a random place; returns the image and its mask."""
    img = img.copy()
    mask = np.zeros(img.shape[:2], np.uint8)
    y, x = rng.integers(20, img.shape[0] - 23), rng.integers(20, img.shape[1] - 100)
    img[y:y + 3, x:x + 80] = 20
    mask[y:y + 3, x:x + 80] = 255
    return img, mask


def make_strips(root, name="strips", n_train=24, n_good=4, n_defect=4, seed=0):
    rng = np.random.default_rng(seed)
    d = root / name
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_strip(rng)).save(d / f"train/good/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_strip(rng)).save(d / f"test/good/{i:03d}.png")
    for i in range(n_defect):
        img, mask = _scratch(rng, _strip(rng))
        Image.fromarray(img).save(d / f"test/scratch/{i:03d}.png")
        Image.fromarray(mask).save(d / f"ground_truth/scratch/{i:03d}_mask.png")
    return d


def test_canvas_keeps_the_aspect_ratio_and_the_pixels():
    from cbigan.core.imageops import fit_to_canvas

    img = np.random.default_rng(0).integers(0, 256, (1, 200, 520, 3)).astype(np.uint8)
    canvas, (h, w) = fit_to_canvas(img, 640)                       # native: the image's own pixels
    assert canvas.shape == (1, 640, 640, 3) and (int(h), int(w)) == (200, 520)
    np.testing.assert_array_equal(canvas.numpy()[0, :200, :520], img[0])
    np.testing.assert_array_equal(canvas.numpy()[0, 200:400, :520], img[0, ::-1])   # mirrored below
    canvas, (h, w) = fit_to_canvas(img, 256)                       # too large: one factor for both sides
    assert (int(h), int(w)) == (98, 256)
    cfg = Config(category="x", kind="tiles").resolved()
    assert (cfg.image_size, cfg.patch_size, cfg.rotation, cfg.scale) == (512, 64, 0.0, 1.0)
    from cbigan.core.kinds import kind_of

    assert kind_of(cfg).map_stride(cfg, None) == 32
    with pytest.raises(ValueError, match="scale must be > 0"):
        Config(category="x", kind="tiles", scale=0).resolved()


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_image_train_crops_are_centred_inside_each_images_region(tmp_path, rotation):
    """--train-crops image: every crop's centre pixel lies in its image's region of the canvas, spread
    over all of it; 'canvas' (and a region of the whole canvas) leaves the crops as they were."""
    import tensorflow as tf

    from cbigan.data.pipeline import load_train_set, train_dataset
    from cbigan.core.imageops import rotated_texture_crops

    regions = np.array([[40, 100], [120, 30], [20, 20], [128, 128]] * 16, np.int32)  # [64, 2] (h, w)
    canvas = np.zeros((64, 128, 128, 1), np.uint8)
    for i, (h, w) in enumerate(regions):
        canvas[i, :h, :w] = 255                          # the image white, its mirrored padding black
    seed = tf.constant([3, 4], tf.int64)
    inside = rotated_texture_crops(canvas, 16, rotation, seed, regions).numpy()
    assert (inside[:, 7:9, 7:9].mean(axis=(1, 2, 3)) > 128).all()    # the centre: the image's own
    anywhere = rotated_texture_crops(canvas, 16, rotation, seed).numpy()
    assert (anywhere[:, 7:9, 7:9].mean(axis=(1, 2, 3)) < 128).any()  # the old ones land on the padding too
    whole = np.tile(np.array([[128, 128]], np.int32), (64, 1))
    np.testing.assert_array_equal(rotated_texture_crops(canvas, 16, rotation, seed, whole).numpy(), anywhere)
    # through a tiles run's data: the training images' regions reach the crops, with 'image' only
    root = make_strips(tmp_path, n_train=8, n_good=1, n_defect=1)
    cfg = Config(category="strips", data_dir=str(tmp_path), kind="tiles", image_size=256, patch_size=32,
                 rotation=rotation, train_crops="image", batch_size=8, val_split=0.25).resolved()
    tr = load_train_set(cfg)
    assert root.is_dir() and tr.regions.tolist() == [[98, 256]] * 6    # 200x520 strips scaled by 256/520
    def first(c, regions):
        return next(iter(train_dataset(tr.images, c, regions=regions))).numpy()
    assert not np.allclose(first(cfg, tr.regions), first(cfg, None))
    canvas_cfg = Config(**{**cfg.__dict__, "train_crops": "canvas"}).resolved()
    np.testing.assert_array_equal(first(canvas_cfg, tr.regions), first(canvas_cfg, None))
    assert cfg.train_crops == "image" and Config(category="x", kind="tiles").resolved().train_crops == "image"
    assert Config(category="grid").resolved().train_crops == "canvas"
    import json
    old = {k: v for k, v in Config(category="x", kind="tiles").__dict__.items() if k != "train_crops"}
    (tmp_path / "config.json").write_text(json.dumps(old))       # a run from before the field
    assert Config.from_json(tmp_path / "config.json").train_crops == "canvas"
    with pytest.raises(ValueError, match="train_crops must be one of canvas, image"):
        Config(category="x", train_crops="inside").resolved()


@pytest.mark.slow
def test_stitching_overlapping_tiles_equals_a_per_tile_loop():
    from cbigan.core.imageops import to_model_range
    from cbigan.scoring.localization import Localizer
    from cbigan.model.gan import build_model
    from cbigan.model.networks import feature_extractor
    from cbigan.scoring.parts import score_patches

    cfg = Config(category="x", kind="tiles", image_size=128, patch_size=64, width=1, latent_dim=8).resolved()
    model = build_model(cfg)
    imgs = np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    out = Localizer(model, cfg, sigma=0, stride=32).run(imgs)
    feats = feature_extractor(model.critic, cfg.feature_layer)
    x = to_model_range(imgs, cfg.normalize)  # the kind's normalization (per_image for tiles)
    total, count = np.zeros((2, 128, 128)), np.zeros((128, 128))
    for y0 in (0, 32, 64):
        for x0 in (0, 32, 64):
            d = score_patches(model.ema_encoder, model.ema_generator, feats, x[:, y0:y0 + 64, x0:x0 + 64])
            total[:, y0:y0 + 64, x0:x0 + 64] += d["diff"].numpy()
            count[y0:y0 + 64, x0:x0 + 64] += 1
    np.testing.assert_allclose(out.map_r, total / count, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def strips_run(tmp_path_factory):
    from cbigan.training.run import train

    root = tmp_path_factory.mktemp("tiles")
    make_strips(root / "data")
    cfg = Config(category="strips", data_dir=str(root / "data"), output_dir=str(root / "runs"), run_name="r",
                 kind="tiles", image_size=576, patch_size=64, image_score="map_max", val_split=0.2,
                 steps=80, batch_size=16, d_iter=1, alpha=0.5, lr_d=1e-3, lr_eg=1e-3, width=2, latent_dim=16,
                 ema_decay=0.9, ema_every=1, log_every=40, eval_every=80, preview_every=80, seed=42,
                 select="final").resolved()
    from unittest import mock

    import cbigan.training.run as training
    from cbigan.data.pipeline import train_dataset

    handed = []                     # what the training loop hands the input pipeline

    def spy(images, c, start_step=0, regions=None):
        handed.append(None if regions is None else np.array(regions))
        return train_dataset(images, c, start_step=start_step, regions=regions)

    with mock.patch.object(training, "train_dataset", spy):
        run = train(cfg, verbose=0, export_dir=str(root / "export"))
    return {"run": run, "export": root / "export", "cfg": cfg, "handed_regions": handed}


@pytest.mark.slow
def test_the_training_loop_hands_each_training_images_region_to_the_crops(strips_run):
    """train() passes the training images' regions (h, w on the canvas) to train_dataset, so
    --train-crops image crops inside each image in a real run, not only in the pipeline's own tests."""
    from cbigan.data.pipeline import load_train_set

    handed = strips_run["handed_regions"]
    assert len(handed) == 1 and handed[0] is not None
    np.testing.assert_array_equal(handed[0], load_train_set(strips_run["cfg"]).regions)
    assert (handed[0] < strips_run["cfg"].image_size).any()          # strips do not fill their canvas


@pytest.mark.slow
def test_a_three_pixel_scratch_on_a_strip_is_found_and_mapped_at_the_input_size(strips_run):
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.scoring.metrics import auroc

    ev = evaluate_run(strips_run["run"], progress=False)
    df = ev.scores
    assert auroc(df["label"], df["score"]) == 1.0, df[["defect_type", "score"]]
    assert ev.summary["pixel_auroc"] > 0.9, ev.summary["pixel_auroc"]
    # the export returns the map at the input's own size, and the evaluation's scores
    import tensorflow as tf

    from cbigan.data.pipeline import load_image
    from cbigan.serving.export import find_saved_model

    loaded = tf.saved_model.load(str(find_saved_model(strips_run["export"] / "strips")))
    sig, by_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    assert strips_run["cfg"].score_margin == 32  # half a tile left out at each image's border
    for path, score in zip(df["path"], df["score"]):
        out = sig(images=tf.constant(load_image(path)[None].astype(np.float32)))
        assert out["anomaly_map"].shape == (1, 200, 520) and out["reconstruction"].shape == (1, 200, 520, 3)
        assert float(out["score"][0]) == pytest.approx(score, rel=1e-4)
    # encoded files, each on its own canvas with its own region: the same scores
    files = tf.constant([open(p, "rb").read() for p in df["path"][:4]])
    np.testing.assert_allclose(by_bytes(image_bytes=files)["score"].numpy(), df["score"][:4], rtol=1e-4)
