"""Named presets: the paper preset is the paper; the fast preset stays CBiGAN; explicit flags win."""

import pytest

from cbigan.core.config import PRESETS, Config, apply_preset, method_name
from train import parse_args


def test_paper_preset_is_the_paper():
    cfg = apply_preset(Config(category="bottle"), "paper").resolved()
    assert (cfg.d_iter, cfg.alpha, cfg.lr_d, cfg.lr_eg, cfg.batch_size) == (5, 1e-4, 1e-4, 1e-4, 32)
    assert (cfg.ema_decay, cfg.ema_every, cfg.image_size, cfg.rotation) == (0.999, 10, 128, 45.0)


def test_fast_preset_stays_cbigan_and_only_changes_objects_data():
    obj = apply_preset(Config(category="bottle"), "fast").resolved()
    assert method_name(obj.alpha) == "CBiGAN" and 0 < obj.alpha < 1 and obj.d_iter >= 1
    assert (obj.image_size, obj.patch_size, obj.rotation) == (64, 64, 0.0)
    tex = apply_preset(Config(category="grid"), "fast").resolved()
    assert (tex.image_size, tex.patch_size, tex.rotation) == (512, 64, 45.0)  # textures keep theirs
    assert tex.d_iter == obj.d_iter and tex.lr_eg == obj.lr_eg


def test_fast_preset_widens_objects_and_tiles(tmp_path):
    """--preset fast: width 6 for objects and tiles, the paper's 3 for textures and every paper run;
    --width wins; a config written before width could be None loads as it ran."""
    import json

    width = {(preset, kind): apply_preset(Config(category="x", kind=kind), preset).resolved().width
             for preset in ("paper", "fast") for kind in ("object", "texture", "tiles")}
    assert width == {("paper", "object"): 3, ("paper", "texture"): 3, ("paper", "tiles"): 3,
                     ("fast", "object"): 6, ("fast", "texture"): 3, ("fast", "tiles"): 6}
    assert parse_args(["--category", "bottle", "--preset", "fast", "--width", "3"])[0].width == 3
    assert parse_args(["--category", "bottle", "--preset", "fast"])[0].width == 6
    old = {**Config(category="bottle", preset="fast").__dict__, "width": 3}   # an earlier fast run
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.from_json(tmp_path / "config.json").resolved().width == 3


def test_cli_flags_override_the_preset():
    cfg, _ = parse_args(["--category", "bottle", "--preset", "fast", "--alpha", "0", "--image-size", "128",
                         "--rotation", "45"])
    assert cfg.preset == "fast" and cfg.alpha == 0 and cfg.image_size == 128 and cfg.rotation == 45
    assert cfg.d_iter == PRESETS["fast"]["d_iter"] and cfg.batch_size == PRESETS["fast"]["batch_size"]
    cfg, _ = parse_args(["--category", "bottle"])
    assert cfg.preset == "paper" and cfg.image_size == 128


def test_unknown_preset_and_bad_select_are_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        apply_preset(Config(), "turbo")
    with pytest.raises(ValueError, match="select"):
        Config(select="best").resolved()


def test_a_run_of_no_steps_or_no_time_is_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        Config(steps=0).resolved()
    with pytest.raises(ValueError, match="minutes must be > 0"):
        Config(minutes=0).resolved()
    assert Config(steps=1, minutes=0.5).resolved().steps == 1
