"""Tiny synthetic categories in the MVTec AD layout, with obvious defects (used by the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from cbigan.core.runfolder import write_config


def _object_image(rng, size: int) -> np.ndarray:
    """A grey disk on a dark background, slightly shifted and noisy."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-2, 2, 2)
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size * 0.3) ** 2
    img = np.full((size, size, 3), 40.0)
    img[disk] = 170.0
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture_image(rng, size: int) -> np.ndarray:
    """Diagonal stripes with a random phase."""
    yy, xx = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi)
    v = 128 + 60 * np.sin((xx + yy) / 6.0 + phase)
    img = np.repeat(v[..., None], 3, axis=2) + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _add_defect(rng, img: np.ndarray, frac: float = 0.25, color=(250, 20, 20), corner: bool = False):
    """Paint a square of ``color`` (saturated red by default); return the image and its mask.

    ``corner`` puts it in the background near a corner instead of around the centre.
    """
    size = img.shape[0]
    s = max(4, int(size * frac))
    if corner:
        y, x = rng.integers(1, max(2, size // 8), 2)
    else:
        y, x = rng.integers(size // 4, size - size // 4 - s // 2, 2)
    img = img.copy()
    img[y:y + s, x:x + s] = color
    mask = np.zeros((size, size), np.uint8)
    mask[y:y + s, x:x + s] = 255
    return img, mask


def make_category(root: Path, name: str = "synthetic", kind: str = "object", size: int = 64,
                  n_train: int = 24, n_good: int = 6, n_defect: int = 6, masks: bool = True,
                  seed: int = 0, defect_color=(250, 20, 20), defect_frac: float | None = None,
                  defect_in_corner: bool = False) -> Path:
    """Write ``root/name`` in the MVTec layout and return it."""
    rng = np.random.default_rng(seed)
    make = _object_image if kind == "object" else _texture_image
    cat = Path(root) / name
    for sub in ("train/good", "test/good", "test/red_square"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    if masks:
        (cat / "ground_truth/red_square").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(make(rng, size)).save(cat / f"train/good/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(make(rng, size)).save(cat / f"test/good/{i:03d}.png")
    for i in range(n_defect):
        img, mask = _add_defect(rng, make(rng, size),
                                defect_frac or (0.25 if kind == "object" else 0.1),
                                defect_color, defect_in_corner)
        Image.fromarray(img).save(cat / f"test/red_square/{i:03d}.png")
        if masks:
            Image.fromarray(mask).save(cat / f"ground_truth/red_square/{i:03d}_mask.png")
    return cat


def make_untrained_run(root, tmp, category, **kw) -> dict:
    """A run folder (config.json + model.weights.h5) of an untrained model, for scoring tests."""
    from cbigan.core.config import Config
    from cbigan.model.gan import build_model
    from cbigan.core.runfolder import save_weights_atomic

    cfg = Config(category=category, data_dir=str(root), output_dir=str(tmp), run_name="r", **kw).resolved()
    run = Path(tmp) / category / "r"
    run.mkdir(parents=True)
    write_config(run, cfg)
    model = build_model(cfg)
    save_weights_atomic(model, run / "model.weights.h5")
    return {"run": run, "cfg": cfg, "model": model}


#: A small CBiGAN that learns a 64 px synthetic category in about 60 steps (the learning tests).
LEARNING = dict(image_size=64, patch_size=64, steps=60, batch_size=16, d_iter=1, alpha=0.5, lr_d=1e-3,
                lr_eg=1e-3, width=2, latent_dim=16, ema_decay=0.9, ema_every=1, log_every=20, eval_every=60,
                preview_every=60, seed=42)


def make_learning_category(root, name: str, n_train: int = 32, n_good: int = 10, n_defect: int = 10) -> Path:
    """Bright squares in the dark background: |x| is unchanged, so an untrained model cannot see them."""
    return make_category(root, name, kind="object", size=64, n_train=n_train, n_good=n_good,
                         n_defect=n_defect, defect_color=(215, 215, 215), defect_frac=0.2,
                         defect_in_corner=True, masks=False)


def learning_config(root, tmp, name: str, **kw):
    """The resolved :data:`LEARNING` config of category ``name`` under ``root``, runs under ``tmp``."""
    from cbigan.core.config import Config

    return Config(**{"category": name, "data_dir": str(root), "output_dir": str(Path(tmp) / "runs"),
                     "run_name": "r", **LEARNING, **kw}).resolved()
