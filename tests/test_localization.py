"""Anomaly maps (cbigan.scoring.localization) and their pixel metrics in evaluate.py.

Untrained, freshly built models: the maps' geometry, stitching, averaging and smoothing do not depend
on the weights.
"""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from cbigan.core.config import Config
from synthetic import make_untrained_run


def make_run(root, tmp, category, **kw):
    return make_untrained_run(root, tmp, category, **kw)


@pytest.fixture(scope="module")
def tex(synthetic_root, tmp_path_factory):
    from cbigan.data.pipeline import load_test_set

    t = make_run(synthetic_root, tmp_path_factory.mktemp("runs"), "synth_tex", kind="texture",
                 image_size=128, patch_size=64)
    return dict(t, test=load_test_set(t["cfg"]))


@pytest.fixture(scope="module")
def obj(synthetic_root, tmp_path_factory):
    from cbigan.data.pipeline import load_test_set

    t = make_run(synthetic_root, tmp_path_factory.mktemp("runs"), "synth_obj", image_size=64, patch_size=64)
    return dict(t, test=load_test_set(t["cfg"]))


def reference_maps(model, cfg, image, stride):
    """Loop over every patch position; eager Keras calls; numpy sums and counts."""
    from cbigan.model.networks import feature_extractor

    feats = feature_extractor(model.critic, cfg.feature_layer)
    s, p = cfg.image_size, cfg.patch_size
    starts = sorted(set(range(0, s - p + 1, stride)) | {s - p})
    x = image.astype(np.float32) / 127.5 - 1.0
    acc_r, acc_fd, count = np.zeros((s, s)), np.zeros((s, s)), np.zeros((s, s))
    for y0 in starts:
        for x0 in starts:
            patch = x[None, y0:y0 + p, x0:x0 + p]
            z = np.asarray(model.ema_encoder(patch, training=False))
            rec = np.asarray(model.ema_generator(z, training=False))
            fd = np.abs(np.asarray(feats([patch, z])) - np.asarray(feats([rec, z]))).mean(-1)[0]
            acc_r[y0:y0 + p, x0:x0 + p] += np.abs(patch - rec).mean(-1)[0]
            acc_fd[y0:y0 + p, x0:x0 + p] += fd
            count[y0:y0 + p, x0:x0 + p] += 1
    return acc_r / count, acc_fd / count


@pytest.mark.slow
def test_maps_have_the_input_resolution(tex, obj):
    from cbigan.scoring.localization import Localizer, to_original_size

    for t in (tex, obj):
        size = t["cfg"].image_size
        out = Localizer(t["model"], t["cfg"]).raw(t["test"].images[:2])
        assert out["anomaly_map"].shape == (2, size, size)
        assert out["reconstruction"].shape == (2, size, size, 3)
        assert out["l_r"].shape == (2, (size // t["cfg"].patch_size) ** 2)
        np.testing.assert_allclose(out["anomaly_map"], 0.9 * out["map_r"] + 0.1 * out["map_fd"], rtol=1e-5)
    back = to_original_size(np.asarray(out["anomaly_map"][0]), (90, 150))  # an image's original size
    assert back.shape == (90, 150)
    assert back.min() >= float(out["anomaly_map"][0].numpy().min()) - 1e-5


@pytest.mark.slow
def test_stride_64_maps_equal_the_plain_stitched_maps(tex):
    """stride = patch size: exactly the per-patch |x - G(E(x))| of Scorer.raw put side by side."""
    from cbigan.data.pipeline import from_patches
    from cbigan.scoring.localization import Localizer
    from cbigan.scoring.parts import Scorer

    images = tex["test"].images
    scorer = Scorer(tex["model"], tex["cfg"])
    raw = scorer.raw(images)
    plain = from_patches(raw["diff"], 2).numpy()
    out = Localizer(tex["model"], tex["cfg"], sigma=0, stride=64).run(images)
    np.testing.assert_array_equal(out.map_r, plain)
    default = Localizer(tex["model"], tex["cfg"], sigma=0).run(images)  # the default stride is the patch
    np.testing.assert_array_equal(default.map_r, plain)
    chunked = Localizer(tex["model"], tex["cfg"], sigma=0, stride=64, patches_per_call=12)  # 3 images a call
    assert chunked.images_per_call == 3 and len(images) % 3
    chunked = chunked.run(images)
    for key in ("l_r", "l_fd", "map_r", "map_fd"):
        np.testing.assert_allclose(getattr(chunked, key), getattr(out, key), rtol=1e-6, atol=1e-7)
    scores = scorer.score(images)
    np.testing.assert_allclose(out.l_r, scores.l_r, rtol=1e-6)
    np.testing.assert_allclose(out.l_fd, scores.l_fd, rtol=1e-6)
    np.testing.assert_allclose(out.map_r.reshape(len(images), -1).sum(1) * 3,
                               scores.l_r.sum(1), rtol=1e-4)  # channel mean vs sum


@pytest.mark.slow
def test_overlapping_patches_are_averaged_and_scores_unchanged(tex):
    from cbigan.scoring.localization import Localizer
    from cbigan.scoring.parts import Scorer

    images = tex["test"].images[-2:]
    for stride in (32, 48):   # 48: positions 0, 48, 64 (the scoring grid is always included)
        out = Localizer(tex["model"], tex["cfg"], sigma=0, stride=stride).run(images)
        ref_r, ref_fd = reference_maps(tex["model"], tex["cfg"], images[0], stride)
        np.testing.assert_allclose(out.map_r[0], ref_r, atol=2e-5)
        np.testing.assert_allclose(out.map_fd[0], ref_fd, atol=2e-5)
        scores = Scorer(tex["model"], tex["cfg"]).score(images)
        np.testing.assert_allclose(out.l_r, scores.l_r, rtol=1e-5)  # image scores: still the paper's grid


def test_gaussian_smoothing_matches_scipy():
    import tensorflow as tf

    from cbigan.scoring.localization import gaussian_blur

    # 9: longer than a side; 256 x 320: the banded path (both sides >= BANDED_MIN_SIDE), 256 x 200: dense
    for shape, sigmas in (((2, 64, 64), (1.0, 4.0, 2.5)), ((1, 12, 20), (0.5, 9.0)),
                          ((2, 256, 320), (4.0, 1.5)), ((1, 256, 200), (4.0,))):
        maps = np.random.default_rng(0).random(shape).astype(np.float32)
        for sigma in sigmas:
            got = gaussian_blur(tf.constant(maps), sigma).numpy()
            want = np.stack([gaussian_filter(m.astype(np.float64), sigma, mode="reflect") for m in maps])
            np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(gaussian_blur(tf.constant(maps), 0).numpy(), maps)


def test_coarse_feature_layers_are_resized():
    import keras
    import tensorflow as tf

    from cbigan.scoring.localization import channel_mean_map

    def feature_map(features, x, r, z):
        return channel_mean_map(tf.abs(features([x, z]) - features([r, z])), 16, 16)

    x_in, z_in = keras.Input((16, 16, 3)), keras.Input((4,))
    pooled = keras.layers.AveragePooling2D(4)(x_in)                     # 4x4: a coarse layer
    mixed = keras.layers.Add()([pooled, keras.layers.Reshape((1, 1, 4))(z_in)[..., :3]])  # needs z
    flat = keras.layers.Dense(2)(keras.layers.Flatten()(x_in))
    x, r = tf.random.uniform((2, 16, 16, 3)), tf.random.uniform((2, 16, 16, 3))
    z = tf.random.uniform((2, 4))
    for out in (pooled, mixed, flat):
        m = feature_map(keras.Model([x_in, z_in], out), x, r, z=z)
        assert m.shape == (2, 16, 16)
    coarse = feature_map(keras.Model([x_in, z_in], pooled), x, r, z)
    want = np.abs(tf.nn.avg_pool2d(x, 4, 4, "VALID") - tf.nn.avg_pool2d(r, 4, 4, "VALID")).mean(-1)
    np.testing.assert_allclose(coarse[:, ::4, ::4].numpy().mean(), want.mean(), rtol=0.2)


@pytest.mark.slow
def test_export_style_graph():
    """localize inside a tf.function with a fixed input signature (as the SavedModel uses it)."""
    import tensorflow as tf

    from cbigan.scoring.localization import localize
    from cbigan.model.gan import build_model
    from cbigan.model.networks import feature_extractor

    cfg = Config(category="t", kind="texture", image_size=128, patch_size=64).resolved()
    model = build_model(cfg)
    feats = feature_extractor(model.critic)
    fn = tf.function(lambda x: localize(model.ema_encoder, model.ema_generator, feats, x, patch=64,
                                        lam=0.1, sigma=4.0, stride=32),
                     input_signature=[tf.TensorSpec([None, 128, 128, 3], tf.float32)])
    out = fn(tf.zeros((3, 128, 128, 3)))
    assert out["anomaly_map"].shape == (3, 128, 128) and out["l_r"].shape == (3, 4)


@pytest.mark.slow
def test_evaluate_writes_pixel_metrics_and_reuses_maps(tex, capsys):
    import evaluate
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.core.results import ImageResults
    from cbigan.core.runfolder import PIXEL_NPZ
    from cbigan.scoring.pixel_metrics import pixel_metrics

    run = tex["run"]
    ev = evaluate_run(run, [0.0, 0.1, 1.0], progress=False, model=tex["model"], stride=32, sigma=2.0)
    m = pd.read_csv(run / "metrics.csv").set_index("lambda")
    assert {"pixel_auroc", "aupro"} <= set(m.columns)
    px = ImageResults.load_maps(run / PIXEL_NPZ)
    assert px.map_r.shape == (len(tex["test"]), 128, 128) and (px.sigma, px.stride) == (2.0, 32)
    np.testing.assert_array_equal(px.masks, tex["test"].masks)
    for lam in (0.0, 0.1, 1.0):
        maps = px.maps(lam)
        assert m.loc[lam, "pixel_auroc"] == pytest.approx(
            roc_auc_score(px.masks.ravel(), maps.ravel()), abs=1e-6)
        assert m.loc[lam, "aupro"] == pytest.approx(pixel_metrics(maps, px.masks)["aupro"], abs=1e-6)
    s = json.loads((run / "evaluation.json").read_text())
    assert s["pixel_auroc"] == pytest.approx(m.loc[0.1, "pixel_auroc"])
    assert s["pixel"]["stride"] == 32 and s["pixel"]["n_images"] == len(tex["test"])
    assert s["pixel"]["n_excluded_no_mask"] == 0 and s["pixel"]["n_regions"] >= 4

    again = evaluate_run(run, [0.5], progress=False, stride=32, sigma=2.0)  # same maps: reused
    assert again.reused_parts and "pixel_auroc" in again.metrics.columns
    # the CLI: another sigma needs new maps (here from the stored weights); --no-pixel none at all
    assert evaluate.main([str(run), "--sigma", "0", "--stride", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pixel auROC" in out and "sigma 0" in out and "stored scores reused" not in out
    assert ImageResults.load_maps(run / PIXEL_NPZ).sigma == 0.0
    assert evaluate.main([str(run), "--no-pixel", "--quiet"]) == 0
    assert "pixel auROC" not in capsys.readouterr().out
    assert json.loads((run / "evaluation.json").read_text())["pixel_auroc"] is None
    assert evaluate.main([str(run), "--stride", "65", "--quiet"]) == 1
    assert "--stride must be between 1 and the patch size 64" in capsys.readouterr().err


@pytest.mark.slow
def test_defective_image_without_mask_is_left_out(obj, tmp_path):
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.scoring.localization import Localizer
    from cbigan.scoring.pixel_metrics import pixel_metrics

    data = tmp_path / "data"
    shutil.copytree(obj["cfg"].data_dir + "/synth_obj", data / "synth_obj")
    (data / "synth_obj/ground_truth/red_square/000_mask.png").unlink()
    run = tmp_path / "run"
    shutil.copytree(obj["run"], run)
    with pytest.warns(UserWarning, match="1 defective test image"):
        ev = evaluate_run(run, progress=False, model=obj["model"], data_dir=str(data), sigma=0)
    s = ev.summary
    assert s["pixel"]["n_excluded_no_mask"] == 1 and s["pixel"]["n_images"] == len(obj["test"]) - 1
    maps = Localizer(obj["model"], obj["cfg"], sigma=0).maps(obj["test"].images)
    keep = np.array([not p.endswith("red_square/000.png") for p in map(str, obj["test"].paths)])
    assert s["aupro"] == pytest.approx(pixel_metrics(maps[keep], obj["test"].masks[keep])["aupro"], abs=1e-6)
    # a category without ground truth: image metrics only, no warning
    (run / "pixel_maps.npz").unlink()
    shutil.rmtree(data / "synth_obj/ground_truth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate_run(run, progress=False, data_dir=str(data))
    assert "pixel_auroc" not in ev.metrics.columns and ev.summary["pixel"] is None
    assert not (run / "pixel_maps.npz").exists()


def test_default_sigma_is_the_same_everywhere():
    from cbigan.reporting import evaluation
    from cbigan.scoring import localization

    assert evaluation.MAP_SIGMA == localization.DEFAULT_SIGMA
