"""Pilot (not a feature): anomaly maps from the EMA encoder's own multi-scale features (16, 8 and 4 px
grids of a 64 px tile, 45 channels at 16x16) with a Gaussian per in-tile position (PaDiM-like) or one for
all positions, fitted on the training tiles inside each image; and the Mahalanobis distance of each tile's
latent code. Image score: the map maximum (margin as the run's), beside the run's own map_max.

    python studies/pilots/feature_gaussian.py runs/small_defects/magnetic_tile/tiles_image-seed1

Result: results/small_defects/README.md (seventh study).
"""
from pathlib import Path
import sys, time, numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tensorflow as tf, keras
from scipy.ndimage import gaussian_filter
from cbigan.model import load_trained
from cbigan.data import load_train_set, load_test_set
from cbigan.kinds import kind_of
from cbigan.metrics import auroc
run = sys.argv[1]
LAYERS = sys.argv[2].split(',') if len(sys.argv) > 2 else ['leaky_re_lu_8', 'leaky_re_lu_11', 'leaky_re_lu_14']
cfg, model = load_trained(run)
cfg = cfg.resolved()
kind = kind_of(cfg)
enc = model.ema_encoder
names = [l.name for l in enc.layers]
outs = [enc.get_layer(n).output for n in LAYERS] + [enc.get_layer('latent').output]
sub = keras.Model(enc.inputs, outs)
R = enc.get_layer(LAYERS[0]).output.shape[1]  # feature resolution per tile
P = cfg.patch_size; G = cfg.image_size // P; cell = P // R
@tf.function
def feats(x):
    o = sub(x)
    f = [tf.image.resize(t, (R, R), method='bilinear') if t.shape[1] != R else t for t in o[:-1]]
    return tf.concat(f, -1), o[-1]
def run_images(images):
    F, Z = [], []
    for i in range(0, len(images), 4):
        x = kind.model_inputs(tf.constant(images[i:i+4]), cfg)
        f, z = feats(x)
        F.append(f.numpy().reshape(-1, G * G, R, R, f.shape[-1])); Z.append(z.numpy().reshape(-1, G * G, z.shape[-1]))
    return np.concatenate(F), np.concatenate(Z)
t0 = time.time()
tr = load_train_set(cfg)
Ftr, Ztr = run_images(tr.images)
print('train features', Ftr.shape, f'{time.time()-t0:.0f}s', flush=True)
reg = tr.regions if len(tr.regions) else np.tile([cfg.image_size]*2, (len(Ftr), 1))
inside = np.array([[(r // G * P + P <= h) and (r % G * P + P <= w) for r in range(G * G)] for h, w in reg])
fi = Ftr[inside]  # [T, R, R, C]
C = fi.shape[-1]
mu = fi.mean(0)
X = (fi - mu).reshape(len(fi), R * R, C)
cov = np.einsum('tpc,tpd->pcd', X, X) / (len(fi) - 1) + 0.01 * np.eye(C)
icov = np.linalg.inv(cov).reshape(R, R, C, C)
zi = Ztr[inside]; zmu = zi.mean(0); zicov = np.linalg.inv(np.cov(zi.T) + 0.01 * np.eye(zi.shape[1]))
# global Gaussian (all positions pooled)
gmu = fi.reshape(-1, C).mean(0); gicov = np.linalg.inv(np.cov(fi.reshape(-1, C).T) + 0.01 * np.eye(C))
del Ftr, tr
te = load_test_set(cfg)
Fte, Zte = run_images(te.images)
lab = te.labels; dt = np.array(te.defect_types)
regs = te.regions if te.regions is not None and len(te.regions) else np.tile([cfg.image_size]*2, (len(lab), 1))
margin = cfg.score_margin
def stitch(v):  # [G*G, R, R] -> [G*R, G*R]
    return v.reshape(G, G, R, R).transpose(0, 2, 1, 3).reshape(G * R, G * R)
res = {}
for name in ('pos', 'global'):
    for sig in (0, 1, 2):
        s = np.empty(len(lab))
        for i in range(len(lab)):
            d = Fte[i] - (mu if name == 'pos' else gmu)
            if name == 'pos':
                m = np.sqrt(np.einsum('kxyc,xycd,kxyd->kxy', d, icov, d))
            else:
                m = np.sqrt(np.einsum('kxyc,cd,kxyd->kxy', d, gicov, d))
            m = stitch(m)
            if sig: m = gaussian_filter(m, sig)
            h, w = [int(np.ceil(v / cell)) for v in regs[i]]; mg = margin // cell
            s[i] = m[mg:max(h - mg, mg + 1), mg:max(w - mg, mg + 1)].max()
        res[f'{name} sigma{sig}'] = s
zs = np.empty(len(lab))
for i in range(len(lab)):
    h, w = regs[i]
    ok = [r for r in range(G * G) if (r // G * P < h) and (r % G * P < w)]
    d = Zte[i, ok] - zmu
    zs[i] = np.sqrt(np.einsum('kc,cd,kd->k', d, zicov, d)).max()
res['latent'] = zs
base = pd.read_csv(run + '/scores.csv').score.values
res['cbigan map_max'] = base
def per_type(s):
    return {t: round(auroc(lab[(dt == t) | (lab == 0)], s[(dt == t) | (lab == 0)]), 3) for t in sorted(set(dt) - {'good'})} if len(set(dt)) > 2 else {}
for k, s in res.items():
    print(f'{k:16s} {auroc(lab, s):.4f}', per_type(s), flush=True)
rk = lambda s: (s - np.median(s)) / s.std()
print('rank mix pos1+base', round(auroc(lab, rk(res['pos sigma1']) + rk(base)), 4))
