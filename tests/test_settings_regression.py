"""Settings resolution (``cbigan.core.config.resolve``) gives, for a grid of presets x input kinds x flags, the
values the code gave before the settings were resolved in one place (commit cdf4e0e).

``settings_regression.json`` was recorded with that commit's code by :func:`record` (run with the old
``cbigan`` first on ``sys.path``): for each case, the resolved values that differ from ``Config()``'s
defaults, or the error it raised. It is a regression table, not a statement of the new logic: a
changed default belongs in a deliberate edit of the table, with the evidence in its commit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

TABLE = Path(__file__).with_name("settings_regression.json")
#: Fields that depend on where the test runs, not on the settings.
SKIP = ("data_dir", "output_dir", "extra", "sources")
PRESETS = ("paper", "fast")
#: (category, training images written for it or None): MVTec AD names, an unknown folder of strips
#: (inferred as tiles), one of equal squares (stays an object) and a folder with no images.
CATEGORIES = {"bottle": None, "cable": None, "grid": None, "parts": [(200, 520)] * 3,
              "squares": [(256, 256)] * 3, "nodata": None}
KINDS = (None, "object", "texture", "tiles")
FLAG_SETS = {
    "none": [],
    "size96": ["--image-size", "96"],
    "paper_score": ["--image-score", "paper"],
    "topk": ["--image-score", "map_topk", "--score-topk", "0.05"],
    "no_gv": ["--global-views", "0"],
    "mixed": ["--width", "4", "--select", "synthetic", "--normalize", "none", "--alpha", "0.3"],
    "every10": ["--eval-every", "10", "--steps", "100", "--minutes", "2"],
    "patch32": ["--image-size", "128", "--patch-size", "32"],
    "geometry": ["--rotation", "10", "--score-margin", "3", "--train-crops", "canvas", "--scale", "0.5"],
}
FLAG_CASES = (("bottle", None), ("grid", None), ("parts", None), ("nodata", "tiles"), ("squares", None))


def cases():
    """(case id, kind of call, category, kind, preset, flags)."""
    out = []
    for preset in PRESETS:
        for category in CATEGORIES:
            for kind in KINDS:
                out.append((f"cli/{preset}/{category}/{kind}/none", "cli", category, kind, preset, []))
        for category, kind in FLAG_CASES:
            for name, flags in FLAG_SETS.items():
                if name != "none":
                    out.append((f"cli/{preset}/{category}/{kind}/{name}", "cli", category, kind, preset, flags))
        for category in ("bottle", "grid", "nodata"):  # Config(...).resolved(): the preset's data layer only
            for kind in KINDS:
                out.append((f"config/{preset}/{category}/{kind}", "config", category, kind, preset, []))
    return out


def write_data(root: Path) -> Path:
    from PIL import Image

    for category, sizes in CATEGORIES.items():
        good = root / category / "train" / "good"
        if sizes:
            good.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                Image.fromarray(np.full((h, w), 100 + i, np.uint8)).save(good / f"{i:03d}.png")
    return root


def values(how, category, kind, preset, flags, root: Path) -> dict:
    """What the code resolves for one case: the fields that differ from ``Config()``, or the error."""
    from cbigan.cli.train import parse_args
    from cbigan.core.config import Config

    try:
        if how == "cli":
            argv = ["--category", category, "--data-dir", str(root), "--preset", preset] + list(flags)
            cfg = parse_args(argv + (["--kind", kind] if kind else []))[0]
        else:
            cfg = Config(category=category, kind=kind, preset=preset).resolved()
    except ValueError as e:
        return {"error": str(e)}
    base = dataclasses.asdict(Config())
    got = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as in the table
    return {k: v for k, v in got.items() if k not in SKIP and v != json.loads(json.dumps(base[k]))}


def record(root: Path) -> None:
    """Write the table from the code on ``sys.path`` (the old code, once)."""
    write_data(root)
    table = {case: values(how, c, k, p, f, root) for case, how, c, k, p, f in cases()}
    TABLE.write_text("{\n" + ",\n".join(f"{json.dumps(case)}: {json.dumps(v, sort_keys=True)}"
                                         for case, v in table.items()) + "\n}\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("settings"))


@pytest.fixture(scope="module")
def table():
    return json.loads(TABLE.read_text())


def test_the_table_covers_every_case(table):
    assert sorted(table) == sorted(case for case, *_ in cases())


@pytest.mark.parametrize("case,how,category,kind,preset,flags", cases(), ids=[c[0] for c in cases()])
def test_resolution_gives_the_recorded_values(case, how, category, kind, preset, flags, data_root, table):
    assert values(how, category, kind, preset, flags, data_root) == table[case]
