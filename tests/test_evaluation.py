"""evaluate.py on run folders: batched texture scoring, lambda recombination, files, threshold, CLI.

The run folders hold what ``train`` saves (``config.json`` + ``model.weights.h5``) for a freshly built,
untrained model: scoring does not care how the weights were obtained, and building is much faster
than training on these 2 cores.
"""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cbigan.core.config import Config
from synthetic import make_untrained_run
from cbigan.scoring.metrics import at_threshold, max_balanced_accuracy
from cbigan.core.runfolder import write_config

LAMBDAS = [0.0, 0.1, 0.5, 1.0]


def make_run(root, tmp, category, **kw):
    return make_untrained_run(root, tmp, category, batch_size=4, **kw)


@pytest.fixture(scope="module")
def runs(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return {"obj": make_run(synthetic_root, tmp, "synth_obj", image_size=64, patch_size=64),
            "tex": make_run(synthetic_root, tmp, "synth_tex", kind="texture", image_size=128, patch_size=64)}


@pytest.fixture(scope="module")
def tex(runs):
    """The texture run's folder, model, scorer and test set, built once."""
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.parts import Scorer

    t = dict(runs["tex"])
    return dict(t, scorer=Scorer(t["model"], t["cfg"]), test=load_test_set(t["cfg"]))


def direct_scores(model, cfg, images, lambdas):
    """A full rescoring at every lambda that shares nothing with Scorer: eager Keras calls, numpy sums.

    Returns {lambda: image scores}; each is max over patches of (1 - lam) L_R + lam L_fD, computed
    from the network outputs directly (one forward pass serves all lambdas: it is deterministic).
    """
    from cbigan.model.networks import feature_extractor

    feats = feature_extractor(model.critic, cfg.feature_layer)
    p, g = cfg.patch_size, cfg.image_size // cfg.patch_size
    out = {lam: [] for lam in lambdas}
    for img in images:
        x = img.astype(np.float32) / 127.5 - 1.0
        patches = np.stack([x[r * p:(r + 1) * p, c * p:(c + 1) * p] for r in range(g) for c in range(g)])
        z = np.asarray(model.ema_encoder(patches, training=False))
        rec = np.asarray(model.ema_generator(z, training=False))
        l_r = np.abs(patches - rec).reshape(len(patches), -1).sum(1).astype(np.float64)
        l_fd = np.abs(np.asarray(feats([patches, z])) - np.asarray(feats([rec, z])))
        l_fd = l_fd.reshape(len(patches), -1).sum(1).astype(np.float64)
        for lam in lambdas:
            out[lam].append(((1 - lam) * l_r + lam * l_fd).max())
    return {lam: np.array(v) for lam, v in out.items()}


@pytest.mark.slow
def test_batched_texture_scoring_equals_per_patch_loop(tex):
    from cbigan.scoring.parts import score_images, score_patch_loop

    images = tex["test"].images
    batched = score_images(tex["scorer"], images, progress=False)
    assert batched.l_r.shape == (len(images), 4)
    for kw in ({}, {"images_per_call": 1, "compiled": True}):  # the original's loop, eager / compiled
        l_r, l_fd = score_patch_loop(tex["scorer"], images, **kw)
        np.testing.assert_allclose(batched.l_r, l_r, rtol=1e-5)
        np.testing.assert_allclose(batched.l_fd, l_fd, rtol=1e-5)


@pytest.mark.slow
def test_lambda_sweep_equals_full_rescoring(tex):
    from cbigan.reporting.evaluation import evaluate_run

    run = tex["run"]
    ev = evaluate_run(run, LAMBDAS, progress=False, model=tex["model"])
    assert not ev.reused_parts
    metrics = pd.read_csv(run / "metrics.csv").set_index("lambda")
    assert list(metrics.index) == LAMBDAS
    assert metrics["chosen"].tolist() == [False, True, False, False]
    labels = tex["test"].labels
    rescored = direct_scores(tex["model"], tex["cfg"], tex["test"].images, LAMBDAS)
    for lam in LAMBDAS:
        full = rescored[lam]
        assert metrics.loc[lam, "auroc"] == pytest.approx(roc_auc_score(labels, full), abs=1e-9)
        assert metrics.loc[lam, "max_balanced_accuracy"] == pytest.approx(max_balanced_accuracy(labels, full)[0])
        if lam == 0.1:
            scores = pd.read_csv(run / "scores.csv")
            np.testing.assert_allclose(scores["score"], full, rtol=1e-5)

    # a later sweep recombines the stored parts, without rescoring (no model given), to the same numbers
    again = evaluate_run(run, [1.0, 0.5], progress=False)
    assert again.reused_parts
    assert not evaluate_run(run, [1.0], progress=False, rescore=True).reused_parts  # --rescore: scored again
    m2 = again.metrics.set_index("lambda")
    assert list(m2.index) == [0.1, 0.5, 1.0]  # the chosen lambda is always there
    for lam in m2.index:
        assert m2.loc[lam, "auroc"] == pytest.approx(metrics.loc[lam, "auroc"])

    # files: one row per test image; textures keep the parts of the max patch
    from cbigan.core.results import ImageResults

    df = pd.read_csv(run / "scores.csv")
    assert list(df.columns) == ["path", "defect_type", "label", "l_r", "l_fd", "patch", "score"]
    assert set(df["defect_type"]) == {"good", "red_square"}
    assert ((df["label"] == 1) == (df["defect_type"] != "good")).all()
    np.testing.assert_allclose(df["score"], 0.9 * df["l_r"] + 0.1 * df["l_fd"], rtol=1e-5)
    parts = ImageResults.load_parts(run / "scores_parts.npz")
    assert parts.l_r.shape == (len(df), 4)
    np.testing.assert_array_equal(df["patch"], (0.9 * parts.l_r + 0.1 * parts.l_fd).argmax(1))
    m = pd.read_csv(run / "metrics.csv")
    assert {"auroc", "max_balanced_accuracy", "mba_threshold", "f1_max", "auroc_red_square"} <= set(m.columns)
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["method_label"] == "CBiGAN (paper)" and summary["threshold"] is None


@pytest.mark.slow
def test_object_run_threshold_and_same_scorer_as_training(runs, tmp_path):
    """Objects: one patch per image; the training-time evaluator's scores are evaluate.py's."""
    from cbigan.data.pipeline import load_test_set
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.training.monitor import TrainingMonitor

    obj = runs["obj"]
    run = tmp_path / "obj"
    shutil.copytree(obj["run"], run)
    (run / "threshold.json").write_text(json.dumps(
        {"threshold": None, "percentile": 99.0, "score_lambda": 0.1, "n_val": 0}))
    ev = evaluate_run(run, [0.0, 0.1], progress=False, model=obj["model"])
    assert ev.summary["threshold"] is None and "thr_f1" not in ev.metrics.columns
    scores = ev.scores["score"].to_numpy()
    t = float(np.median(scores))
    (run / "threshold.json").write_text(json.dumps(
        {"threshold": t, "percentile": 99.0, "score_lambda": 0.1, "n_val": 3}))
    config = json.loads((run / "config.json").read_text())  # calibration also merges it in config.json
    (run / "config.json").write_text(json.dumps(dict(config, threshold={"threshold": t})))
    ev = evaluate_run(run, [0.0, 0.1], progress=False)
    assert ev.reused_parts  # same weights and model config: the stored parts are recombined
    expect = at_threshold(ev.scores["label"], scores, t)
    row = ev.metrics.set_index("lambda").loc[0.1]
    for k, v in expect.items():
        assert row[f"thr_{k}"] == pytest.approx(v)
        assert ev.summary["at_threshold"][k] == pytest.approx(v)
    assert np.isnan(ev.metrics.set_index("lambda").loc[0.0, "thr_f1"])
    assert (ev.scores["anomalous"] == (scores > t)).all()
    assert (ev.scores["patch"] == 0).all()

    # select_on_test and --label reach the method label; a changed config means a rescoring
    cfg = Config.from_json(run / "config.json")
    write_config(run, dataclasses.replace(cfg, select_on_test=True, alpha=0.0))
    ev = evaluate_run(run, progress=False, label="mine", model=obj["model"])
    assert ev.summary["method_label"] == "EGBAD (mine) [selected on test]"
    assert not ev.reused_parts

    test = load_test_set(obj["cfg"])
    monitor = TrainingMonitor(obj["model"], obj["cfg"], tmp_path, test, test.images[:0])
    assert obj["cfg"].image_score == "paper" and obj["cfg"].score_lambda == pytest.approx(0.1)
    np.testing.assert_allclose(monitor.test_scorer(test.images), scores, rtol=1e-5)  # what monitoring scores


@pytest.mark.slow
def test_cli(tex, capsys):
    import evaluate
    from cbigan.reporting.evaluation import evaluate_run

    evaluate_run(tex["run"], progress=False, model=tex["model"])  # stored parts: the CLI recombines
    assert evaluate.main([str(tex["run"]), "--lambda", "0", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "auROC" in out and "no calibrated threshold" in out and "stored scores reused" in out
    assert evaluate.main([str(tex["run"].parent)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a run folder" in err and "\n" not in err
