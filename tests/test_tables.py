"""Tables II/III: the paper's column order, means over present categories, newest run, compare, CLI.

No TensorFlow here: evaluated runs are stood in for by their ``evaluation.json``.
"""

import json

import numpy as np
import pandas as pd
import pytest

import evaluate
from cbigan.core.config import OBJECTS, TEXTURES, Config
from cbigan.reporting.evaluation import method_label, method_name
from cbigan.reporting.tables import (
    COLUMNS, TABLES, build_table, collect_evaluations, compare, load_published, to_markdown, write_tables)

PAPER_COLUMNS = ["carpet", "grid", "leather", "tile", "wood", "textures_mean", "bottle", "cable",
                 "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor",
                 "zipper", "objects_mean", "overall_mean"]


def fake_eval(root, category, run, auroc, mba, *, alpha=1e-4, label=None, when="2026-01-01T00:00:00",
              select_on_test=False, score_lambda=0.1):
    cfg = Config(category=category, alpha=alpha)
    d = root / category / run
    d.mkdir(parents=True)
    (d / "evaluation.json").write_text(json.dumps({
        "run": run, "run_dir": str(d), "category": category, "alpha": alpha,
        "method_label": method_label(cfg, label, score_lambda, select_on_test),
        "select_on_test": select_on_test, "score_lambda": score_lambda,
        "auroc": auroc, "max_balanced_accuracy": mba, "evaluated_at": when}))
    return d


def test_method_labels():
    assert [method_name(a) for a in (0, 1e-4, 0.5, 1)] == ["EGBAD", "CBiGAN", "CBiGAN", "autoencoder"]
    assert method_label(Config(alpha=0.0)) == "EGBAD (paper)"
    assert method_label(Config(alpha=1.0), "ae-run") == "autoencoder (ae-run)"
    assert method_label(Config(), score_lambda=0.5) == "CBiGAN (paper, λ=0.5)"
    assert method_label(Config(), select_on_test=True) == "CBiGAN (paper) [selected on test]"


@pytest.mark.parametrize("key", sorted(TABLES))
def test_published_tables(key):
    pub = load_published(TABLES[key])
    assert COLUMNS == PAPER_COLUMNS
    assert pub["source"].str.contains("ICPR 2020").all()
    assert pub[COLUMNS].notna().all().all()
    # typed correctly: the printed means agree with the per-category values (2-decimal rounding)
    assert np.allclose(pub[list(TEXTURES)].mean(axis=1), pub["textures_mean"], atol=0.0075)
    assert np.allclose(pub[list(OBJECTS)].mean(axis=1), pub["objects_mean"], atol=0.0075)
    assert np.allclose(pub[[*TEXTURES, *OBJECTS]].mean(axis=1), pub["overall_mean"], atol=0.0075)
    cbigan = pub[pub["method"] == "CBiGAN (ours)"].iloc[0]
    if key == "table2":
        assert len(pub) == 10 and cbigan["grid"] == 0.99 and cbigan["overall_mean"] == 0.76
    else:
        assert len(pub) == 6 and cbigan["tile"] == 0.91 and cbigan["overall_mean"] == 0.77


def test_means_over_present_categories_only(tmp_path):
    fake_eval(tmp_path, "carpet", "a", 0.80, 0.70)
    fake_eval(tmp_path, "grid", "a", 0.60, 0.50)
    fake_eval(tmp_path, "bottle", "a", 0.90, 0.85)
    fake_eval(tmp_path, "bottle", "egbad", 0.50, 0.55, alpha=0.0)
    table = build_table(collect_evaluations(tmp_path), "table3")
    assert list(table.columns[3:3 + len(COLUMNS)]) == PAPER_COLUMNS
    ours = table[table["source"] == "this repository"].set_index("method")
    assert list(ours.index) == ["CBiGAN (paper)", "EGBAD (paper)"]
    row = ours.loc["CBiGAN (paper)"]
    assert row["textures_mean"] == pytest.approx(0.70)
    assert row["objects_mean"] == pytest.approx(0.90)
    assert row["overall_mean"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert (row["n_textures"], row["n_objects"]) == (2, 1)
    assert "present categories only" in row["note"] and "2/5 textures" in row["note"]
    assert np.isnan(row["leather"]) and np.isnan(row["zipper"])
    egbad = ours.loc["EGBAD (paper)"]
    assert np.isnan(egbad["textures_mean"]) and egbad["overall_mean"] == pytest.approx(0.5)
    # published rows are kept with their printed means, after ours
    assert (table["source"] != "this repository").sum() == 6
    md = to_markdown(table, "t")
    header = md.splitlines()[2]
    assert header.startswith("| method | source | carpet | grid | leather | tile | wood | textures mean | bottle")
    assert header.endswith("zipper | objects mean | overall mean |")
    line = next(l for l in md.splitlines() if l.startswith("| CBiGAN (paper)"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:8] == ["0.800", "0.600", "", "", "", "0.700 (2/5)"]
    assert cells[-1] == "0.767 (3/15)"
    assert "(k/n) marks a mean" in md


def test_newest_run_per_category_and_labels(tmp_path):
    fake_eval(tmp_path, "wood", "old", 0.1, 0.1, when="2026-01-01T00:00:00")
    fake_eval(tmp_path, "wood", "new", 0.9, 0.8, when="2026-02-01T00:00:00")
    fake_eval(tmp_path, "wood", "ae", 0.4, 0.4, alpha=1.0)
    fake_eval(tmp_path, "wood", "cheat", 0.99, 0.99, select_on_test=True)
    fake_eval(tmp_path, "wood", "var", 0.3, 0.3, label="wide")
    fake_eval(tmp_path, "synth_obj", "x", 0.5, 0.5)  # not an MVTec category: not in the table
    table = build_table(collect_evaluations(tmp_path), "table2", published_dir=None)
    ours = table.set_index("method")
    assert ours.loc["CBiGAN (paper)", "wood"] == 0.8
    assert "wood/new" in ours.loc["CBiGAN (paper)", "runs"]
    assert ours.loc["autoencoder (paper)", "wood"] == 0.4
    assert ours.loc["CBiGAN (paper) [selected on test]", "wood"] == 0.99
    assert ours.loc["CBiGAN (wide)", "wood"] == 0.3
    assert len(ours) == 4
    assert "chosen by its test auROC" in to_markdown(table)


def test_write_tables_and_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_eval(runs, "leather", "r", 0.83, 0.87)
    out = tmp_path / "results"
    res = write_tables([runs], out)
    names = sorted(p.name for p in res["files"])
    assert names == ["table2_max_balanced_accuracy.csv", "table2_max_balanced_accuracy.md",
                     "table3_auroc.csv", "table3_auroc.md"]
    csv = pd.read_csv(out / "table3_auroc.csv")
    assert list(csv.columns[3:3 + len(COLUMNS)]) == PAPER_COLUMNS
    assert csv.loc[0, "leather"] == 0.83 and csv.loc[0, "overall_mean"] == 0.83

    assert evaluate.main(["--table", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table II" in printed and "Table III" in printed and "CBiGAN (paper)" in printed
    assert "0.830 (1/5)" in printed


def test_compare(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_eval(a, "grid", "r", 0.50, 0.60)
    fake_eval(a, "bottle", "r", 0.80, 0.70)
    fake_eval(b, "grid", "r", 0.70, 0.65)
    fake_eval(b, "bottle", "r", 0.70, 0.75)
    fake_eval(b, "zipper", "r", 0.60, 0.60)
    df = compare(a, b).set_index("category")
    assert list(df.index[:3]) == ["grid", "bottle", "zipper"]
    assert df.loc["grid", "auroc_diff"] == pytest.approx(0.2)
    assert df.loc["bottle", "mba_diff"] == pytest.approx(0.05)
    assert np.isnan(df.loc["zipper", "auroc_A"]) and np.isnan(df.loc["zipper", "auroc_diff"])
    assert df.loc["mean (all common) (2)", "auroc_diff"] == pytest.approx(0.05)
    # two single run folders work too
    assert compare(a / "grid" / "r", b / "grid" / "r")["auroc_diff"].iloc[0] == pytest.approx(0.2)
    assert evaluate.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "grid" in out and "+0.2000" in out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 1  # an empty folder is not a run
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a run folder" in err and "\n" not in err
    assert evaluate.main(["--table", str(tmp_path)]) == 1
    assert "no evaluated runs" in capsys.readouterr().err
    run = tmp_path / "grid" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "model.weights.h5").write_bytes(b"")
    assert evaluate.main(["--compare", str(run), str(run)]) == 1
    assert "not evaluated yet" in capsys.readouterr().err


def test_pixel_tables_when_runs_have_pixel_metrics(tmp_path, capsys):
    runs = tmp_path / "runs"
    for cat, run, pa, ap, kind, stride in (("leather", "r", 0.91, 0.62, "texture", 32),
                                           ("magnetic_tile", "m", 0.80, 0.41, "object", 128)):
        d = fake_eval(runs, cat, run, 0.8, 0.8)
        s = json.loads((d / "evaluation.json").read_text())
        s.update(pixel_auroc=pa, aupro=ap, kind=kind, pixel={"sigma": 4.0, "stride": stride})
        (d / "evaluation.json").write_text(json.dumps(s))
    fake_eval(runs, "bottle", "no_masks", 0.7, 0.7)   # image metrics only: not in the pixel tables
    out = tmp_path / "results"
    res = write_tables([runs], out)
    names = sorted(p.name for p in res["files"])
    assert "aupro.md" in names and "pixel_auroc.csv" in names and len(names) == 12
    # magnetic_tile is outside the paper's tables: its image metrics get tables of their own
    other = (out / "other_auroc.md").read_text()
    assert "| method | source | magnetic_tile |" in other and "| CBiGAN (paper) | ours | 0.800 |" in other
    assert pd.read_csv(out / "other_max_balanced_accuracy.csv").loc[0, "magnetic_tile"] == 0.8
    assert "Image auROC, categories outside the paper's tables" in res["text"]
    csv = pd.read_csv(out / "aupro.csv")
    assert csv.loc[0, "leather"] == 0.62 and csv.loc[0, "magnetic_tile"] == 0.41
    assert np.isnan(csv.loc[0, "bottle"]) and csv.loc[0, "textures_mean"] == 0.62
    md = (out / "pixel_auroc.md").read_text()
    header = md.splitlines()[2]
    assert header == "| method | source | leather | textures mean | overall mean | magnetic_tile |"
    assert "| CBiGAN (paper) | ours | 0.910 | 0.910 (1/5) | 0.910 (1/15) | 0.800 |" in md
    assert "sigma 4 px" in md and "stride 32." in md and "No published rows" in md  # objects: no stride
    # Tables II/III are unchanged by it
    t3 = pd.read_csv(out / "table3_auroc.csv")
    assert list(t3.columns[3:3 + len(COLUMNS)]) == PAPER_COLUMNS and "magnetic_tile" not in t3.columns
    assert "Pixel-level auROC" in res["text"] and "AUPRO" in res["text"]


def test_table_without_out_writes_beside_the_runs_and_says_where(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    fake_eval(runs, "leather", "r", 0.83, 0.87)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluate.main(["--table", str(runs)]) == 0
    assert (runs / "tables" / "table3_auroc.csv").is_file()
    assert not (elsewhere / "results").exists()
    assert f"tables written to {runs / 'tables'}/" in capsys.readouterr().out
