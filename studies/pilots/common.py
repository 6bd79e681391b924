"""What the pilots that read a trained run share: the run with its data folder, its held-out images, and
one result row printed and appended to a CSV. Not part of the product."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def load_run(run, data_dir: str | None = None):
    """``(cfg, model)`` of a trained run folder: its resolved config (data folder replaced by
    ``data_dir`` when given) and its weights."""
    from cbigan.evaluation import _with_data_dir
    from cbigan.model import load_trained

    cfg, model = load_trained(run)
    cfg = cfg.resolved()
    return (_with_data_dir(cfg, data_dir) if data_dir else cfg), model


def held_out_images(cfg, every: int = 1):
    """``(images [N, S, S, 3] uint8, regions [N, 2] int32)``: the run's held-out train/good images (the
    same seeded split as training), every ``every``-th only."""
    from cbigan.data import load_resized, split_train_val
    from cbigan.layout import TRAIN, category_dir, good_folder, list_images

    good = good_folder(category_dir(cfg.data_dir, cfg.category) / TRAIN)
    _, paths = split_train_val(list_images(good), cfg.val_split, cfg.seed)
    regions = []
    images, _ = load_resized(paths[::every], cfg, "held-out images", False, regions)
    return images, np.array(regions, np.int32)


def run_label(run) -> str:
    return f"{Path(run).parent.name}/{Path(run).name}"


def emit(row: dict, out: str | None) -> None:
    """Print the row (floats to 4 places) and append it to the CSV ``out`` (header when new)."""
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if out:
        out = Path(out)
        pd.DataFrame([row]).to_csv(out, mode="a", header=not out.exists(), index=False)
