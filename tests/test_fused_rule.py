"""The fused image-score rules (issue 34): every kind of evidence, standardized on held-out normal images."""

import json

import numpy as np
import pandas as pd
import pytest

from synthetic import make_category, make_untrained_run

from cbigan.core.anomaly_score import (
    EVIDENCE, evidence, fuse, fusion_at, fusion_statistics, map_scores, rule_scores)
from cbigan.scoring.metrics import auroc


def _gamma_maps(rng, n, scale=1.0):
    """Normal residual maps [n, 64, 64]: gamma noise, a little more or less of it per image."""
    return rng.gamma(2.0, 0.02, (n, 64, 64)) * rng.uniform(0.9, 1.1, (n, 1, 1)) * scale


def _parts(diff):
    """(l_r, l_fd, smoothed map) of residual maps: the sums as per-image parts (one patch)."""
    from scipy.ndimage import gaussian_filter

    sums = diff.reshape(len(diff), -1).sum(1, keepdims=True)
    return sums, sums, np.stack([gaussian_filter(d, 1.0) for d in diff])


def test_fused_rules_find_local_and_global_anomalies_where_each_single_rule_misses_one():
    """A 3x3 spot (local) and a residual 30% higher everywhere (global): the sum misses the spot, the
    map maximum partly misses the global change; both fused rules find both."""
    rng = np.random.default_rng(0)
    held = _parts(_gamma_maps(rng, 30))
    stats = [fusion_statistics(evidence(0.0, l_r=held[0], l_fd=held[1], maps=held[2]), 0.0)]
    good, local, glob = _gamma_maps(rng, 20), _gamma_maps(rng, 20), _gamma_maps(rng, 20, 1.3)
    for d in local:
        y, x = rng.integers(5, 55, 2)
        d[y:y + 3, x:x + 3] += 0.5
    l_r, l_fd, maps = _parts(np.concatenate([good, local, glob]))
    labels = np.r_[np.zeros(20), np.ones(40)]
    got = {r: auroc(labels, rule_scores(r, 0.0, l_r=l_r, l_fd=l_fd, maps=maps, fusion=stats))
           for r in ("paper", "map_max", "fused", "fused_max")}
    assert got["paper"] < 0.85 and got["map_max"] < 0.97, got
    for r in ("fused", "fused_max"):
        assert got[r] > max(got["paper"], got["map_max"]) and got[r] >= 0.99, got


def test_fuse_standardizes_each_kind_by_its_held_out_spread():
    held = {"paper": np.array([10.0, 12.0, 14.0]), "map_max": np.array([0.1, 0.2, 0.3]),
            "global_max": np.array([5.0, 5.0, 5.0])}  # does not vary: left out
    stats = fusion_statistics(held, 0.1)
    assert set(stats["mean"]) == {"paper", "map_max"} and stats["lambda"] == 0.1
    assert stats["mean"]["paper"] == pytest.approx(12.0) and stats["std"]["paper"] == pytest.approx(np.std([10, 12, 14]))
    ev = {"paper": np.array([12.0, 12.0 + 2 * stats["std"]["paper"]]),
          "map_max": np.array([0.2 + stats["std"]["map_max"], 0.2])}
    np.testing.assert_allclose(fuse(ev, stats, "mean"), [0.5, 1.0])
    np.testing.assert_allclose(fuse(ev, stats, "max"), [1.0, 2.0])
    assert fusion_statistics({"paper": np.array([1.0])}, 0.1) is None  # one held-out image: no spread
    assert fusion_at([stats], 0.1) is stats
    with pytest.raises(ValueError, match="calibrated at lambda 0.1, not 0.5"):
        fusion_at([stats], 0.5)


def test_fused_rules_without_statistics_score_as_the_map_maximum():
    rng = np.random.default_rng(1)
    l_r, l_fd, maps = _parts(_gamma_maps(rng, 5))
    np.testing.assert_allclose(rule_scores("fused", 0.1, l_r=l_r, l_fd=l_fd, maps=maps),
                               map_scores(maps, "map_max"))


@pytest.mark.slow
def test_fused_rules_in_the_graph_equal_numpy_with_global_views():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    n = 6
    l_r, l_fd = rng.gamma(2, 1, (n, 4)), rng.gamma(2, 1, (n, 4))
    maps, glob = rng.gamma(2, 0.1, (n, 32, 32)), rng.gamma(2, 0.1, (n, 8, 8))
    regions = np.array([[32, 32], [20, 32], [32, 12], [16, 16], [32, 32], [24, 30]])
    ev = evidence(0.1, l_r=l_r, l_fd=l_fd, maps=maps, regions=regions, margin=2, global_maps=glob)
    assert set(ev) == set(EVIDENCE)
    np.testing.assert_allclose(ev["global_mean"], glob.mean(axis=(1, 2)))
    stats = [fusion_statistics(ev, 0.1)]
    for rule in ("fused", "fused_max"):
        want = rule_scores(rule, 0.1, l_r=l_r, l_fd=l_fd, maps=maps, regions=regions, margin=2,
                           global_maps=glob, fusion=stats)
        got = rule_scores(rule, 0.1, l_r=tf.constant(l_r, tf.float32), l_fd=tf.constant(l_fd, tf.float32),
                          maps=tf.constant(maps, tf.float32), regions=tf.constant(regions, tf.int32), margin=2,
                          global_maps=tf.constant(glob, tf.float32), fusion=stats)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- in the pipeline
@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    make_category(root / "data", "synth_obj", kind="object", size=64, n_train=50)
    return make_untrained_run(root / "data", root / "runs", "synth_obj", image_size=64, image_score="fused")


@pytest.mark.slow
def test_threshold_evaluation_and_export_score_the_fused_rule_alike(fused_run):
    from dataclasses import replace

    from cbigan.data.pipeline import load_test_set, load_train_set
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.serving.export import ServingGraph
    from cbigan.scoring.localization import Localizer
    from cbigan.core.runfolder import read_config, write_threshold
    from cbigan.scoring.threshold import FUSION_LAMBDAS, calibrate_threshold

    cfg, model, run = fused_run["cfg"], fused_run["model"], fused_run["run"]
    train = load_train_set(cfg)
    info = calibrate_threshold(model, cfg, train.val_images, progress=False)
    assert sorted(f["lambda"] for f in info["fusion"]) == sorted(FUSION_LAMBDAS)
    assert set(info["rule_thresholds"]) == {"paper", "map_max", "map_topk", "fused", "fused_max"}
    assert info["rule_thresholds"]["fused"] == pytest.approx(info["threshold"])
    # label-free: each rule's separation of the 5 held-out images from their synthetic-defect copies
    assert info["n_val"] == 5 and set(info["synthetic_auroc"]) == set(info["rule_thresholds"])
    assert all(0 <= v[k] <= 1 for v in info["synthetic_auroc"].values() for k in ("local", "global"))
    assert calibrate_threshold(model, cfg, train.val_images[:4], progress=False)["synthetic_auroc"] is None
    # the threshold is the 99th percentile of the held-out images' fused scores, z-scored on themselves
    val = Localizer(model, cfg).run(train.val_images)
    ev = val.evidence(cfg.score_lambda)
    z = np.mean([(ev[k] - ev[k].mean()) / ev[k].std() for k in ("paper", "map_max")], axis=0)
    assert info["threshold"] == pytest.approx(np.percentile(z, 99), rel=1e-5)
    write_threshold(run, info)
    cfg = read_config(run)
    ev = evaluate_run(run, progress=False, model=model)
    assert ev.summary["image_score"] == "fused"
    test = load_test_set(cfg)
    served = ServingGraph(model, cfg, info["threshold"]).python_fn()(test.images.astype(np.float32))
    scores = pd.read_csv(run / "scores.csv")["score"].to_numpy()
    np.testing.assert_allclose(served["score"].numpy(), scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(served["is_anomaly"].numpy(), scores > info["threshold"])
    assert ev.summary["at_threshold"]["false_alarm_rate"] == pytest.approx(
        np.mean(scores[ev.scores["label"] == 0] > info["threshold"]))
    # a run whose fused statistics were made elsewhere (another model) scores differently
    other = replace(val, fusion=[{**f, "mean": {k: v + 1 for k, v in f["mean"].items()}} for f in info["fusion"]])
    assert not np.allclose(other.image_scores(cfg.score_lambda, "fused"), val.image_scores(cfg.score_lambda, "fused"))


@pytest.mark.slow
def test_a_run_calibrated_before_the_fused_rules_is_recalibrated_on_evaluation(tmp_path):
    """An older threshold record (no fusion statistics): evaluating a fused rule calibrates it again on
    the same held-out images; the run's own threshold stays, every rule gets its verdict columns."""
    from cbigan.reporting.evaluation import evaluate_run, format_report
    from cbigan.core.runfolder import write_threshold
    from cbigan.scoring.threshold import calibrate_threshold

    make_category(tmp_path / "data", "synth_obj", kind="object", size=64, n_train=20)
    r = make_untrained_run(tmp_path / "data", tmp_path / "runs", "synth_obj", image_size=64,
                           image_score="map_max")
    from cbigan.data.pipeline import load_train_set

    info = calibrate_threshold(r["model"], r["cfg"], load_train_set(r["cfg"]).val_images, progress=False)
    old = {k: v for k, v in info.items() if k not in ("fusion", "rule_thresholds")}
    write_threshold(r["run"], old)
    # a default evaluation never rewrites the record; it leaves out the rules it cannot score
    ev = evaluate_run(r["run"], progress=False, model=r["model"])
    assert json.loads((r["run"] / "threshold.json").read_text()) == old
    assert "auroc[fused]" not in ev.metrics.columns and "auroc[paper]" in ev.metrics.columns
    # a read-only run folder: the record is calibrated for this evaluation only, which still reports the
    # fused rule (the files go to --out); the folder is left as it was
    import cbigan.core.runfolder as runfolder

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runfolder, "write_threshold", read_only)
        ev = evaluate_run(r["run"], progress=False, model=r["model"], rules=["fused"], out_dir=tmp_path / "out")
    assert json.loads((r["run"] / "threshold.json").read_text()) == old
    assert np.isfinite(ev.metrics[ev.metrics["chosen"]].iloc[0]["auroc[fused]"])
    assert ev.summary["threshold"]["has_fusion"]
    assert ev.summary["threshold"]["threshold"] == pytest.approx(old["threshold"])
    ev = evaluate_run(r["run"], progress=False, model=r["model"], rules=["paper", "map_max", "fused"])
    stored = json.loads((r["run"] / "threshold.json").read_text())
    assert stored["fusion"] and stored["threshold"] == pytest.approx(old["threshold"])
    m = ev.metrics[ev.metrics["chosen"]].iloc[0]
    for col in ("auroc[fused]", "thr_recall[fused]", "thr_false_alarm_rate[fused]", "thr_false_alarm_rate"):
        assert np.isfinite(m[col]), col
    assert set(ev.summary["at_threshold_by_rule"]) == {"paper", "fused"}
    assert "false alarms" in format_report(ev)
