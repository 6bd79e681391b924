import pytest

from cbigan.core.config import CATEGORIES, Config, apply_preset
from cbigan.cli.reproduce import main
from cbigan.reproduce import plan


def test_plan_covers_every_category_and_method_with_the_right_alpha():
    cfgs = plan(["bottle", "grid"], ["cbigan", "egbad", "autoencoder"], None, None, Config())
    assert [(c.category, c.run_name, c.alpha) for c in cfgs] == [
        ("bottle", "reproduce-paper-cbigan", 1e-4), ("bottle", "reproduce-paper-egbad", 0.0),
        ("bottle", "reproduce-paper-autoencoder", 1.0), ("grid", "reproduce-paper-cbigan", 1e-4),
        ("grid", "reproduce-paper-egbad", 0.0), ("grid", "reproduce-paper-autoencoder", 1.0)]
    assert all(c.steps == 1_200_000 and c.minutes is None for c in cfgs)  # the paper's setting by default
    assert cfgs[3].kind == "texture" and cfgs[3].patch_size == 64


def test_budget_is_split_evenly_and_steps_override():
    cfgs = plan(list(CATEGORIES), ["cbigan", "egbad"], None, 60.0, Config())
    assert len(cfgs) == 30 and all(abs(c.minutes - 2.0) < 1e-9 for c in cfgs)
    assert all(c.steps == plan(["bottle"], ["cbigan"], 500, None, Config())[0].steps - 500 + 10**9 for c in cfgs)
    assert plan(["bottle"], ["cbigan"], 500, None, Config())[0].steps == 500


def test_unknown_method_is_refused(capsys):
    assert main(["--methods", "cbigan,gan"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_fast_preset_keeps_its_settings_and_only_alpha_changes():
    cfgs = plan(["bottle"], ["cbigan", "egbad", "autoencoder"], None, 45.0, apply_preset(Config(), "fast"))
    assert [c.run_name for c in cfgs] == ["reproduce-fast-cbigan", "reproduce-fast-egbad",
                                          "reproduce-fast-autoencoder"]
    assert [c.alpha for c in cfgs] == [0.5, 0.0, 1.0]
    assert all(c.d_iter == 1 and c.image_size == 64 and c.minutes == 15.0 for c in cfgs)


@pytest.mark.slow
def test_reproduce_trains_evaluates_and_writes_the_tables_where_asked(synthetic_root, tmp_path):
    """``--results-dir`` takes the tables, ``--output-dir`` the runs; one method on one category."""
    code = main(["--data-dir", str(synthetic_root), "--categories", "synth_obj", "--methods", "egbad",
                 "--steps", "2", "--preset", "fast", "--output-dir", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "tables"), "--quiet"])
    assert code == 0
    run = tmp_path / "runs" / "synth_obj" / "reproduce-fast-egbad"
    assert (run / "evaluation.json").is_file() and '"alpha": 0.0' in (run / "config.json").read_text()
    assert (tmp_path / "tables" / "other_auroc.md").is_file()  # a category outside the paper's tables


def test_budget_minutes_reaches_every_run(monkeypatch):
    """``--budget-minutes`` is split over the runs the command line asks for (the training is stubbed)."""
    import cbigan.reproduce as reproduce

    seen = {}
    monkeypatch.setattr(reproduce, "reproduce", lambda cats, methods, base, **kw: seen.update(kw, cats=cats) or [])
    assert main(["--categories", "bottle,grid", "--methods", "cbigan", "--budget-minutes", "8",
                 "--results-dir", "elsewhere"]) == 0
    assert seen["budget_minutes"] == 8.0 and seen["results_dir"] == "elsewhere" and seen["cats"] == ["bottle", "grid"]
