"""SavedModel export: layout, signatures, input validation and score parity in a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cbigan.core.runfolder import write_config

ROOT = Path(__file__).resolve().parents[1]


def make_run(data_root, out_dir, category, run_name="r", return_model=False, **overrides):
    """A finished run folder without training: config.json + (untrained, seeded) weights.

    Parity and plumbing do not depend on what the weights learnt, and this is ~50x faster than fit.
    """
    from cbigan.core.config import Config
    from cbigan.model.gan import build_model
    from cbigan.core.runfolder import WEIGHTS

    cfg = Config(category=category, data_dir=str(data_root), output_dir=str(out_dir),
                 run_name=run_name, **overrides).resolved()
    run_dir = Path(out_dir) / category / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg)
    model = build_model(cfg)
    # EMA copies start equal to the raw nets; make them differ so using the wrong ones would show.
    model.ema_encoder.set_weights([w * 0.9 for w in model.encoder.get_weights()])
    model.save_weights(run_dir / WEIGHTS)
    return (run_dir, cfg, model) if return_model else run_dir


def make_data(root) -> Path:
    """Categories whose images are NOT at model size (90 px object -> 64, 160 px texture -> 128)."""
    from synthetic import make_category

    make_category(root, "big_obj", kind="object", size=90, n_train=10, n_good=3, n_defect=3)
    make_category(root, "big_tex", kind="texture", size=160, n_train=5, n_good=2, n_defect=2)
    return root


OBJ = dict(image_size=64, patch_size=64)
TEX = dict(kind="texture", image_size=128, patch_size=64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An object run (calibrated and exported by export_run, as the CLI does) and a texture run
    trained on every image (--val-split 0: no threshold), exported from memory; built once."""
    from cbigan.data.pipeline import load_train_set
    from cbigan.serving.export import export_model, export_run
    from cbigan.scoring.threshold import calibrate_threshold, write_threshold

    data = make_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs")
    obj, obj_cfg, obj_model = make_run(data, out, "big_obj", return_model=True, **OBJ)
    tex, tex_cfg, tex_model = make_run(data, out, "big_tex", return_model=True, val_split=0.0, **TEX)
    info = calibrate_threshold(tex_model, tex_cfg, load_train_set(tex_cfg).val_images)
    write_threshold(tex, info)
    return {"data": data,
            "obj": (obj, export_run(obj, verbose=False), obj_cfg, obj_model),
            "tex": (tex, export_model(tex_model, tex_cfg, tex / "export", threshold_info=info, run_dir=tex),
                    tex_cfg, tex_model)}


@pytest.fixture(scope="module")
def loaded(runs):
    from cbigan.serving.export import LoadedExport

    return {name: LoadedExport(runs[name][1]) for name in ("obj", "tex")}


@pytest.mark.slow
def test_layout_and_metadata(runs):
    from cbigan.serving.export import find_saved_model, read_metadata
    from cbigan.scoring.threshold import read_threshold

    run_dir, version_dir, _, _ = runs["obj"]
    assert version_dir == run_dir / "export" / "big_obj" / "1"
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    meta = read_metadata(version_dir)
    info = read_threshold(run_dir)
    assert info is not None and info["threshold"] is not None and info["n_val"] == 1
    assert meta["threshold"] == pytest.approx(info["threshold"])
    assert meta["image_size"] == 64 and meta["kind"] == "object" and meta["category"] == "big_obj"
    # every way of naming the export finds the same version folder
    for p in (version_dir, version_dir.parent, run_dir / "export", run_dir):
        assert find_saved_model(p) == version_dir
    # no temporary folders are left next to the versions (TF Serving watches that folder)
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]


class _StubArchive:
    """Stands in for the ExportArchive where only the folder logic is under test (tracing is slow)."""

    def write_out(self, path, verbose=False):
        Path(path).mkdir(parents=True)
        (Path(path) / "saved_model.pb").write_bytes(b"stub")


@pytest.fixture
def stub_archive(monkeypatch):
    import cbigan.serving.export

    monkeypatch.setattr(cbigan.serving.export, "build_archive", lambda *a, **k: _StubArchive())


def test_versioning(tmp_path, stub_archive):
    from cbigan.core.config import Config
    from cbigan.serving.export import ExportError, export_model, find_saved_model, versions

    cfg = Config(category="big_obj", **OBJ)
    base = tmp_path / "serving"
    assert export_model(None, cfg, base) == base / "big_obj" / "1"
    assert export_model(None, cfg, base) == base / "big_obj" / "2"
    (base / "big_obj" / "2" / "saved_model.pb").write_bytes(b"old")
    assert export_model(None, cfg, base, overwrite=True) == base / "big_obj" / "2"  # latest replaced
    assert (base / "big_obj" / "2" / "saved_model.pb").read_bytes() == b"stub"
    with pytest.raises(ExportError, match="already exists"):
        export_model(None, cfg, base, version=1)
    assert export_model(None, cfg, base, version=1, overwrite=True) == base / "big_obj" / "1"
    assert export_model(None, cfg, base, version=10, model_name="other") == base / "other" / "10"
    assert versions(base / "big_obj") == [1, 2]
    assert not [p for p in (base / "big_obj").iterdir() if p.name.startswith(".")]
    assert find_saved_model(base / "big_obj") == base / "big_obj" / "2"
    with pytest.raises(ExportError, match="several models"):
        find_saved_model(base)
    with pytest.raises(ExportError, match="no SavedModel"):
        find_saved_model(tmp_path)


PARITY_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from cbigan.data.pipeline import load_image
spec = json.loads(sys.argv[1])
result = {}
for name, (export_dir, paths) in spec.items():
    m = tf.saved_model.load(export_dir)
    raw = np.stack([load_image(p) for p in paths])
    out = m.signatures["serving_default"](images=tf.constant(raw.astype(np.float32)))
    u8 = m.signatures["serving_uint8"](images=tf.constant(raw))
    by = m.signatures["serving_bytes"](image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    result[name] = {
        "score": out["score"].numpy().tolist(), "score_uint8": u8["score"].numpy().tolist(),
        "score_bytes": by["score"].numpy().tolist(),
        "is_anomaly": out["is_anomaly"].numpy().tolist(), "threshold": out["threshold"].numpy().tolist(),
        "map_shape": list(out["anomaly_map"].shape), "recon_shape": list(out["reconstruction"].shape),
        "raw_shape": list(raw.shape)}
print("RESULT " + json.dumps(result))
"""


def _python_path_scores(cfg, model):
    """What evaluate.py computes: load_test_set (Pillow + resize_uint8) then the Scorer."""
    from cbigan.data.pipeline import load_test_set
    from cbigan.scoring.parts import Scorer

    test = load_test_set(cfg)
    scores = Scorer(model, cfg).score(test.images).image_scores(cfg.score_lambda)
    return cfg, [str(p) for p in test.paths], scores


@pytest.mark.slow
def test_parity_fresh_process(runs):
    """tf.saved_model.load in a new process gives the in-framework scores (rel. diff <= 1e-4)."""
    spec, expected = {}, {}
    for name in ("obj", "tex"):
        _, version_dir, cfg, model = runs[name]
        cfg, paths, scores = _python_path_scores(cfg, model)
        spec[name] = (str(version_dir), paths)
        expected[name] = (cfg, scores)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", PARITY_SCRIPT, json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    for name, (cfg, scores) in expected.items():
        r = got[name]
        s = cfg.image_size
        assert r["raw_shape"][1] != s  # the graph did the resizing
        assert r["map_shape"] == [len(scores), s, s] and r["recon_shape"] == [len(scores), s, s, 3]
        for key in ("score", "score_uint8", "score_bytes"):
            rel = np.abs(np.array(r[key]) - scores) / np.abs(scores)
            assert rel.max() <= 1e-4, (name, key, rel.max())
        thr = r["threshold"][0]
        assert np.array_equal(r["is_anomaly"], np.array(r["score"]) > thr)
    assert not np.isnan(got["obj"]["threshold"]).any()
    assert np.isnan(got["tex"]["threshold"]).all() and not any(got["tex"]["is_anomaly"])


@pytest.mark.slow
def test_outputs_match_python_graph(runs, loaded):
    """anomaly_map and reconstruction of the export are those of the evaluation's Localizer."""
    from cbigan.data.pipeline import load_image, load_test_set
    from cbigan.scoring.localization import Localizer

    _, _, cfg, model = runs["tex"]
    test = load_test_set(cfg)
    raw = np.stack([load_image(p) for p in test.paths[:2]])
    out = loaded["tex"](raw)
    ref = Localizer(model, cfg).raw(test.images[:2])
    np.testing.assert_allclose(out["anomaly_map"], ref["anomaly_map"].numpy(), atol=1e-4)
    recon = (ref["reconstruction"].numpy() + 1.0) * 127.5
    np.testing.assert_allclose(out["reconstruction"], recon, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("shape, message", [
    ((64, 64, 3), "rank 4"),
    ((1, 2, 64, 64, 3), "rank 4"),
    ((1, 64, 64, 1), "3 channels"),
    ((2, 64, 64, 4), "3 channels"),
    ((1, 0, 64, 3), "at least 1 pixel"),
])
def test_signature_rejects_bad_input(loaded, shape, message):
    import tensorflow as tf

    m = loaded["obj"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message) as e:
        m(np.zeros(shape, np.float32))
    assert str(list(shape)).replace(",", "")[1:-1] in str(e.value)  # the received shape is reported


@pytest.mark.slow
def test_saved_model_cli_lists_signature(runs):
    version_dir = runs["tex"][1]
    cli = shutil.which("saved_model_cli")
    cmd = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd + ["show", "--dir", str(version_dir), "--all"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "signature_def['serving_default']" in text
    block = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "inputs['images']" in block and "DT_FLOAT" in block
    for out in ("score", "is_anomaly", "anomaly_map", "reconstruction", "threshold"):
        assert f"outputs['{out}']" in block
    assert "shape: (-1, 128, 128)" in block  # texture map stitched at model resolution
    assert "signature_def['serving_bytes']" in text and "inputs['image_bytes']" in text


@pytest.mark.slow
def test_no_threshold_export(runs, loaded):
    """--val-split 0: no calibrated threshold; the export says so (NaN) and flags nothing."""
    from cbigan.scoring.threshold import read_threshold

    run_dir = runs["tex"][0]
    info = read_threshold(run_dir)
    assert info["threshold"] is None and "no calibrated threshold" in info["rule"]
    m = loaded["tex"]
    assert m.threshold is None and m.meta["threshold_info"]["n_val"] == 0
    out = m(np.full((2, 90, 90, 3), 128, np.uint8))
    assert np.isnan(out["threshold"]).all() and not out["is_anomaly"].any()


@pytest.mark.slow
def test_manual_threshold(runs, tmp_path, stub_archive):
    """--threshold T overrides the calibrated value and is recorded as set by hand."""
    from cbigan.serving.export import ServingGraph, export_model, read_metadata
    from cbigan.scoring.threshold import manual_threshold

    _, _, cfg, model = runs["obj"]
    meta = read_metadata(export_model(model, cfg, tmp_path, threshold_info=manual_threshold(0.0, cfg)))
    assert meta["threshold"] == 0.0 and "by hand" in meta["threshold_info"]["rule"]
    out = ServingGraph(model, cfg, 0.0).python_fn()(np.full((1, 90, 90, 3), 128, np.float32))
    assert out["is_anomaly"].numpy().all() and out["threshold"].numpy()[0] == 0.0


@pytest.mark.slow
def test_cli(runs, tmp_path, capsys, stub_archive):
    from cbigan.cli.export import main

    run_dir = runs["obj"][0]
    assert main([str(run_dir), "--export-dir", str(tmp_path), "--model-name", "m", "--version", "7"]) == 0
    assert (tmp_path / "m" / "7" / "saved_model.pb").is_file()
    assert "saved_model_cli show" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 1
    assert "not a finished run folder" in capsys.readouterr().err
    # --recalibrate: the stored record is calibrated again on the held-out images (the same seeded split)
    import json

    from cbigan.serving.export import read_metadata

    record = json.loads((run_dir / "threshold.json").read_text())
    (run_dir / "threshold.json").write_text(json.dumps({**record, "threshold": 123.0}))
    assert main([str(run_dir), "--export-dir", str(tmp_path), "--model-name", "m", "--version", "8"]) == 0
    assert read_metadata(tmp_path / "m" / "8")["threshold"] == 123.0  # the stored record, as it is
    assert main([str(run_dir), "--export-dir", str(tmp_path), "--model-name", "m", "--version", "9",
                 "--recalibrate"]) == 0
    assert read_metadata(tmp_path / "m" / "9")["threshold"] == pytest.approx(record["threshold"], rel=1e-5)
    assert json.loads((run_dir / "threshold.json").read_text())["threshold"] == pytest.approx(record["threshold"], rel=1e-5)


@pytest.mark.slow
def test_served_batches_are_scored_in_chunks_with_the_same_outputs(monkeypatch):
    """serve_images runs the networks on chunks of at most PATCHES_PER_CALL patches, two at a time (a
    remainder included): every output equals one pass over the whole batch."""
    import tensorflow as tf

    import cbigan.serving.export as export
    import cbigan.scoring.parts as scoring
    from cbigan.core.config import Config
    from cbigan.model.gan import build_model

    monkeypatch.setattr(scoring, "PATCHES_PER_CALL", 8)  # 4 patches an image: chunks of 2 images
    cfg = Config(category="t", kind="texture", image_size=128, patch_size=64).resolved()
    graph = export.ServingGraph(build_model(cfg), cfg, 0.5)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (5, 128, 128, 3)).astype(np.uint8))
    regions = tf.constant(np.tile([[128, 128]], (5, 1)).astype(np.int32))
    chunked, whole = graph._core(x, regions), graph._single(x, regions)
    ops = {op.type for op in graph._core.get_concrete_function().graph.get_operations()}
    assert ops & {"While", "StatelessWhile"}, "no chunk loop in the served graph"
    assert set(chunked) == set(export.OUTPUTS)
    for key in export.OUTPUTS:
        assert chunked[key].shape == whole[key].shape, key
        np.testing.assert_allclose(chunked[key].numpy().astype(float), whole[key].numpy().astype(float),
                                   rtol=1e-5, atol=1e-5, err_msg=key)
    served = graph.python_fn()(tf.cast(x, tf.float32))
    np.testing.assert_allclose(served["score"].numpy(), whole["score"].numpy(), rtol=1e-5)


def test_in_chunks_equals_one_pass_for_any_batch_size():
    """cbigan.scoring.parts.in_chunks: chunks of whole images, two at a time, concatenated in order."""
    import tensorflow as tf

    from cbigan.scoring.parts import in_chunks

    def fn(x, y):
        return {"a": tf.reduce_sum(x, axis=[1, 2]) + tf.cast(y, tf.float32), "b": x * 2.0}

    specs = {"a": (tf.float32, []), "b": (tf.float32, [3, 2])}
    f = tf.function(lambda x, y, ppi: in_chunks(fn, (x, y), ppi, specs), reduce_retracing=True)
    for n, ppi in ((7, 64), (7, 1), (1, 64), (2, 300)):
        x = tf.constant(np.random.default_rng(n).random((n, 3, 2)), tf.float32)
        y = tf.range(n)
        got, want = f(x, y, ppi), fn(x, y)
        np.testing.assert_allclose(got["a"].numpy(), want["a"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(got["b"].numpy(), want["b"].numpy())
