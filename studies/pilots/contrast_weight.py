"""Pilot (not a feature): a tiles run's image scores (map_max on standardized images) multiplied by a power
of the image's own standard deviation (giving back part of the contrast that ``--normalize per_image``
divides out), or by max(std, f * the normal test images' median std).

    python studies/pilots/contrast_weight.py

Reads runs/small_defects/magnetic_tile/tiles_image-seed{1,2,3}/scores.csv and the images. The floor uses
the normal test images' median (test labels: a pilot's upper bound). Result: results/small_defects/README.md
(seventh study).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from cbigan.metrics import auroc  # noqa: E402


def main():
    for seed in (1, 2, 3):
        sc = pd.read_csv(ROOT / f"runs/small_defects/magnetic_tile/tiles_image-seed{seed}/scores.csv")
        std = np.array([np.asarray(Image.open(ROOT / p if not Path(p).is_absolute() else p), np.float32).std()
                        for p in sc.path])
        lab, s = sc.label.values, sc.score.values
        med = np.median(std[lab == 0])
        out = {"s": auroc(lab, s)}
        for p in (0.25, 0.5, 1.0):
            out[f"s*std^{p}"] = auroc(lab, s * std ** p)
        for f in (0.5, 0.75, 1.0):
            out[f"s*max(std,{f}med)"] = auroc(lab, s * np.maximum(std, f * med))
        print(seed, {k: round(v, 4) for k, v in out.items()})


if __name__ == "__main__":
    main()
