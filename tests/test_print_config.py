"""Settings resolved once (cbigan/core/config.py): each value's source, ``train.py --print-config``, the
sources in config.json, and every training flag reaching its setting."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from cbigan.cli.train import ADVANCED, build_parser, main, parse_args
from cbigan.core.config import FIELDS, Config, describe, resolve
from cbigan.core.runfolder import write_config


def _strips(root):
    """An unknown category of elongated images (inferred as tiles on a 576 px canvas)."""
    from PIL import Image

    good = root / "parts" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((200, 520), 100 + i, np.uint8)).save(good / f"{i}.png")
    return root


def _table(text):
    """``--print-config`` output (from its header line) -> {setting: (value, source)}, by the header's columns."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("setting "))
    v, s = lines[head].index("value"), lines[head].index("source")
    return {line[:v].strip(): (line[v:s].strip(), line[s:].strip()) for line in lines[head + 1:]}


def test_print_config_prints_every_setting_and_its_source_and_trains_nothing(tmp_path, capsys):
    root, out = _strips(tmp_path / "data"), tmp_path / "runs"
    code = main(["--category", "parts", "--data-dir", str(root), "--output-dir", str(out), "--preset", "fast",
                 "--alpha", "0.3", "--print-config"])
    assert code == 0 and not out.exists()
    text = capsys.readouterr().out
    assert text.startswith("note: the training images in")  # why the data chose the kind
    table = _table(text)
    assert set(table) == set(FIELDS)
    assert table["alpha"] == ("0.3", "flag")
    assert table["kind"] == ("tiles", "data") and table["image_size"] == ("576", "data")
    assert table["lr_eg"] == ("0.001", "preset fast") and table["width"] == ("6", "preset fast")
    assert table["train_crops"] == ("image", "kind tiles") and table["score_margin"] == ("32", "kind tiles")
    assert table["global_views"] == ("0.5", "preset fast") and table["gp_weight"] == ("10", "paper")
    assert table["output_dir"] == (str(out), "flag") and table["run_name"] == ("-", "paper")
    assert table["betas_d"] == ("0 0.9", "paper")


def test_print_config_of_an_mvtec_object(capsys):
    assert main(["--category", "bottle", "--preset", "fast", "--image-score", "paper", "--print-config"]) == 0
    table = _table(capsys.readouterr().out)
    assert table["image_size"] == ("64", "preset fast") and table["patch_size"] == ("64", "kind object")
    assert table["image_score"] == ("paper", "flag") and table["kind"] == ("object", "paper")
    assert table["preset"] == ("fast", "flag") and table["category"] == ("bottle", "flag")


def _sample(action):
    """A valid value for one training flag (with --category grid: a texture, no data)."""
    special = {"image_size": "128", "patch_size": "64", "global_views": "0", "category": "bottle",
               "data_dir": "elsewhere", "output_dir": "elsewhere", "preset": "fast", "kind": "texture",
               "activation": "relu", "feature_layer": "critic_features", "run_name": "r"}
    if action.dest in special:
        return [special[action.dest]]
    if action.nargs == 0:
        return []
    if action.choices:
        return [list(action.choices)[-1]]
    return ["2" if action.type is int else "0.5"]


SETTING_FLAGS = [a for a in build_parser()._actions if a.dest in FIELDS and a.option_strings]


@pytest.mark.parametrize("action", SETTING_FLAGS, ids=[a.option_strings[0] for a in SETTING_FLAGS])
def test_every_training_flag_sets_its_setting_with_source_flag(action):
    cfg, _ = parse_args(["--category", "grid", action.option_strings[0]] + _sample(action))
    assert cfg.sources[action.dest] == "flag"
    assert {k for k, s in cfg.sources.items() if s == "flag"} <= {action.dest, "category"}


def test_rarely_used_flags_are_under_advanced():
    groups = {g.title: {a.option_strings[0] for a in g._group_actions} for g in build_parser()._action_groups}
    assert {"--norm", "--activation", "--feature-layer", "--denoise", "--no-ema-warmup"} <= groups[ADVANCED] and ADVANCED.startswith("advanced")
    assert "--distribute" in {o for a in build_parser()._actions for o in a.option_strings}
    assert all(isinstance(a.help, str) and len(a.help) > 20 for a in build_parser()._actions
               if a.dest in FIELDS and not isinstance(a, argparse._HelpAction))


def test_the_resolved_config_is_frozen_and_equal_to_the_old_way():
    cfg, note = resolve({"category": "bottle", "preset": "fast"}, infer=False)
    assert note is None and cfg == parse_args(["--category", "bottle", "--preset", "fast"])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 1.0
    assert describe(cfg).splitlines()[0].split() == ["setting", "value", "source"]


def test_config_json_records_the_sources_and_older_ones_load(tmp_path):
    cfg, _ = resolve({"category": "bottle", "preset": "fast", "alpha": 0.25}, infer=False)
    write_config(tmp_path, cfg)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["sources"]["alpha"] == "flag" and data["sources"]["d_iter"] == "preset fast"
    loaded = Config.from_json(tmp_path / "config.json")
    assert loaded == cfg and loaded.sources == cfg.sources
    # a config.json from before the sources (and before train_crops): loads as it trained
    old = {k: v for k, v in data.items() if k not in ("sources", "train_crops")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = Config.from_json(tmp_path / "config.json")
    assert loaded == dataclasses.replace(cfg, train_crops="canvas")
    assert loaded.sources["alpha"] == "config.json" and loaded.sources["gp_weight"] == "paper"
    assert loaded.sources["train_crops"] == "older run"
