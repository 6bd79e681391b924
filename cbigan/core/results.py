"""The one per-image result record: what the model says about N images (no TensorFlow import).

:class:`ImageResults` is returned by :meth:`cbigan.scoring.parts.Scorer.score` (score parts only), by
:meth:`cbigan.scoring.localization.Localizer.run` (score parts and the two map parts) and by evaluation (the
same, plus which test images they are, their labels and masks). Image scores and anomaly maps at any
lambda are recombinations of the stored parts through :mod:`cbigan.core.anomaly_score`, so a lambda sweep
costs no network call. ``scores_parts.npz`` and ``pixel_maps.npz`` of a run folder are its two halves
on disk (:meth:`ImageResults.save_parts`, :meth:`ImageResults.save_maps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cbigan.core.anomaly_score import DEFAULT_TOPK, RULES_WITH_MAPS, anomaly_map, best_patch, combine, evidence, rule_scores
from cbigan.core.runfolder import write_atomic


@dataclass
class ImageResults:
    """Per-image results of N images with P scoring patches each (P = 1 for objects).

    * ``l_r``, ``l_fd`` [N, P]: the score parts L_R and L_fD of every non-overlapping patch (>= 0);
    * ``map_r``, ``map_fd`` [N, S, S] float32 or None: the two parts of the anomaly maps at the model
      resolution (stitched, averaged over overlapping patches, smoothed with ``sigma`` at ``stride``);
    * ``paths``, ``labels`` ([N] 0 good / 1 defective), ``defect_types`` ("good" or the folder name),
      ``masks`` ([N, S, S] uint8 in {0, 1}) and ``has_mask`` ([N] bool: good, or a mask file exists)
      when the images are a labelled test set; ``regions`` ([N, 2] (h, w)): the top-left part of each
      map that is the image (the whole map but for tiles, whose canvas is the image mirrored);
    * ``global_r``, ``global_fd`` [N, p, p] or None: the map parts of each image's global view (tiles
      trained with global views), which the map rules add to the image score, and :meth:`maps` to the
      anomaly map, times ``global_weight``;
    * ``fusion``: the held-out statistics of the fused rules (:func:`cbigan.core.anomaly_score.fusion_stats`),
      or None;
    * ``fingerprint``: of the weights and config that produced them; ``seconds``: scoring wall time.
    """

    l_r: np.ndarray
    l_fd: np.ndarray
    paths: list | None = None
    labels: np.ndarray | None = None
    defect_types: list | None = None
    map_r: np.ndarray | None = None
    map_fd: np.ndarray | None = None
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    sigma: float | None = None
    stride: int | None = None
    regions: np.ndarray | None = None
    fingerprint: str = ""
    seconds: float = float("nan")
    global_r: np.ndarray | None = None
    global_fd: np.ndarray | None = None
    global_weight: float = 1.0
    fusion: dict | None = None

    def __len__(self) -> int:
        return len(self.l_r)

    # -- the score, through the one rule
    def image_scores(self, lam: float, rule: str = "paper", topk: float = DEFAULT_TOPK,
                     tile_maps: np.ndarray | None = None, margin: int = 0) -> np.ndarray:
        """[N] float64 image scores at ``lam`` by ``rule`` (:func:`cbigan.core.anomaly_score.rule_scores`:
        ``paper`` from the parts, the map rules from :meth:`tile_maps` over :attr:`regions` less
        ``margin`` map pixels, plus the global view's; ``tile_maps``: those maps at ``lam`` when the
        caller has them already)."""
        if rule in RULES_WITH_MAPS and tile_maps is None:
            tile_maps = self.tile_maps(lam)
        return np.asarray(rule_scores(rule, lam, l_r=self.l_r, l_fd=self.l_fd, maps=tile_maps, topk=topk,
                                      regions=self.regions, margin=margin, global_maps=self.global_maps(lam),
                                      global_weight=self.global_weight, fusion=self.fusion), np.float64)

    def evidence(self, lam: float, margin: int = 0, tile_maps: np.ndarray | None = None) -> dict:
        """Every kind of evidence at ``lam`` as [N] float64 image scores by name
        (:func:`cbigan.core.anomaly_score.evidence`; needs the maps)."""
        tiles = self.tile_maps(lam) if tile_maps is None else tile_maps
        ev = evidence(lam, l_r=self.l_r, l_fd=self.l_fd, maps=tiles, regions=self.regions, margin=margin,
                      global_maps=self.global_maps(lam))
        return {k: np.asarray(v, np.float64) for k, v in ev.items()}

    def global_maps(self, lam: float) -> np.ndarray | None:
        """[N, p, p] maps of the images' global views at ``lam``, or None (no global view)."""
        if self.global_r is None or self.global_fd is None:
            return None
        return np.asarray(combine(np.asarray(self.global_r, np.float32), np.asarray(self.global_fd, np.float32),
                                  lam), np.float32)

    def rule_scores(self, cfg) -> np.ndarray:
        """[N] image scores by the run's own rule: ``cfg.image_score`` at ``cfg.score_lambda`` with its
        ``score_topk`` and ``score_margin`` (a resolved :class:`cbigan.core.config.Config`)."""
        return self.image_scores(cfg.score_lambda, cfg.image_score, cfg.score_topk, margin=cfg.score_margin)

    def best_patch(self, lam: float) -> np.ndarray:
        """[N] row-major index of each image's highest-scoring patch at ``lam``."""
        return best_patch(self.l_r, self.l_fd, lam)

    @property
    def has_maps(self) -> bool:
        return self.map_r is not None and self.map_fd is not None

    def tile_maps(self, lam: float) -> np.ndarray:
        """[N, S, S] float32 maps of the model's own view at ``lam`` (the stitched tiles; for a run without
        global views, the anomaly maps), which the map rules score."""
        if not self.has_maps:
            raise ValueError("these results hold no anomaly maps")
        return np.asarray(combine(np.asarray(self.map_r, np.float32), np.asarray(self.map_fd, np.float32), lam),
                          np.float32)

    def maps(self, lam: float, tile_maps: np.ndarray | None = None) -> np.ndarray:
        """[N, S, S] float32 anomaly maps at ``lam`` (:func:`cbigan.core.anomaly_score.anomaly_map`: the
        :meth:`tile_maps`, plus ``global_weight`` x the global view's map over each region when the run
        has global views); ``tile_maps``: those at ``lam`` when the caller has them already."""
        tiles = self.tile_maps(lam) if tile_maps is None else tile_maps
        return np.asarray(anomaly_map(tiles, self.global_maps(lam), self.regions, self.global_weight), np.float32)

    def maps_match(self, sigma: float, stride: int, global_view: bool = False) -> bool:
        return (self.has_maps and self.sigma is not None and math.isclose(self.sigma, sigma)
                and int(self.stride) == int(stride) and (self.global_r is not None) == bool(global_view))

    def with_maps(self, other: "ImageResults | None") -> "ImageResults":
        """These score parts with the maps (and masks, sigma, stride) of ``other``."""
        if other is None:
            return replace(self, map_r=None, map_fd=None, masks=None, has_mask=None, sigma=None, stride=None,
                           regions=None, global_r=None, global_fd=None)
        return replace(self, map_r=other.map_r, map_fd=other.map_fd, masks=other.masks,
                       has_mask=other.has_mask, sigma=other.sigma, stride=other.stride, regions=other.regions,
                       global_r=other.global_r, global_fd=other.global_fd, global_weight=other.global_weight,
                       fusion=self.fusion if other.fusion is None else other.fusion)

    # -- on disk
    def save_parts(self, path: str | Path) -> None:
        """``scores_parts.npz``: the score parts with what identifies every row (atomic)."""
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, l_r=self.l_r, l_fd=self.l_fd, paths=np.array(self.paths, dtype=str),
                                    labels=self.labels, defect_types=np.array(self.defect_types, dtype=str),
                                    fingerprint=np.array(self.fingerprint), seconds=np.array(self.seconds))
        write_atomic(Path(path), write)

    @classmethod
    def load_parts(cls, path: str | Path) -> "ImageResults":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["l_r"], z["l_fd"], z["paths"].tolist(), z["labels"], z["defect_types"].tolist(),
                       fingerprint=str(z["fingerprint"]), seconds=float(z["seconds"]))

    def save_maps(self, path: str | Path) -> None:
        """``pixel_maps.npz``: the two map parts (float32) and the masks (bit-packed, when known), atomic."""
        def write(tmp):
            with open(tmp, "wb") as f:
                masks = np.zeros(self.map_r.shape, bool) if self.masks is None else self.masks.astype(bool)
                has_mask = np.zeros(len(self.map_r), bool) if self.has_mask is None else self.has_mask
                np.savez(f, map_r=self.map_r.astype(np.float32), map_fd=self.map_fd.astype(np.float32),
                         masks=np.packbits(masks, axis=-1), with_masks=np.array(self.masks is not None),
                         mask_shape=np.array(masks.shape), has_mask=np.asarray(has_mask, bool),
                         sigma=np.array(float(self.sigma)), stride=np.array(int(self.stride)),
                         paths=np.array(self.paths, dtype=str), fingerprint=np.array(self.fingerprint),
                         regions=np.zeros((0, 2), np.int32) if self.regions is None else np.asarray(self.regions),
                         **({} if self.global_r is None else
                            {"global_r": np.asarray(self.global_r, np.float32),
                             "global_fd": np.asarray(self.global_fd, np.float32)}))
        write_atomic(Path(path), write)

    @classmethod
    def load_maps(cls, path: str | Path, global_weight: float = 1.0, fusion: dict | None = None) -> "ImageResults":
        """The maps of ``pixel_maps.npz`` (no score parts: ``l_r`` and ``l_fd`` are empty); the file does
        not hold the global view's weight nor the fused rules' statistics: pass the run's
        (:func:`cbigan.core.anomaly_score.global_weight`, :func:`cbigan.core.anomaly_score.fusion_stats`)."""
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(v) for v in z["mask_shape"])
            masks = np.unpackbits(z["masks"], axis=-1, count=shape[-1]).reshape(shape)
            with_masks = bool(z["with_masks"]) if "with_masks" in z.files else True
            empty = np.zeros((0, 0))
            return cls(empty, empty, z["paths"].tolist(), map_r=z["map_r"], map_fd=z["map_fd"],
                       masks=masks if with_masks else None, has_mask=z["has_mask"] if with_masks else None,
                       regions=z["regions"] if "regions" in z.files and len(z["regions"]) else None, sigma=float(z["sigma"]), stride=int(z["stride"]),
                       fingerprint=str(z["fingerprint"]),
                       global_r=z["global_r"] if "global_r" in z.files else None,
                       global_fd=z["global_fd"] if "global_fd" in z.files else None,
                       global_weight=float(global_weight), fusion=fusion)
