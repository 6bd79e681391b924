"""Threshold calibration on held-out train/good images (no test labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cbigan.core.runfolder import write_config


def _cfg(root, **kw):
    from cbigan.core.config import Config

    base = dict(category="synth_obj", data_dir=str(root), image_size=64, patch_size=64, run_name="r")
    base.update(kw)
    return Config(**base).resolved()


@pytest.fixture(scope="module")
def model_and_cfg(synthetic_root):
    from cbigan.model.gan import build_model

    cfg = _cfg(synthetic_root)
    return build_model(cfg), cfg


def test_split_is_disjoint_and_reproducible(synthetic_root):
    from cbigan.data.pipeline import category_dir, list_images, load_image, load_train_set, resize_uint8

    cfg = _cfg(synthetic_root)
    a, b = load_train_set(cfg), load_train_set(cfg)
    all_paths = list_images(category_dir(cfg.data_dir, cfg.category) / "train" / "good")
    assert a.val_paths == b.val_paths and a.paths == b.paths            # fixed by the seed
    assert len(a.val_paths) == round(0.1 * len(all_paths)) == 2         # 10% by default
    assert not set(a.val_paths) & set(a.paths)                          # never trained on
    assert sorted(a.val_paths + a.paths) == sorted(all_paths)
    assert len(a.images) == len(a.paths) and np.array_equal(a.val_images, b.val_images)
    # the held-out arrays are exactly the held-out files, resized like everything else
    for img, p in zip(a.val_images, a.val_paths):
        assert np.array_equal(img, resize_uint8(load_image(p)[None], cfg.image_size)[0].numpy())
    others = [load_train_set(_cfg(synthetic_root, seed=s)).val_paths for s in (1, 2, 3)]
    assert any(o != a.val_paths for o in others)                        # the seed matters


@pytest.mark.slow
def test_calibrate_threshold(synthetic_root, model_and_cfg):
    from cbigan.data.pipeline import load_train_set
    from cbigan.scoring.parts import Scorer
    from cbigan.scoring.threshold import calibrate_threshold

    model, cfg = model_and_cfg
    val = load_train_set(cfg).val_images
    info = calibrate_threshold(model, cfg, val)
    scores = Scorer(model, cfg).score(val).image_scores(cfg.score_lambda)
    assert info["threshold"] == pytest.approx(np.percentile(scores, 99.0))
    assert info["percentile"] == 99.0 and info["score_lambda"] == cfg.score_lambda and info["n_val"] == 2
    assert "99th percentile" in info["rule"] and "2 held-out" in info["rule"]
    assert info["val_score_min"] <= info["threshold"] <= info["val_score_max"]
    assert calibrate_threshold(model, cfg, val)["threshold"] == info["threshold"]   # reproducible
    import dataclasses

    median = calibrate_threshold(model, dataclasses.replace(cfg, threshold_percentile=50.0), val)
    assert median["threshold"] == pytest.approx(np.median(scores)) and median["percentile"] == 50.0
    json.dumps(info)  # JSON-serialisable as is


def test_val_split_zero_means_no_threshold(synthetic_root, model_and_cfg):
    from cbigan.data.pipeline import load_train_set
    from cbigan.scoring.threshold import NO_THRESHOLD_RULE, calibrate_threshold

    model, _ = model_and_cfg
    cfg = _cfg(synthetic_root, val_split=0.0)
    ts = load_train_set(cfg)
    assert len(ts.val_images) == 0 and len(ts.images) == 24             # trains on every image
    info = calibrate_threshold(model, cfg, ts.val_images)
    assert info["threshold"] is None and info["n_val"] == 0
    assert info["rule"] == NO_THRESHOLD_RULE == "no held-out images (--val-split 0): no calibrated threshold"


def test_threshold_from_scores():
    from cbigan.scoring.threshold import threshold_from_scores

    assert threshold_from_scores(np.arange(1, 101), 99) == pytest.approx(99.01)
    assert threshold_from_scores([3.0], 99) == 3.0
    assert threshold_from_scores([], 99) is None
    with pytest.raises(ValueError, match="NaN"):
        threshold_from_scores([1.0, np.nan], 99)
    with pytest.raises(ValueError, match="percentile"):
        threshold_from_scores([1.0], 120)


def test_write_and_read_threshold(tmp_path, synthetic_root):
    from cbigan.core.config import Config
    from cbigan.scoring.threshold import read_threshold, write_threshold

    cfg = _cfg(synthetic_root)
    assert read_threshold(tmp_path) is None
    write_config(tmp_path, cfg)
    info = {"threshold": 12.5, "percentile": 99.0, "score_lambda": 0.1, "n_val": 2, "rule": "r"}
    write_threshold(tmp_path, info)
    assert json.loads((tmp_path / "threshold.json").read_text()) == info
    assert json.loads((tmp_path / "config.json").read_text())["threshold"] == info
    loaded = Config.from_json(tmp_path / "config.json")
    assert loaded.extra["threshold"] == info and loaded.category == "synth_obj"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "threshold.json"]  # no temp files
    # a config re-saved after loading carries it in "extra": rewriting keeps a single copy
    write_config(tmp_path, loaded)
    write_threshold(tmp_path, dict(info, threshold=None))
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["threshold"]["threshold"] is None and "threshold" not in data["extra"]
    (tmp_path / "threshold.json").unlink()
    assert read_threshold(tmp_path)["threshold"] is None                # falls back to config.json


@pytest.mark.slow
def test_train_writes_threshold(synthetic_root, tmp_path):
    """A run carries its calibrated threshold, in the run folder and in the SavedModel it exports."""
    from cbigan.data.pipeline import load_train_set
    from cbigan.serving.export import read_metadata
    from cbigan.model.gan import load_trained as load_run
    from cbigan.scoring.threshold import calibrate_threshold, read_threshold
    from cbigan.training.run import train

    cfg = _cfg(synthetic_root, output_dir=str(tmp_path), steps=2, batch_size=4, log_every=1,
               eval_every=1000, preview_every=1000)
    run = train(cfg, verbose=0)
    info = read_threshold(run)
    assert info["n_val"] == 2 and info["threshold"] is not None
    assert json.loads((run / "config.json").read_text())["threshold"] == info
    cfg2, model = load_run(run)
    again = calibrate_threshold(model, cfg2, load_train_set(cfg2).val_images)
    assert again["threshold"] == pytest.approx(info["threshold"], rel=1e-6)
    exported = run / "export" / "synth_obj" / "1"  # train() exports by default
    assert (exported / "saved_model.pb").is_file()
    meta = read_metadata(exported)
    assert meta["threshold"] == info["threshold"] and meta["threshold_info"] == info
