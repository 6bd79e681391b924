"""Tiles score only the tiles their image's region needs (issue 36, part 2): the same scores, and the same
maps and reconstruction inside the region, as the full canvas on fixed random weights."""

import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config


def _cfg(**kw) -> Config:
    base = dict(category="x", kind="tiles", image_size=256, patch_size=64, width=1, latent_dim=8,
                global_views=0.0, batch_size=4, image_score="map_max")
    return Config(**{**base, **kw}).resolved()


def _both(cfg, seed=0):
    from cbigan.serving.export import ServingGraph
    from cbigan.model.gan import build_model

    tf.keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    return ServingGraph(model, cfg, 0.0, region_only=True), ServingGraph(model, cfg, 0.0, region_only=False)


@pytest.mark.parametrize("kw", [{}, {"image_score": "paper"}, {"global_views": 0.5},
                                {"image_score": "map_topk", "extra": {"map_sigma": 2.0}}])
@pytest.mark.slow
@pytest.mark.parametrize("hw", [(70, 230), (250, 90), (40, 256)])
def test_region_only_serves_what_the_whole_canvas_serves(kw, hw):
    new, old = _both(_cfg(**kw))
    assert new.region_only and not old.region_only
    raw = np.random.default_rng(1).integers(0, 256, (2,) + hw + (3,)).astype(np.float32)
    a, b = new.python_fn()(raw), old.python_fn()(raw)
    assert a["anomaly_map"].shape == (2,) + hw
    for key in ("score", "anomaly_map", "reconstruction"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-4, atol=1e-4, err_msg=key)


def test_region_only_keeps_each_regions_maps_in_a_batch_of_different_regions():
    """Several regions in one batch (evaluation's case): the union's tiles; each image's map inside its
    own region, its score, and (with the paper's rule) the per-patch parts of the whole grid agree."""
    from cbigan.scoring.localization import localize
    from cbigan.core.imageops import to_model_range

    cfg = _cfg(image_score="fused")
    new, old = _both(cfg, seed=3)
    imgs = np.random.default_rng(4).integers(0, 256, (3, 256, 256, 3)).astype(np.uint8)
    regions = tf.constant([[60, 200], [120, 70], [30, 30]], tf.int32)
    x = to_model_range(imgs, cfg.normalize)
    kw = dict(patch=64, lam=cfg.score_lambda, sigma=4.0, stride=32, regions=regions)
    a = localize(new.encoder, new.generator, new.features, x, region_only=True, keep_grid=True, **kw)
    b = localize(new.encoder, new.generator, new.features, x, **kw)
    np.testing.assert_allclose(a["l_r"].numpy(), b["l_r"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(a["l_fd"].numpy(), b["l_fd"].numpy(), rtol=1e-5)
    for i, (h, w) in enumerate(regions.numpy()):
        for key in ("map_r", "map_fd", "anomaly_map"):
            np.testing.assert_allclose(a[key][i, :h, :w].numpy(), b[key][i, :h, :w].numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=key)
        np.testing.assert_allclose(a["reconstruction"][i, :h, :w].numpy(), b["reconstruction"][i, :h, :w].numpy(),
                                   atol=1e-5)


def test_region_only_scores_fewer_tiles():
    from cbigan.scoring.localization import needed_patches, patch_positions

    pos = patch_positions(1024, 64, 32)                        # 31 positions: 961 tiles
    idx = needed_patches(pos, 64, 1024, tf.constant([[400, 1000]]), 16, keep_grid=False).numpy()
    assert len(idx) == 13 * 31                                 # rows below 416, every column
    with_grid = needed_patches(pos, 64, 1024, tf.constant([[400, 1000]]), 16, keep_grid=True).numpy()
    assert len(with_grid) == 13 * 31 + 16 * 16 - 7 * 16        # plus the grid rows below


@pytest.mark.slow
def test_the_serve_benchmark_counts_only_the_tiles_a_region_scores():
    from cbigan.bench.serve import graph_flops
    from cbigan.model.gan import build_model

    cfg = _cfg()
    model = build_model(cfg)
    full, part = graph_flops(model, cfg), graph_flops(model, cfg, (60, 256))
    assert 0 < part < full


@pytest.mark.slow
def test_evaluation_maps_inside_the_regions_and_parts_are_the_whole_canvases():
    from cbigan.scoring.localization import Localizer
    from cbigan.model.gan import build_model

    cfg = _cfg(global_views=0.5)
    model = build_model(cfg)
    imgs = np.random.default_rng(5).integers(0, 256, (3, 256, 256, 3)).astype(np.uint8)
    regions = np.array([[60, 200], [256, 100], [30, 30]], np.int32)
    new = Localizer(model, cfg, sigma=4.0, stride=32)
    old = Localizer(model, cfg, sigma=4.0, stride=32)
    old.region_only = False
    a, b = new.run(imgs, regions=regions), old.run(imgs, regions=regions)
    assert new.region_only
    for key in ("l_r", "l_fd", "global_r", "global_fd"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-5, atol=1e-6, err_msg=key)
    for i, (h, w) in enumerate(regions):
        np.testing.assert_allclose(a.map_r[i, :h, :w], b.map_r[i, :h, :w], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.map_fd[i, :h, :w], b.map_fd[i, :h, :w], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.rule_scores(cfg), b.rule_scores(cfg), rtol=1e-4)
