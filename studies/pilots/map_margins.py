"""Pilot (not a feature): on a tiles run's stored maps, image auROC per defect type by the map maximum at
score margins 0-32 px, and by per-image normalizations of the map (less its median, over it, over its MAD
or standard deviation, less its 90th percentile) and other statistics of it; auROC per lighting group.

    python studies/pilots/map_margins.py runs/small_defects/magnetic_tile/tiles_image-seed1

Result: results/small_defects/README.md (seventh study).
"""
from pathlib import Path
import sys, numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.results import ImageResults
from cbigan.anomaly_score import map_scores, scored_box
from cbigan.metrics import auroc
run = sys.argv[1]
mp = ImageResults.load_maps(run + '/pixel_maps.npz')
sc = pd.read_csv(run + '/scores.csv')
lab = sc.label.values; dt = sc.defect_type.values
maps = mp.maps(0.1)
regions = mp.regions if mp.regions is not None else np.tile(maps.shape[1:], (len(maps), 1))
print(run, maps.shape, 'sigma', mp.sigma)
def per_type(s):
    out = {}
    for t in sorted(set(dt) - {'good'}):
        m = (dt == t) | (lab == 0)
        out[t] = round(auroc(lab[m], s[m]), 3)
    return out
feats = {}
for margin in (0, 8, 16, 32):
    s = map_scores(maps, 'map_max', regions=regions, margin=margin)
    print('margin', margin, 'map_max', round(auroc(lab, s), 4), per_type(s))
# per-image stats at margin 32
M = 32 if mp.regions is not None else 0
stats = []
for i, (h, w) in enumerate(regions):
    t, b, l, r = scored_box(int(h), int(w), M)
    f = maps[i, t:b, l:r].ravel()
    q = np.percentile(f, [10, 50, 90, 99])
    stats.append((f.max(), f.mean(), f.std(), *q, np.median(np.abs(f - q[1]))))
S = pd.DataFrame(stats, columns=['max', 'mean', 'std', 'p10', 'p50', 'p90', 'p99', 'mad'])
rules = {
 'max': S['max'], 'mean': S['mean'], 'p99': S.p99,
 'max-med': S['max'] - S.p50, 'max/med': S['max'] / S.p50,
 '(max-med)/mad': (S['max'] - S.p50) / S.mad, '(max-med)/std': (S['max'] - S.p50) / S['std'],
 'max-p90': S['max'] - S.p90, 'std': S['std'],
}
for k, v in rules.items():
    v = v.values
    print(f'{k:15s} {auroc(lab, v):.4f}', per_type(v))
if 'exp' in sc.path.iloc[0]:
    sc['grp'] = sc.path.str.extract(r'/(exp\d)_')[0]
    for g, d in sc.groupby('grp'):
        idx = d.index.values
        print(g, 'n', len(idx), 'good', int((lab[idx]==0).sum()), 'auroc max', round(auroc(lab[idx], S['max'].values[idx]), 3) if len(set(lab[idx]))>1 else '-', 'median good max', round(np.median(S['max'].values[idx][lab[idx]==0]),3))
