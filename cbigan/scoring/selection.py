"""Model selection without test labels: which periodic snapshot of a run the user gets.

A short GAN run swings from one evaluation to the next, so the last snapshot can be a lucky or an
unlucky one. The rule here looks at held-out *normal* training images only (never trained on, never
a test image):

* ``synthetic`` (default): every held-out image gets deterministic synthetic defects, local (a patch
  of another held-out image pasted elsewhere, a patch with inverted intensities) and global (a large
  region darkened or brightened, a large region moved; :func:`synthetic_defects`); the snapshot
  statistic is the auROC that separates the clean held-out images from their defective copies with
  the run's own anomaly score. The snapshot with the highest statistic wins; ties go to the later one.
* ``final``: the last weights, no selection (also what ``synthetic`` gives with fewer than
  :data:`MIN_IMAGES` held-out images, saying so).

The defects are drawn once per run (seeded), so every snapshot is judged on the same images.
"""

from __future__ import annotations

import numpy as np

from cbigan.core.config import SELECTION_RULES as RULES
from cbigan.scoring.metrics import MetricError, auroc


#: Fewest held-out images the synthetic rule judges snapshots on: with one image its auROC can only be
#: 0, 0.5 or 1 (two copies against one image), with four it moves in steps of 1/32.
MIN_IMAGES = 5


#: Local synthetic defects: a patch of another image pasted elsewhere, a patch with inverted intensities.
LOCAL_DEFECTS = ("paste", "invert")
#: Global synthetic defects: a large region darkened or brightened (a diffuse change: an inactive cell
#: region, a shadow, a wrong fill level) and a large region moved within the image (a misplaced part).
GLOBAL_DEFECTS = ("shade", "shift")
#: Every kind, in the order :func:`synthetic_defects` makes them.
DEFECT_KINDS = LOCAL_DEFECTS + GLOBAL_DEFECTS


def synthetic_defects(images: np.ndarray, seed: int = 0, min_frac: float = 0.08,
                      max_frac: float = 0.2, kinds=LOCAL_DEFECTS, regions=None) -> np.ndarray:
    """Defective copies of uint8 images [N, H, W, C]: one per image and kind of ``kinds``, kind by kind
    (all N copies of the first kind, then of the next: [len(kinds) * N, H, W, C]).

    Local kinds (:data:`LOCAL_DEFECTS`): ``paste``, a patch of another image (the same one when N is 1)
    from another location; ``invert``, a patch with inverted intensities; patch sides ``min_frac`` to
    ``max_frac`` of the image side, placed uniformly at random. Global kinds (:data:`GLOBAL_DEFECTS`):
    ``shade``, a region of 40-70% of each side scaled by 0.55-0.75 or 1.3-1.5 in intensity; ``shift``, a
    region of 30-60% of each side replaced by the image's content 15-30% of the side away (a part moved).
    ``regions`` [N, 2] ``(h, w)``: each image's own part of its canvas (tiles), where the defects go
    (None: the whole image)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    unknown = [k for k in kinds if k not in DEFECT_KINDS]
    if unknown:
        raise ValueError(f"unknown synthetic defect kind(s) {unknown}; choose from {DEFECT_KINDS}")
    rng = np.random.default_rng(seed)
    n, size_h, size_w, _ = images.shape
    own = np.tile([size_h, size_w], (n, 1)) if regions is None else np.asarray(regions, np.int64).reshape(n, 2)

    def box(h, w, lo, hi):
        ph = int(rng.integers(max(1, int(lo * h)), max(2, int(hi * h)) + 1))
        pw = int(rng.integers(max(1, int(lo * w)), max(2, int(hi * w)) + 1))
        ph, pw = min(ph, h), min(pw, w)
        return ph, pw, int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))

    out = []
    for kind in kinds:
        for i in range(n):
            img = images[i].copy()
            h, w = (int(v) for v in np.minimum(own[i], [size_h, size_w]))
            if kind in LOCAL_DEFECTS:
                ph, pw, y, x = box(h, w, min_frac, max_frac)
            if kind == "paste":
                j = (i + 1 + int(rng.integers(0, max(1, n - 1)))) % n if n > 1 else i
                sh, sw = (int(v) for v in np.minimum(own[j], [size_h, size_w]))
                ph, pw = min(ph, sh), min(pw, sw)
                sy, sx = int(rng.integers(0, sh - ph + 1)), int(rng.integers(0, sw - pw + 1))
                img[y:y + ph, x:x + pw] = images[j][sy:sy + ph, sx:sx + pw]
            elif kind == "invert":
                img[y:y + ph, x:x + pw] = 255 - img[y:y + ph, x:x + pw]
            elif kind == "shade":
                ph, pw, y, x = box(h, w, 0.4, 0.7)
                factor = rng.uniform(0.55, 0.75) if rng.random() < 0.5 else rng.uniform(1.3, 1.5)
                region = img[y:y + ph, x:x + pw].astype(np.float32) * factor
                img[y:y + ph, x:x + pw] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
            elif kind == "shift":
                ph, pw, y, x = box(h, w, 0.3, 0.6)
                dy = int(round(rng.uniform(0.15, 0.3) * h)) * (1 if rng.random() < 0.5 else -1)
                dx = int(round(rng.uniform(0.15, 0.3) * w)) * (1 if rng.random() < 0.5 else -1)
                sy, sx = int(np.clip(y + dy, 0, h - ph)), int(np.clip(x + dx, 0, w - pw))
                if (sy, sx) == (y, x):  # no room to move within the image: take it from the far side
                    sy, sx = h - ph - y, w - pw - x
                img[y:y + ph, x:x + pw] = images[i][sy:sy + ph, sx:sx + pw]
            out.append(img)
    return np.stack(out)


def separation_auroc(clean_scores, defect_scores) -> float:
    """auROC of 'defective copy' vs 'clean held-out image' under the run's anomaly score."""
    clean, defect = np.asarray(clean_scores).ravel(), np.asarray(defect_scores).ravel()
    labels = np.r_[np.zeros(len(clean)), np.ones(len(defect))]
    return auroc(labels, np.r_[clean, defect])


class SnapshotSelector:
    """Tracks the best snapshot of a run by the held-out statistic.

    ``score_fn(images_uint8, regions) -> image scores`` is the run's own scorer at its evaluation
    lambda; ``regions`` ([N, 2] int, each image's own height and width on its canvas, or None) are
    ``val_regions`` for the held-out images and the same for their synthetic-defect copies (made
    here: one per image and kind of :data:`DEFECT_KINDS`, :func:`synthetic_defects`). ``save_fn(step)`` persists the current weights as
    the selected snapshot (called on improvement).
    """

    def __init__(self, val_images, score_fn, save_fn, rule: str = "synthetic", seed: int = 0,
                 best: dict | None = None, val_regions=None):
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
        self.rule, self.score_fn, self.save_fn = rule, score_fn, save_fn
        self.val_images = np.asarray(val_images) if val_images is not None else np.zeros((0,))
        self.val_regions = None if val_regions is None else np.asarray(val_regions)
        self.active = rule == "synthetic" and len(self.val_images) >= MIN_IMAGES
        #: why the rule asked for is not applied (None when it is, or when it is 'final')
        self.note = None
        if rule == "synthetic" and not self.active:
            self.note = (f"note: --select synthetic needs at least {MIN_IMAGES} held-out images and this run "
                         f"has {len(self.val_images)}: the model is the last EMA weights (hold out more with "
                         f"--val-split, or pass --select final)")
        self.defects = None
        if self.active:
            # held-out images and their defective copies in one array (views of it), scored in one call
            n = len(self.val_images)
            self._all = np.concatenate([self.val_images, synthetic_defects(self.val_images, seed, kinds=DEFECT_KINDS,
                                                                              regions=self.val_regions)])
            self.val_images, self.defects = self._all[:n], self._all[n:]
        # the copies come kind by kind (:data:`DEFECT_KINDS`), each block in the held-out images' order
        self.defect_regions = (None if self.val_regions is None
                               else np.concatenate([self.val_regions] * len(DEFECT_KINDS)))
        self.best = best  # {"step": int, "value": float}

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(held-out images' scores [N], their synthetic-defect copies' scores [4N]) of the current
        weights, from one call of ``score_fn`` on both (one pass: the scorer runs its chunks side by side)."""
        regions = (None if self.val_regions is None
                   else np.concatenate([self.val_regions, self.defect_regions]))
        s = np.asarray(self.score_fn(self._all, regions))
        return s[:len(self.val_images)], s[len(self.val_images):]

    def observe(self, step: int, clean_scores=None, defect_scores=None) -> dict:
        """Judge the current weights; returns the row fields to log (empty when inactive).
        ``clean_scores`` / ``defect_scores``: the held-out images' / their copies' scores when the
        caller has them already (:meth:`scores`)."""
        if not self.active:
            return {}
        if clean_scores is None:
            clean_scores, defect_scores = self.scores()
        elif defect_scores is None:
            defect_scores = self.score_fn(self.defects, self.defect_regions)
        try:
            value = separation_auroc(clean_scores, defect_scores)
        except MetricError:  # NaN scores: never selected
            return {"val_synthetic_auroc": float("nan")}
        if self.best is None or value >= self.best["value"]:
            self.best = {"step": int(step), "value": float(value)}
            self.save_fn(step)
        return {"val_synthetic_auroc": value}

    def describe(self) -> str:
        if not self.active or self.best is None:
            return "final EMA weights"
        return (f"snapshot of step {self.best['step']}: highest synthetic-defect auROC on the held-out "
                f"normal images ({self.best['value']:.4f}; rule 'synthetic', no test labels)")
