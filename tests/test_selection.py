"""Label-free model selection: synthetic defects, the separation statistic, snapshot choice in a run."""

import json

import numpy as np
import pandas as pd
import pytest

from cbigan.core.config import Config
from cbigan.scoring.selection import DEFECT_KINDS, GLOBAL_DEFECTS, SnapshotSelector, separation_auroc, synthetic_defects
from cbigan.model.gan import load_trained as load_run
from cbigan.core.runfolder import SELECTED
from cbigan.training.run import train


def _images(n=5, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_synthetic_defects_are_deterministic_local_and_bounded():
    imgs = _images()
    a, b = synthetic_defects(imgs, seed=3), synthetic_defects(imgs, seed=3)
    assert a.shape == (10, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, synthetic_defects(imgs, seed=4))
    for k, copy in enumerate(a):
        changed = np.argwhere((copy != imgs[k % 5]).any(axis=-1))
        assert len(changed) > 0, k
        h = changed[:, 0].max() - changed[:, 0].min() + 1
        w = changed[:, 1].max() - changed[:, 1].min() + 1
        assert 2 <= h <= int(0.2 * 32) and 2 <= w <= int(0.2 * 32), (k, h, w)  # one bounded patch


def test_synthetic_defects_reject_float_images():
    with pytest.raises(ValueError, match="uint8"):
        synthetic_defects(np.zeros((2, 8, 8, 3), np.float32))


def test_separation_auroc():
    assert separation_auroc([0, 1, 2], [3, 4, 5, 6]) == 1.0
    assert separation_auroc([3, 4, 5, 6], [0, 1, 2]) == 0.0
    assert separation_auroc([1, 1], [1, 1]) == 0.5


def test_selector_keeps_the_best_snapshot_and_prefers_later_ties():
    imgs = _images()
    defects = synthetic_defects(imgs, seed=0, kinds=DEFECT_KINDS)
    state = {"quality": 0.0}
    defect_ids = {d.tobytes() for d in defects}

    def score(batch, regions):  # defect copies score higher by a noisy margin that grows with 'quality'
        rng = np.random.default_rng(len(batch))
        is_defect = np.array([im.tobytes() in defect_ids for im in batch], float)
        return is_defect * state["quality"] + rng.normal(0, 1, len(batch))

    saved = []
    sel = SnapshotSelector(imgs, score, saved.append, seed=0)
    for step, q in [(10, 0.0), (20, 5.0), (30, 0.2), (40, 5.0), (50, 0.5)]:
        state["quality"] = q
        row = sel.observe(step)
        assert 0 <= row["val_synthetic_auroc"] <= 1
    assert sel.best["step"] == 40 and sel.best["value"] == 1.0
    assert saved == [10, 20, 40]
    assert "step 40" in sel.describe() and "no test labels" in sel.describe()


def test_selector_inactive_without_held_out_images_or_with_rule_final():
    for sel in (SnapshotSelector(np.zeros((0, 8, 8, 3), np.uint8), None, None),
                SnapshotSelector(_images(), None, None, rule="final")):
        assert sel.observe(5) == {} and sel.describe() == "final EMA weights"
    with pytest.raises(ValueError, match="selection rule"):
        SnapshotSelector(_images(), None, None, rule="best")


def test_selector_with_too_few_held_out_images_keeps_the_last_weights_and_says_why():
    from cbigan.scoring.selection import MIN_IMAGES

    few = SnapshotSelector(np.zeros((MIN_IMAGES - 1, 8, 8, 3), np.uint8), None, None)
    assert not few.active and few.observe(5) == {} and few.describe() == "final EMA weights"
    assert f"needs at least {MIN_IMAGES} held-out images and this run has {MIN_IMAGES - 1}" in few.note
    assert SnapshotSelector(np.zeros((MIN_IMAGES, 8, 8, 3), np.uint8), None, None).active
    assert SnapshotSelector(np.zeros((1, 8, 8, 3), np.uint8), None, None, rule="final").note is None


@pytest.mark.slow
@pytest.mark.parametrize("image_score", ["paper", "map_max"])  # map_max: the fast preset's rule, from maps
def test_training_selects_a_snapshot_without_test_labels(synthetic_root, tmp_path, image_score):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="s",
                 image_size=64, patch_size=64, steps=8, batch_size=4, width=2, latent_dim=16,
                 d_iter=1, log_every=2, eval_every=2, preview_every=100, val_split=0.25, seed=1,
                 image_score=image_score)
    run = train(cfg, verbose=0, export=False)
    ev = pd.read_csv(run / "eval_log.csv")
    assert list(ev["step"]) == [2, 4, 6, 8] and ev["val_synthetic_auroc"].between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    best = ev["step"][ev["val_synthetic_auroc"] == ev["val_synthetic_auroc"].max()].max()
    assert summary["selected_step"] == best and summary["steps"] == 8
    assert "synthetic-defect auROC" in summary["model"]
    info = json.loads((run / "backup" / "selected.json").read_text())
    assert info["step"] == best
    # the saved model is that snapshot: its step counter and weights match the selected file
    _, model = load_run(run)
    assert int(model.train_counter.numpy()) == best
    _, selected = load_run(run)
    selected.load_weights(run / SELECTED)
    for a, b in zip(model.ema_generator.get_weights(), selected.ema_generator.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_select_final_keeps_the_last_weights(synthetic_root, tmp_path):
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="f",
                 image_size=64, patch_size=64, steps=4, batch_size=4, width=2, latent_dim=16,
                 log_every=2, eval_every=2, preview_every=100, select="final")
    run = train(cfg, verbose=0, export=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "final EMA weights" and summary["selected_step"] == 4
    assert not (run / SELECTED).exists()


def test_selector_gives_each_synthetic_defect_copy_its_images_region():
    """Map rules score each image's own region: the copies (one block per kind of defect, each in
    the held-out images' order) get the regions of the images they were made from, and lie in them."""
    imgs = _images()
    regions = np.stack([np.arange(len(imgs)) + 10, np.arange(len(imgs)) + 20], axis=1)
    defects = synthetic_defects(imgs, seed=0, kinds=DEFECT_KINDS, regions=regions)
    seen = []

    def score(batch, batch_regions):
        seen.append((batch, batch_regions))
        return np.zeros(len(batch))

    SnapshotSelector(imgs, score, lambda step: None, seed=0, val_regions=regions).observe(5)
    (batch, batch_regions), = seen  # one call: the held-out images, then their copies
    n = len(imgs)
    clean, clean_regions, copies, copy_regions = batch[:n], batch_regions[:n], batch[n:], batch_regions[n:]
    assert np.array_equal(clean, imgs) and np.array_equal(clean_regions, regions)
    assert np.array_equal(copies, defects) and len(copy_regions) == len(defects)
    assert len(copies) == len(DEFECT_KINDS) * len(imgs)
    for copy, region, k in zip(copies, copy_regions, list(range(len(imgs))) * len(DEFECT_KINDS)):
        assert tuple(region) == (10 + k, 20 + k)
        assert (copy != imgs[k]).mean() < 0.5  # a copy of image k: most pixels unchanged
        assert not (copy[10 + k:] != imgs[k][10 + k:]).any() and not (copy[:, 20 + k:] != imgs[k][:, 20 + k:]).any()


def test_global_synthetic_defects_change_a_large_region_inside_the_image():
    """shade scales a region of 40-70% of each side, shift replaces one of 30-60% by content from
    elsewhere in the same image; deterministic by seed; unknown kinds are refused."""
    rng = np.random.default_rng(5)
    imgs = rng.integers(40, 160, (6, 48, 48, 3), dtype=np.uint8)
    a = synthetic_defects(imgs, seed=1, kinds=GLOBAL_DEFECTS)
    np.testing.assert_array_equal(a, synthetic_defects(imgs, seed=1, kinds=GLOBAL_DEFECTS))
    assert a.shape == (12, 48, 48, 3)
    for k, copy in enumerate(a):
        changed = np.argwhere((copy != imgs[k % 6]).any(axis=-1))
        h = changed[:, 0].max() - changed[:, 0].min() + 1
        w = changed[:, 1].max() - changed[:, 1].min() + 1
        lo = 0.4 if k < 6 else 0.3
        assert h >= int(lo * 48) - 1 and w >= int(lo * 48) - 1, (k, h, w)   # large, not a spot
        assert h <= int(0.7 * 48) and w <= int(0.7 * 48), (k, h, w)
    shade = a[:6].astype(float) / imgs.astype(float)
    for k in range(6):  # every changed pixel of a shaded copy scaled by one factor
        r = shade[k][(a[k] != imgs[k])]
        assert r.std() < 0.02 and (0.5 < r.mean() < 0.8 or 1.25 < r.mean() < 1.55), r.mean()
    with pytest.raises(ValueError, match="unknown synthetic defect"):
        synthetic_defects(imgs, kinds=("melt",))
