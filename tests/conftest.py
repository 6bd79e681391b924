import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data dir with a tiny object category 'synth_obj' and a tiny texture category 'synth_tex'."""
    from synthetic import make_category

    root = tmp_path_factory.mktemp("data")
    make_category(root, "synth_obj", kind="object", size=64)
    make_category(root, "synth_tex", kind="texture", size=128, n_train=6, n_good=4, n_defect=4)
    return root


def shared_category(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not available at {path}")
    return path
