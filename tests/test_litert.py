"""LiteRT export (issue 18 part 5): the .tflite model scores as evaluate.py does, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 1, "latent_dim": 8}


def make_strips(root, name="lt_tiles", n_train=8, n_good=2, n_defect=2, h=90, w=200, seed=0) -> Path:
    """Non-square surface strips (larger than the 128 px canvas: the tiles fit resizes them)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / name
    for sub in ("train/good", "test/good", "test/scratch"):
        (d / sub).mkdir(parents=True, exist_ok=True)

    def strip():
        base = 90 + 60 * (np.arange(w)[None, :] / w) + rng.normal(0, 3, (h, w))
        return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8)

    for i in range(n_train):
        Image.fromarray(strip()).save(d / f"train/good/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(strip()).save(d / f"test/good/{i:03d}.png")
    for i in range(n_defect):
        img = strip()
        img[30:33, 40:120] = 20
        Image.fromarray(img).save(d / f"test/scratch/{i:03d}.png")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An object run (paper rule; exported with the command line) and a tiles run (the fused rule,
    non-square inputs; exported with export_litert), each evaluated by evaluate_run."""
    pytest.importorskip("ai_edge_litert")
    from synthetic import make_category, make_untrained_run

    from cbigan.cli.export import main as export_main
    from cbigan.reporting.evaluation import evaluate_run
    from cbigan.serving.litert import export_litert

    root = tmp_path_factory.mktemp("litert")
    make_category(root / "data", "lt_obj", kind="object", size=90, n_train=10, n_good=2, n_defect=2)
    make_strips(root / "data")
    obj = make_untrained_run(root / "data", root / "runs", "lt_obj", image_size=64, patch_size=64, **SMALL)
    tiles = make_untrained_run(root / "data", root / "runs", "lt_tiles", kind="tiles", image_size=128,
                               patch_size=64, image_score="fused", score_margin=4, val_split=0.25, **SMALL)
    make_strips(root / "data", "lt_gv", seed=1)
    gv = make_untrained_run(root / "data", root / "runs", "lt_gv", kind="tiles", image_size=128, patch_size=64,
                            image_score="map_max", global_views=0.25, val_split=0.25, **SMALL)
    out = {}
    for name, r in (("obj", obj), ("tiles", tiles), ("tiles_global_view", gv)):
        ev = evaluate_run(r["run"], progress=False, model=r["model"])
        out[name] = {"run": r["run"], "cfg": r["cfg"], "paths": [str(p) for p in ev.scores["path"]],
                     "scores": ev.scores["score"].to_numpy(np.float64)}
    assert export_main([str(obj["run"]), "--format", "litert"]) == 0
    out["obj"]["model"] = obj["run"] / "export" / "litert" / "lt_obj.tflite"
    out["tiles"]["model"] = export_litert(tiles["run"], root / "edge" / "strips.tflite", verbose=False)
    out["tiles_global_view"]["model"] = export_litert(gv["run"], root / "edge" / "gv.tflite", verbose=False)
    return out


@pytest.mark.slow
def test_files_and_metadata(runs):
    from cbigan.serving.litert import find_litert, is_litert, read_litert_metadata
    from cbigan.core.runfolder import read_threshold

    model = runs["obj"]["model"]
    assert model.is_file() and model.with_suffix(".json").is_file()
    assert sorted(p.name for p in model.parent.iterdir()) == ["lt_obj.json", "lt_obj.tflite"]  # no temp files
    meta = read_litert_metadata(model)
    assert meta["category"] == "lt_obj" and meta["kind"] == "object" and meta["image_size"] == 64
    assert meta["image_score"] == "paper" and meta["threshold"] == pytest.approx(
        read_threshold(runs["obj"]["run"])["threshold"])
    assert sorted(meta["outputs"].values()) == ["anomaly_map", "is_anomaly", "reconstruction", "score",
                                                "threshold"]
    assert set(meta["inputs"]) == {"images_uint8", "regions"}
    for p in (model, model.parent, runs["obj"]["run"] / "export", runs["obj"]["run"]):
        assert find_litert(p) == model
    assert is_litert(model) and is_litert(model.parent) and not is_litert(runs["obj"]["run"] / "export")
    tiles_meta = read_litert_metadata(runs["tiles"]["model"])
    assert tiles_meta["kind"] == "tiles" and tiles_meta["image_score"] == "fused"
    assert tiles_meta["threshold_info"]["fusion"]  # calibrated by evaluate (a fused rule asks for it)
    gv_meta = read_litert_metadata(runs["tiles_global_view"]["model"])  # its global views come as an input
    assert set(gv_meta["inputs"]) == {"images_uint8", "regions", "views"} and gv_meta["global_views"] == 0.25


PARITY_SCRIPT = r"""
import json, sys
import numpy as np
from cbigan.data.pipeline import load_image
from cbigan.serving.litert import LiteRTModel
from cbigan.serving.predict import open_model, predict
spec = json.loads(sys.argv[1])
result = {}
for name, (model_path, paths) in spec.items():
    m = LiteRTModel(model_path, num_threads=1)
    raw = np.stack([load_image(p) for p in paths])
    out = m(raw)                                    # one batch (dynamic batch size)
    one = m(raw[:1].astype(np.float32))             # batch 1, float pixels
    res, _ = predict(open_model(model_path), paths, batch_size=2, progress=False)
    result[name] = {
        "score": out["score"].tolist(), "score_one": one["score"].tolist(),
        "score_predict": [r.score for r in res.predictions],
        "is_anomaly": out["is_anomaly"].tolist(), "threshold": out["threshold"].tolist(),
        "meta_threshold": m.threshold, "map_shape": list(out["anomaly_map"].shape),
        "recon_shape": list(out["reconstruction"].shape), "raw_shape": list(raw.shape),
        "source": open_model(model_path).source}
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_parity_with_evaluate_in_a_fresh_process(runs):
    spec = {name: (str(r["model"]), r["paths"]) for name, r in runs.items()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", PARITY_SCRIPT, json.dumps(spec)], check=False,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert "XNNPACK" in proc.stderr  # LiteRT logs "Created TensorFlow Lite XNNPACK delegate for CPU."
    for name, r in runs.items():
        g, expect = got[name], r["scores"]
        for key in ("score", "score_predict"):
            np.testing.assert_allclose(g[key], expect, rtol=1e-4, err_msg=f"{name} {key}")
        np.testing.assert_allclose(g["score_one"], expect[:1], rtol=1e-4)
        thr = g["meta_threshold"]
        assert thr is not None and np.allclose(g["threshold"], thr)
        assert g["is_anomaly"] == [s > thr for s in g["score"]]
        assert g["source"].startswith("LiteRT ")
        n = len(expect)
        s = r["cfg"].image_size
        if name == "obj":  # maps at the model resolution; the resize (90 -> 64 px) ran outside the model
            assert g["raw_shape"][1:3] == [90, 90]
            assert g["map_shape"] == [n, s, s] and g["recon_shape"] == [n, s, s, 3]
        else:  # tiles (with a global view too): maps cut to the image's region, resized to the input's size
            assert g["raw_shape"][1:3] == [90, 200]
            assert g["map_shape"] == [n, 90, 200] and g["recon_shape"] == [n, 90, 200, 3]


@pytest.mark.slow
def test_clear_errors(tmp_path, monkeypatch, runs):
    from cbigan.cli.export import main as export_main
    from cbigan.serving.export import ExportError
    from cbigan.serving.litert import LiteRTMissing, LiteRTModel, interpreter_class
    from cbigan.serving.predict import open_model

    with pytest.raises(ExportError, match="no LiteRT model"):
        LiteRTModel(tmp_path / "missing.tflite")
    with pytest.raises(ExportError, match="no LiteRT model"):
        open_model(tmp_path / "missing.tflite")
    lone = tmp_path / "lone.tflite"
    lone.write_bytes(runs["obj"]["model"].read_bytes())
    with pytest.raises(ExportError, match="metadata"):
        LiteRTModel(lone)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if not installed
    with pytest.raises(LiteRTMissing, match="pip install ai-edge-litert"):
        interpreter_class()
    with pytest.raises(SystemExit):
        export_main([str(runs["obj"]["run"]), "--format", "litert", "--version", "2"])
