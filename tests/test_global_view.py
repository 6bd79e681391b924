"""Tiles with a global view (``--global-views``): training batches, the map and the export."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config


def _tiles_cfg(**kw) -> Config:
    base = dict(category="x", kind="tiles", image_size=128, patch_size=64, width=1, latent_dim=8,
                global_views=0.5, batch_size=4)
    return Config(**{**base, **kw}).resolved()


def test_region_views_resize_each_images_own_region():
    from cbigan.core.imageops import region_views

    imgs = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    regions = np.array([[100, 60], [128, 128]], np.int32)
    views = region_views(imgs, regions, 32).numpy()
    assert views.shape == (2, 32, 32, 3) and views.dtype == np.float32
    for v, im, (h, w) in zip(views, imgs, regions):
        ref = tf.image.resize(im[:h, :w].astype(np.float32), (32, 32), method="bilinear", antialias=True)
        np.testing.assert_allclose(v, ref.numpy(), atol=1e-4)


def test_a_share_of_each_training_batch_is_global_views():
    from cbigan.core.imageops import image_stats, region_views, to_model_range
    from cbigan.core.kinds import kind_of

    cfg = _tiles_cfg()
    imgs = np.random.default_rng(1).integers(0, 256, (4, 128, 128, 3)).astype(np.uint8)
    regions = tf.constant([[90, 70], [128, 100], [64, 128], [128, 128]], tf.int32)
    x = kind_of(cfg).augment(tf.constant(imgs), cfg, tf.constant([3, 4], tf.int64), regions=regions).numpy()
    assert x.shape == (4, 64, 64, 3)
    stats = image_stats(imgs)  # the whole canvas's statistics, as at scoring time
    want = to_model_range(region_views(imgs[:2], regions[:2], 64), cfg.normalize,
                          (stats[0][:2], stats[1][:2])).numpy()
    np.testing.assert_allclose(x[:2], want, atol=1e-4)              # round(0.5 * 4) = 2 global views
    cfg0 = cfg.__class__(**{**cfg.__dict__, "global_views": 0.0})
    crops = kind_of(cfg0).augment(tf.constant(imgs), cfg0, tf.constant([3, 4], tf.int64), regions=regions).numpy()
    np.testing.assert_allclose(x[2:], crops[2:], atol=1e-5)          # the rest: the usual tile crops
    assert not np.allclose(x[:2], crops[:2], atol=1e-3)


@pytest.mark.parametrize("bad, message", [(dict(global_views=1.0), "global_views must be in"),
                                          (dict(global_views=-0.1), "global_views must be in"),
                                          (dict(kind="texture", image_size=128), "for --kind tiles"),
                                          (dict(image_score="paper"), "use --image-score map_max")])
def test_global_views_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        _tiles_cfg(**bad)


def test_region_canvas_puts_each_map_back_over_its_region():
    from cbigan.core.imageops import region_canvas

    maps = np.random.default_rng(5).random((3, 16, 16)).astype(np.float32)
    regions = np.array([[100, 60], [128, 128], [7, 128]], np.int32)
    got = region_canvas(maps, regions, 128).numpy()
    assert got.shape == (3, 128, 128) and got.dtype == np.float32
    for g, m, (h, w) in zip(got, maps, regions):
        ref = tf.image.resize(m[..., None], (h, w), method="bilinear")[..., 0].numpy()
        np.testing.assert_allclose(g[:h, :w], ref, atol=1e-6)
        assert not g[h:].any() and not g[:, w:].any()                # nothing outside the image


def test_anomaly_map_adds_the_weighted_global_view_in_numpy_and_in_the_graph():
    from cbigan.core.anomaly_score import anomaly_map
    from cbigan.core.imageops import region_canvas

    rng = np.random.default_rng(6)
    tiles, glob = rng.random((2, 64, 64)).astype(np.float32), rng.random((2, 8, 8)).astype(np.float32)
    regions = np.array([[50, 64], [64, 30]], np.int32)
    want = tiles + 0.3 * region_canvas(glob, regions, 64).numpy()
    got = anomaly_map(tiles, glob, regions, 0.3)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(anomaly_map(tf.constant(tiles), tf.constant(glob), tf.constant(regions), 0.3).numpy(),
                               want, rtol=1e-6)
    assert anomaly_map(tiles, None, regions, 0.3) is tiles           # no global view: the tiles' map
    whole = anomaly_map(tiles, glob, None, 1.0)                       # no regions: the whole map
    np.testing.assert_allclose(whole, tiles + region_canvas(glob, [[64, 64]] * 2, 64).numpy(), rtol=1e-6)


@pytest.mark.slow
def test_the_global_views_map_adds_to_the_image_score_and_to_the_map():
    """Per image: the global view = its region resized to one tile, mapped as a tile and smoothed there
    (against a per-image reference); the paper's parts stay the tiles'; the map rule's score = the tiles'
    + global_weight x the same rule over the global view's map; the anomaly map = the tiles' map +
    global_weight x the global view's map resized over the image's region."""
    from scipy.ndimage import gaussian_filter

    from cbigan.core.anomaly_score import map_scores
    from cbigan.core.imageops import to_model_range
    from cbigan.scoring.localization import Localizer
    from cbigan.model.gan import build_model
    from cbigan.model.networks import feature_extractor
    from cbigan.scoring.parts import score_patches

    cfg = _tiles_cfg(extra={"global_weight": 0.7})
    model = build_model(cfg)
    imgs = np.random.default_rng(2).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    regions = np.array([[100, 60], [128, 128]], np.int32)
    with_view = Localizer(model, cfg, sigma=2.0, stride=32).run(imgs, regions=regions)
    plain_cfg = cfg.__class__(**{**cfg.__dict__, "global_views": 0.0})
    plain = Localizer(model, plain_cfg, sigma=2.0, stride=32).run(imgs, regions=regions)
    np.testing.assert_array_equal(with_view.l_r, plain.l_r)
    np.testing.assert_allclose(with_view.map_r, plain.map_r, rtol=1e-6, atol=1e-7)
    assert plain.global_r is None and with_view.global_r.shape == (2, 64, 64)
    feats = feature_extractor(model.critic, cfg.feature_layer)
    x = to_model_range(imgs, cfg.normalize).numpy()
    for i, (h, w) in enumerate(regions):
        view = tf.image.resize(x[i:i + 1, :h, :w], (64, 64), method="bilinear", antialias=True)
        d = score_patches(model.ema_encoder, model.ema_generator, feats, view)["diff"].numpy()[0]
        d = gaussian_filter(d.astype(np.float64), 2.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(with_view.global_r[i], d, rtol=1e-4, atol=1e-5)
    lam = cfg.score_lambda
    for rule in ("map_max", "map_topk"):
        tiles = map_scores(plain.maps(lam), rule, regions=regions, margin=8)
        glob = map_scores(with_view.global_maps(lam), rule)
        got = with_view.__class__(**{**with_view.__dict__, "regions": regions}).image_scores(lam, rule, margin=8)
        np.testing.assert_allclose(got, tiles + 0.7 * glob, rtol=1e-6)
    assert with_view.image_scores(lam, "paper").tolist() == plain.image_scores(lam, "paper").tolist()
    np.testing.assert_allclose(with_view.tile_maps(lam), plain.maps(lam), rtol=1e-6, atol=1e-7)
    shown = with_view.maps(lam)
    for i, (h, w) in enumerate(regions):
        up = tf.image.resize(with_view.global_maps(lam)[i][..., None], (h, w), method="bilinear")[..., 0].numpy()
        np.testing.assert_allclose(shown[i, :h, :w], plain.maps(lam)[i, :h, :w] + 0.7 * up, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(shown[i, h:], plain.maps(lam)[i, h:], rtol=1e-6, atol=1e-7)


def test_the_weight_evens_out_the_views_spread_on_held_out_images():
    from cbigan.core.results import ImageResults
    from cbigan.scoring.threshold import view_weight

    rng = np.random.default_rng(4)
    cfg = _tiles_cfg(score_margin=0)
    n = 6
    maps = rng.random((n, 8, 8)).astype(np.float32)
    glob = (3.0 * rng.random((n, 4, 4))).astype(np.float32)
    res = ImageResults(np.zeros((n, 1)), np.zeros((n, 1)), map_r=maps, map_fd=maps, global_r=glob, global_fd=glob)
    tiles, views = maps.reshape(n, -1).max(1), glob.reshape(n, -1).max(1)
    assert view_weight(res, cfg) == pytest.approx(tiles.std() / views.std(), rel=1e-6)
    flat = ImageResults(np.zeros((n, 1)), np.zeros((n, 1)), map_r=maps, map_fd=maps,
                        global_r=np.ones_like(glob), global_fd=np.ones_like(glob))
    assert view_weight(flat, cfg) == 1.0                             # a view that does not vary


@pytest.mark.slow
def test_export_scores_equal_evaluation_with_a_global_view(tmp_path):
    """A non-square input: the SavedModel's score and map (at the input's size) equal evaluate.py's."""
    from cbigan.data.pipeline import load_image
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.serving.export import find_saved_model
    from cbigan.training.run import train
    from test_tiles import make_strips

    make_strips(tmp_path / "data", n_train=12, n_good=2, n_defect=2)
    cfg = Config(category="strips", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"),
                 run_name="g", kind="tiles", image_size=576, patch_size=64, image_score="map_max",
                 val_split=0.2, steps=6, batch_size=8, d_iter=1, width=1, latent_dim=8, ema_every=1,
                 log_every=3, eval_every=6, preview_every=6, seed=3, select="final", global_views=0.25)
    run = train(cfg, verbose=0, export_dir=str(tmp_path / "export"))
    from cbigan.core.runfolder import read_config, read_threshold

    weight = read_threshold(run)["global_weight"]                    # calibrated on the held-out images
    assert weight > 0 and weight != 1.0
    from cbigan.core.anomaly_score import global_weight

    assert global_weight(read_config(run)) == weight                 # merged into config.json with it
    ev = evaluate_run(run, progress=False)
    again = evaluate_run(run, progress=False)                        # stored maps, with the run's weight
    assert again.reused_parts and again.scores["score"].tolist() == ev.scores["score"].tolist()
    loaded = tf.saved_model.load(str(find_saved_model(tmp_path / "export" / "strips")))
    sig = loaded.signatures["serving_default"]
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.localization import Localizer, map_settings
    from cbigan.model.gan import load_trained

    cfg, model = load_trained(run)
    sigma, stride = map_settings(cfg)
    test = load_test_set(cfg)
    shown = Localizer(model, cfg, sigma=sigma, stride=stride).run(test.images, regions=test.regions).maps(cfg.score_lambda)
    maps = {Path(q).parts[-2:]: m for q, m in zip(test.paths, shown)}
    for path, score in zip(ev.scores["path"], ev.scores["score"]):
        out = sig(images=tf.constant(load_image(path)[None].astype(np.float32)))
        assert out["anomaly_map"].shape == (1, 200, 520)
        assert float(out["score"][0]) == pytest.approx(score, rel=1e-4)
        np.testing.assert_allclose(out["anomaly_map"][0].numpy(), maps[Path(path).parts[-2:]][:200, :520], rtol=1e-4, atol=1e-5)


def test_a_run_from_before_the_field_loads_and_resumes_without_global_views(tmp_path):
    """config.json written before global views existed: --preset fast tiles then trained without them, so
    loading keeps 0 and resuming it with today's fast preset (0.5) is refused, not silently changed."""
    import dataclasses
    import json

    from cbigan.core.errors import DataError
    from cbigan.core.runfolder import check_resumable

    old = dataclasses.asdict(Config(category="x", kind="tiles", preset="fast", global_views=0.0).resolved())
    old.pop("global_views")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.from_json(tmp_path / "config.json").global_views == 0.0
    now = Config(category="x", kind="tiles", preset="fast").resolved()
    assert now.global_views == 0.5
    with pytest.raises(DataError, match=r"global_views 0\.0 there, 0\.5 now"):
        check_resumable(tmp_path, now)
    check_resumable(tmp_path, dataclasses.replace(now, global_views=0.0))


def test_stored_maps_take_the_runs_weight(tmp_path):
    """pixel_maps.npz holds the parts, not the weight: loading with the run's weight gives its map."""
    from cbigan.core.anomaly_score import anomaly_map
    from cbigan.core.results import ImageResults

    rng = np.random.default_rng(7)
    maps, glob = rng.random((2, 32, 32)).astype(np.float32), rng.random((2, 8, 8)).astype(np.float32)
    regions = np.array([[32, 20], [16, 32]], np.int32)
    res = ImageResults(np.zeros((2, 1)), np.zeros((2, 1)), paths=["a.png", "b.png"], map_r=maps, map_fd=maps,
                       sigma=4.0, stride=16, regions=regions, global_r=glob, global_fd=glob)
    res.save_maps(tmp_path / "pixel_maps.npz")
    back = ImageResults.load_maps(tmp_path / "pixel_maps.npz", 0.4)
    np.testing.assert_allclose(back.maps(0.1), anomaly_map(maps, glob, regions, 0.4), rtol=1e-6)
    assert not np.allclose(back.maps(0.1), ImageResults.load_maps(tmp_path / "pixel_maps.npz").maps(0.1))

