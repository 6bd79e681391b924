"""Pilot (not a feature): the anomaly map divided by (or standardized with) the median / 99th percentile of
normal maps at the same distance from the image's border, learnt on one half of the normal test images and
applied to the other half (2 folds), then the map maximum at margins 0-32 px.

    python studies/pilots/border_profile.py runs/small_defects/magnetic_tile/tiles_image-seed1

Uses test labels of normal images (a pilot's upper bound). Result: results/small_defects/README.md
(seventh study).
"""
from pathlib import Path
import sys, numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cbigan.results import ImageResults
from cbigan.metrics import auroc
run = sys.argv[1]; D = 64
mp = ImageResults.load_maps(run + '/pixel_maps.npz')
sc = pd.read_csv(run + '/scores.csv'); lab = sc.label.values; dt = sc.defect_type.values
maps = mp.maps(0.1)
n, H, W = maps.shape
regions = mp.regions if mp.regions is not None else np.tile([H, W], (n, 1))
def dist(h, w):
    i = np.arange(h)[:, None]; j = np.arange(w)[None, :]
    return np.minimum(np.minimum(i, h - 1 - i), np.minimum(j, w - 1 - j)).clip(max=D)
dists = [dist(int(h), int(w)) for h, w in regions]
def crop(i): h, w = regions[i]; return maps[i, :h, :w]
def profile(idx):
    med = np.zeros(D + 1); hi = np.zeros(D + 1)
    vals = [[] for _ in range(D + 1)]
    for i in idx:
        m, d = crop(i), dists[i]
        for k in range(D + 1):
            v = m[d == k]
            vals[k].append(v[::max(1, v.size // 2000)])
    for k in range(D + 1):
        v = np.concatenate(vals[k]); med[k] = np.median(v); hi[k] = np.percentile(v, 99)
    return med, hi
rng = np.random.default_rng(0)
fold = rng.integers(0, 2, n)
good = np.where(lab == 0)[0]
prof = {f: profile(good[fold[good] == f]) for f in (0, 1)}
print('profile med (fold0) d=0,4,8,16,32,48,64:', np.round(prof[0][0][[0,4,8,16,32,48,64]], 3))
print('profile p99 (fold0):', np.round(prof[0][1][[0,4,8,16,32,48,64]], 3))
def per_type(s):
    return {t: round(auroc(lab[(dt == t) | (lab == 0)], s[(dt == t) | (lab == 0)]), 3) for t in sorted(set(dt) - {'good'})}
for name in ('ratio', 'z99', 'diff'):
  for margin in (0, 4, 8, 16, 32):
    s = np.empty(n)
    for i in range(n):
        med, hi = prof[1 - fold[i]]
        m, d = crop(i), dists[i]
        if name == 'ratio': z = m / med[d]
        elif name == 'z99': z = (m - med[d]) / (hi[d] - med[d])
        else: z = m - med[d]
        s[i] = z[d >= margin].max()
    print(f'{name} margin {margin}: {auroc(lab, s):.4f}', per_type(s), flush=True)
