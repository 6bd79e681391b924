"""Image-score rules from the anomaly map and per-image input normalization (issue 15, parts 2 and 3)."""

import json

import numpy as np
import pandas as pd
import pytest

from synthetic import learning_config, make_category, make_learning_category, make_untrained_run

from cbigan.core.anomaly_score import IMAGE_SCORE_RULES, image_scores, map_scores, rule_scores, topk_count
from cbigan.core.config import Config, apply_preset
from cbigan.core.results import ImageResults


# ---------------------------------------------------------------------------------- the rules
def test_map_rules_against_a_numpy_reference():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 20, 30))
    maps[1, 3, 4] = 9.0  # one hot pixel
    flat = maps.reshape(4, -1)
    np.testing.assert_allclose(map_scores(maps, "map_max"), flat.max(1))
    k = int(np.ceil(0.05 * 600))
    np.testing.assert_allclose(map_scores(maps, "map_topk", 0.05), np.sort(flat, 1)[:, -k:].mean(1))
    assert topk_count(600, 0.05) == 30 and topk_count(600, 1e-9) == 1 and topk_count(10, 1.0) == 10
    assert map_scores(maps, "map_max")[1] == 9.0
    with pytest.raises(ValueError, match="not a map rule"):
        map_scores(maps, "paper")


def test_tensorflow_flavour_equals_numpy():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    for rule in ("map_max", "map_topk"):
        got = map_scores(tf.constant(maps), rule, 0.02).numpy()
        np.testing.assert_allclose(got, map_scores(maps, rule, 0.02), rtol=1e-6)
    l_r, l_fd = rng.random((3, 4)), rng.random((3, 4))
    got = rule_scores("paper", 0.3, l_r=tf.constant(l_r, tf.float32), l_fd=tf.constant(l_fd, tf.float32)).numpy()
    np.testing.assert_allclose(got, image_scores(l_r, l_fd, 0.3), rtol=1e-6)


def _reference_with_regions(maps, rule, topk, regions, margin):
    """Slow reference: a boolean mask of the scored pixels built pixel by pixel."""
    out = []
    for m, (h, w) in zip(maps, regions):
        e = min(margin, h // 4, w // 4)
        mask = np.zeros(m.shape, bool)
        for y in range(m.shape[0]):
            for x in range(m.shape[1]):
                mask[y, x] = e <= y < h - e and e <= x < w - e
        v = np.sort(m[mask])[::-1]
        out.append(v[0] if rule == "map_max" else v[:int(np.ceil(topk * v.size))].mean())
    return np.array(out)


def test_map_rules_score_each_images_region_less_its_margin():
    """Tiles: only the image's own part of the canvas counts, less a border margin; a hot border or a
    hot mirrored canvas outside it changes nothing (issue 15: border responses dominated map_max)."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    maps = rng.random((4, 24, 32)).astype(np.float32)
    regions = np.array([[24, 32], [10, 30], [24, 12], [7, 9]])
    maps[1, 15:, :] = 50.0                    # the mirrored canvas below image 1's region
    maps[2, :, 0] = 50.0                      # image 2's left edge: inside its region, inside the margin
    maps[0, 12, 16] = 9.0                     # a defect well inside image 0
    for margin in (0, 2, 5):
        for rule, topk in (("map_max", 0.01), ("map_topk", 0.1)):
            want = _reference_with_regions(maps, rule, topk, regions, margin)
            np.testing.assert_allclose(map_scores(maps, rule, topk, regions, margin), want, rtol=1e-6)
            got = map_scores(tf.constant(maps), rule, topk, tf.constant(regions, tf.int32), margin).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert map_scores(maps, "map_max", regions=regions)[1] < 50 and map_scores(maps, "map_max")[1] == 50
    assert map_scores(maps, "map_max", regions=regions)[2] == 50                  # no margin: the edge counts
    assert map_scores(maps, "map_max", regions=regions, margin=2)[2] < 50         # a margin: it does not
    assert map_scores(maps, "map_max", regions=regions, margin=5)[0] == np.float32(9.0)
    res = ImageResults(np.zeros((4, 1)), np.zeros((4, 1)), map_r=maps, map_fd=maps, regions=regions)
    np.testing.assert_allclose(res.image_scores(0.1, "map_max", margin=2),
                               _reference_with_regions(maps, "map_max", 0, regions, 2), rtol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        map_scores(maps, "map_max", margin=-1)


def test_selection_defaults_by_kind():
    assert Config(category="bottle").resolved().select == "synthetic"
    assert Config(category="strips", kind="tiles").resolved().select == "final"
    assert Config(category="strips", kind="tiles", select="synthetic").resolved().select == "synthetic"


def test_fast_preset_keeps_the_last_weights_unless_told_otherwise():
    from cbigan.cli.train import parse_args

    assert apply_preset(Config(category="bottle"), "fast").resolved().select == "final"
    assert apply_preset(Config(category="leather"), "fast").resolved().select == "final"
    assert Config(category="bottle", preset="paper").resolved().select == "synthetic"
    cfg, _ = parse_args(["--category", "bottle", "--preset", "fast", "--select", "synthetic"])
    assert cfg.select == "synthetic"


def test_score_margin_defaults_by_kind():
    assert Config(category="bottle").resolved().score_margin == 0
    assert Config(category="leather").resolved().score_margin == 0
    tiles = Config(category="strips", kind="tiles", patch_size=64).resolved()
    assert tiles.score_margin == 32
    assert Config(category="strips", kind="tiles", score_margin=0).resolved().score_margin == 0
    with pytest.raises(ValueError, match="score_margin"):
        Config(category="bottle", score_margin=-3).resolved()


def test_rule_scores_and_results_record():
    rng = np.random.default_rng(2)
    l_r, l_fd = rng.random((5, 4)), rng.random((5, 4))
    map_r, map_fd = rng.random((5, 8, 8)).astype(np.float32), rng.random((5, 8, 8)).astype(np.float32)
    res = ImageResults(l_r, l_fd, map_r=map_r, map_fd=map_fd)
    np.testing.assert_allclose(res.image_scores(0.1), (0.9 * l_r + 0.1 * l_fd).max(1))
    np.testing.assert_allclose(res.image_scores(0.1, "map_max"), (0.9 * map_r + 0.1 * map_fd).reshape(5, -1).max(1),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="no anomaly maps"):
        ImageResults(l_r, l_fd).image_scores(0.1, "map_max")
    with pytest.raises(ValueError, match="must be one of"):
        rule_scores("mean", 0.1, l_r=l_r, l_fd=l_fd)
    with pytest.raises(ValueError, match="image_score must be one of"):
        Config(image_score="nope").resolved()
    assert Config().resolved().image_score == "paper" and Config().resolved().normalize == "none"


def test_normalization_default_is_the_kinds():
    """The paper's inputs for objects and textures; tiles standardize every image unless told otherwise."""
    from cbigan.cli.train import parse_args

    assert Config(category="bottle").resolved().normalize == "none"
    assert Config(category="leather").resolved().normalize == "none"
    assert Config(category="x", kind="tiles").resolved().normalize == "per_image"
    assert Config(category="x", kind="tiles", normalize="none").resolved().normalize == "none"
    assert parse_args(["--kind", "tiles", "--preset", "fast"])[0].normalize == "per_image"
    assert parse_args(["--kind", "tiles", "--normalize", "none"])[0].normalize == "none"
    assert parse_args(["--category", "bottle", "--normalize", "per_image"])[0].normalize == "per_image"


def test_fast_preset_standardizes_every_kind_and_older_fast_runs_keep_their_inputs():
    """--preset fast standardizes objects and textures too (lighting drift; results/small_defects,
    sixth study); --preset paper keeps the paper's inputs; a flag wins; a run trained by the fast preset
    before it standardized (its config.json without ``normalize``) is scored with the paper's inputs."""
    from cbigan.cli.train import parse_args
    from cbigan.core.config import apply_preset

    for category in ("bottle", "leather", "my_part"):
        assert parse_args(["--category", category, "--preset", "fast"])[0].normalize == "per_image"
        assert parse_args(["--category", category])[0].normalize == "none"
        assert parse_args(["--category", category, "--preset", "fast", "--normalize", "none"])[0].normalize == "none"
    assert apply_preset(Config(category="bottle"), "fast").resolved().normalize == "per_image"
    older = {k: v for k, v in Config(category="bottle", preset="fast").__dict__.items() if k != "normalize"}
    assert Config(**older).resolved().normalize == "none"


def test_small_defect_is_found_by_the_map_rule_not_by_the_sum():
    """A 3x3 defect among 64x64 pixels of normal noise: the summed score drowns it, the map maximum not."""
    rng = np.random.default_rng(3)
    n = 40
    diff = rng.gamma(2.0, 0.02, (n, 64, 64))       # normal reconstruction error everywhere,
    diff *= rng.uniform(0.7, 1.3, (n, 1, 1))        # more or less of it from image to image
    labels = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(5, 55, 2)
        diff[i, y:y + 3, x:x + 3] += 1.0            # a small, strong defect
    from scipy.ndimage import gaussian_filter

    from cbigan.scoring.metrics import auroc

    smooth = np.stack([gaussian_filter(d, 1.0) for d in diff])
    paper = auroc(labels, diff.reshape(n, -1).sum(1))
    assert auroc(labels, map_scores(smooth, "map_max")) == 1.0
    assert auroc(labels, map_scores(smooth, "map_topk", 0.005)) == 1.0
    assert paper < 0.9, paper


# ---------------------------------------------------------------------------------- in the pipeline
@pytest.fixture(scope="module")
def map_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    make_category(root / "data", "synth_obj", kind="object", size=64)
    return make_untrained_run(root / "data", root / "runs", "synth_obj", image_size=64,
                              image_score="map_topk", score_topk=0.02)


@pytest.mark.slow
def test_evaluation_threshold_and_export_use_the_runs_rule(map_run):
    from cbigan.data.pipeline import load_test_set, load_train_set
    from cbigan.reporting.evaluation import evaluate_run, format_report
    from cbigan.serving.export import ServingGraph
    from cbigan.scoring.localization import Localizer
    from cbigan.scoring.threshold import calibrate_threshold

    cfg, model, run = map_run["cfg"], map_run["model"], map_run["run"]
    ev = evaluate_run(run, progress=False, model=model)
    test = load_test_set(cfg)
    maps = Localizer(model, cfg).maps(test.images)  # the run's sigma (default 4) and stride
    expect = map_scores(maps, "map_topk", 0.02)
    df = pd.read_csv(run / "scores.csv")
    np.testing.assert_allclose(df["score"], expect, rtol=1e-5)
    m = pd.read_csv(run / "metrics.csv")
    assert {"auroc[paper]", "auroc[map_max]", "max_balanced_accuracy[paper]"} <= set(m.columns)
    assert "auroc[map_topk]" not in m.columns  # the run's own rule has the main columns
    s = json.loads((run / "evaluation.json").read_text())
    assert s["image_score"] == "map_topk" and s["image_score_rules"][0] == "map_topk"
    assert "other image-score rules" in format_report(ev)
    # the threshold is a percentile of the same rule's scores of the held-out images
    val = load_train_set(cfg).val_images
    info = calibrate_threshold(model, cfg, val, progress=False)
    val_scores = map_scores(Localizer(model, cfg).maps(val), "map_topk", 0.02)
    assert info["threshold"] == pytest.approx(np.percentile(val_scores, 99), rel=1e-5)
    assert info["image_score"] == "map_topk" and "map_topk" in info["rule"]
    # the serving graph scores alike
    served = ServingGraph(model, cfg, info["threshold"]).python_fn()(test.images.astype(np.float32))
    np.testing.assert_allclose(served["score"].numpy(), expect, rtol=1e-4)


@pytest.mark.slow
def test_rules_on_request_without_ground_truth(tmp_path):
    """A category without masks: map rules asked for compute maps (no pixel metrics, no mask in the file)."""
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.core.runfolder import PIXEL_NPZ

    make_category(tmp_path / "data", "nomask", kind="object", size=64, masks=False)
    r = make_untrained_run(tmp_path / "data", tmp_path / "runs", "nomask", image_size=64)
    ev = evaluate_run(r["run"], progress=False, model=r["model"])
    assert "auroc[map_max]" not in ev.metrics.columns and not (r["run"] / PIXEL_NPZ).exists()
    ev = evaluate_run(r["run"], progress=False, model=r["model"], rules=list(IMAGE_SCORE_RULES))
    assert "auroc[map_max]" in ev.metrics.columns and "pixel_auroc" not in ev.metrics.columns
    assert ImageResults.load_maps(r["run"] / PIXEL_NPZ).masks is None


# ---------------------------------------------------------------------------------- lighting drift
def test_per_image_normalization_removes_brightness_and_contrast():
    from cbigan.core.imageops import to_model_range

    rng = np.random.default_rng(4)
    img = rng.integers(30, 220, (2, 32, 32, 3)).astype(np.float32)
    darker = np.round(img * 0.9)
    brighter_contrast = np.clip(np.round(img * 1.1 + 8), 0, 255)
    base = to_model_range(img, "per_image").numpy()
    for other in (darker, brighter_contrast):
        np.testing.assert_allclose(to_model_range(other, "per_image").numpy(), base, atol=0.02)
        assert np.abs(to_model_range(other).numpy() - to_model_range(img).numpy()).max() > 0.05
    with pytest.raises(ValueError, match="normalize"):
        to_model_range(img, "global")


@pytest.mark.slow
def test_darker_normal_images_do_not_cross_the_threshold(tmp_path):
    """Trained with --normalize per_image: normal test images 10% darker keep their verdict, defects are found."""
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.localization import ImageScorer
    from cbigan.scoring.metrics import auroc
    from cbigan.model.gan import load_trained
    from cbigan.core.runfolder import read_threshold
    from cbigan.training.run import train

    make_learning_category(tmp_path / "data", "drift", n_train=40)
    cfg = learning_config(tmp_path / "data", tmp_path, "drift", val_split=0.2, normalize="per_image",
                          select="final")
    run = train(cfg, verbose=0, export=False)
    cfg, model = load_trained(run)
    thr = read_threshold(run)["threshold"]
    test = load_test_set(cfg)
    scorer = ImageScorer(model, cfg)
    scores = scorer(test.images)
    good = test.labels == 0
    darker = np.round(test.images[good].astype(np.float32) * 0.9).astype(np.uint8)
    dark_scores = scorer(darker)
    np.testing.assert_array_equal(dark_scores > thr, scores[good] > thr)   # no verdict changed by darkening
    np.testing.assert_allclose(dark_scores, scores[good], rtol=0.03)
    assert auroc(test.labels, scores) >= 0.9
    assert auroc(np.r_[np.zeros(good.sum()), np.ones((~good).sum())],
                 np.r_[dark_scores, scores[~good]]) >= 0.9                  # defects still above darker normals
