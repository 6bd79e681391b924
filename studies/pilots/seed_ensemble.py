"""Pilot (not a feature): the maps of several runs (seeds) standardized and averaged, then the map maximum;
and the mean of the runs' standardized image scores.

    python studies/pilots/seed_ensemble.py tiles_image-seed1 tiles_image-seed2 tiles_image-seed3

Runs are read from runs/small_defects/magnetic_tile. Result: results/small_defects/README.md (seventh study).
"""
from pathlib import Path
import sys, numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.results import ImageResults
from cbigan.anomaly_score import map_scores
from cbigan.metrics import auroc
B = str(Path(__file__).resolve().parents[2] / 'runs/small_defects/magnetic_tile') + '/'
runs = sys.argv[1:]
sc = pd.read_csv(B + runs[0] + '/scores.csv'); lab = sc.label.values
acc = None; single = []
for r in runs:
    mp = ImageResults.load_maps(B + r + '/pixel_maps.npz')
    m = mp.maps(0.1); regions = mp.regions
    s = map_scores(m, 'map_max', regions=regions, margin=32); single.append(s)
    print(r, round(auroc(lab, s), 4), flush=True)
    # standardize each run's maps by its pixel median/p99 over the test images (no labels)
    v = np.concatenate([mm[:h, :w].ravel()[::97] for mm, (h, w) in zip(m, regions)])
    med, p99 = np.median(v), np.percentile(v, 99)
    m = (m - med) / (p99 - med)
    acc = m if acc is None else acc + m
    del mp
s = map_scores(acc / len(runs), 'map_max', regions=regions, margin=32)
print('mean of maps', round(auroc(lab, s), 4))
z = [(x - np.median(x)) / np.std(x) for x in single]
print('mean of standardized scores', round(auroc(lab, np.mean(z, 0)), 4))
