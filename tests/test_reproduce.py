from cbigan.config import CATEGORIES, Config
from cbigan.reproduce import main, plan


def test_plan_covers_every_category_and_method_with_the_right_alpha():
    cfgs = plan(["bottle", "grid"], ["cbigan", "egbad", "autoencoder"], None, None, Config())
    assert [(c.category, c.run_name, c.alpha) for c in cfgs] == [
        ("bottle", "reproduce-cbigan", 1e-4), ("bottle", "reproduce-egbad", 0.0),
        ("bottle", "reproduce-autoencoder", 1.0), ("grid", "reproduce-cbigan", 1e-4),
        ("grid", "reproduce-egbad", 0.0), ("grid", "reproduce-autoencoder", 1.0)]
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
