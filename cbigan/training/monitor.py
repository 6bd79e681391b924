"""Monitoring during training: the label-free selection's scoring, test-set monitoring and previews,
each due every ``eval_every`` / ``monitor_every`` / ``preview_every`` steps, with the scoring that
chooses nothing held to a share of the wall time (:data:`EVAL_SHARE`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cbigan.core.config import Config
from cbigan.core.kinds import kind_of
from cbigan.core.runfolder import EVAL_LOG, SELECTED, SELECTED_INFO, append_csv, save_weights_atomic, write_json_atomic
from cbigan.model.networks import feature_extractor
from cbigan.scoring.localization import ImageScorer
from cbigan.scoring.metrics import MetricError, image_metrics
from cbigan.scoring.parts import score_patches
from cbigan.scoring.selection import SnapshotSelector
from cbigan.training import callbacks as cb
from cbigan.training.previews import save_preview

#: Scoring that chooses nothing (test-set monitoring; the held-out images' score when the last weights
#: are the model, ``--select final``) takes at most this share of the wall time since the monitor
#: started: a due one waits while its predicted cost (seconds per image of the last scoring times the
#: images) would pass it: on tiles' large canvases a test set can take minutes, many steps' worth, while
#: a small test set is never held back (:data:`EVAL_FREE_S`) (why: docs/decisions.md).
EVAL_SHARE = 0.1
#: Such scoring predicted to take under this many seconds always runs when due.
EVAL_FREE_S = 2.0
#: ... and the test set's at the end of training, the run's own test figure, under this many.
FINAL_FREE_S = 60.0

class TrainingMonitor:
    """Test-set monitoring and previews during training (uses the EMA networks, like every output)."""

    def __init__(self, model, cfg: Config, run_dir: Path, test_set, val_images, start_step: int = 0,
                 tensorboard: cb.TensorBoardLogger | None = None, val_regions=None):
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.tensorboard = tensorboard  # also writes evaluations and previews there, when given
        self.test_set, self.val_images = test_set, val_images
        self.features = feature_extractor(model.critic, cfg.feature_layer)  # previews
        scorer = ImageScorer(model, cfg)              # the run's own image-score rule
        self.image_scorer = lambda images, regions: scorer(images, regions=regions)
        self.test_scorer = lambda images: scorer(images, regions=getattr(test_set, "regions", None))
        self.best = None  # (auroc, step, weights) for --select-on-test
        # test-set monitoring: at the first evaluation past each multiple of monitor_every, at the end
        self.monitored = start_step // cfg.monitor_every if cfg.monitor_every else None
        self.t0 = time.monotonic()
        self.last = {}
        self.optional_s = 0.0         # seconds spent in scoring that chooses nothing (EVAL_SHARE)
        self.s_per_image = None       # the last scoring's seconds per image (None: none timed yet)
        self.selector = SnapshotSelector(
            val_images, self.image_scorer,
            self._save_selected, rule="final" if cfg.select_on_test else cfg.select, seed=cfg.seed,
            best=self._previous_selection(start_step), val_regions=val_regions)
        if self.selector.active:
            self.val_images = self.selector.val_images  # a view of the selector's array: held once
        if self.selector.note and start_step == 0:
            print(self.selector.note)

    def _previous_selection(self, start_step: int):
        """On resume: the snapshot chosen before the interruption, if it precedes the resumed step
        (a later one is re-judged when the deterministic replay reaches it)."""
        info = self.run_dir / SELECTED_INFO
        if start_step and info.is_file() and (self.run_dir / SELECTED).is_file():
            best = json.loads(info.read_text())
            if best.get("step", start_step + 1) <= start_step:
                return best
        return None

    def _save_selected(self, step: int) -> None:
        """Keep the newly selected snapshot in memory (a copy of the weights, milliseconds); it is
        written with the next backup (:meth:`flush_selected`), so a resume finds it beside the backup."""
        self.pending_selected = (self.model.get_weights(), dict(self.selector.best))

    pending_selected = None  # (weights, selector.best) not written yet

    def flush_selected(self) -> None:
        """Write the snapshot held in memory, if any: ``SELECTED`` (its weights, with the optimizer
        state of the moment, which nothing reads from it), then ``SELECTED_INFO``."""
        if self.pending_selected is None:
            return
        weights, best = self.pending_selected
        (self.run_dir / SELECTED).parent.mkdir(exist_ok=True)
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            save_weights_atomic(self.model, self.run_dir / SELECTED)
        finally:
            self.model.set_weights(current)
        write_json_atomic(self.run_dir / SELECTED_INFO, best)
        self.pending_selected = None

    def evaluate(self, step: int, final: bool = False) -> dict:
        """One ``eval_log.csv`` row: the label-free snapshot selection (held-out images), and the
        test-set monitoring when it is due (:meth:`monitor_due`; ``final``: the run's last evaluation),
        else empty test columns (None). Scoring that chooses nothing waits while it would pass
        :data:`EVAL_SHARE` of the wall time; an evaluation left with nothing to score writes no row
        and returns {}."""
        row = {"step": step, "seconds": round(time.monotonic() - self.t0, 1)}
        scored = False  # anything at this evaluation
        if len(self.val_images):
            if self.selector.active:  # held-out images and their synthetic-defect copies in one call
                val, defects = self._timed(lambda: self.selector.scores(), 3 * len(self.val_images))  # + 2 copies each
                scored = True
            elif final or self.affordable(len(self.val_images)):  # informative only: the last weights
                val = self._timed(lambda: self.image_scorer(self.val_images, self.selector.val_regions),
                                  len(self.val_images), optional=not final)
                defects, scored = None, True
            if scored:
                row["val_score_mean"] = float(np.mean(val))
                row.update(self.selector.observe(step, val, defects))
        if self.test_set is not None:
            monitored = self.final_monitor_affordable() if final else self.monitor_due(step)
            if monitored or scored:
                row.update(test_auroc=None, test_max_balanced_accuracy=None)  # empty cells unless monitored
            if monitored:
                row.update(self.monitor(step, optional=not final and not self.cfg.select_on_test))
                scored = True
        if not scored and not final:
            return {}
        append_csv(self.run_dir / EVAL_LOG, row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, {k: v for k, v in row.items() if k != "seconds" and v is not None}, "eval/")
        self.last = row
        return row

    def _timed(self, fn, n_images: int, optional: bool = False):
        """``fn()``, timing it per image (:attr:`s_per_image`); ``optional``: counted in the scoring
        that chooses nothing (:data:`EVAL_SHARE`)."""
        t = time.monotonic()
        out = fn()
        seconds = time.monotonic() - t
        self.s_per_image = seconds / max(1, n_images)
        if optional:
            self.optional_s += seconds
        return out

    def affordable(self, n_images: int) -> bool:
        """Whether scoring ``n_images`` that chooses nothing may run now: predicted under
        :data:`EVAL_FREE_S`, or within :data:`EVAL_SHARE` of the wall time together with such scoring so
        far. The first one, with nothing timed yet, always may."""
        if self.s_per_image is None:
            return True
        cost = self.s_per_image * n_images
        return cost < EVAL_FREE_S or self.optional_s + cost <= EVAL_SHARE * (time.monotonic() - self.t0)

    def final_monitor_affordable(self) -> bool:
        """Test-set monitoring at the run's last evaluation, unless it would take over
        :data:`FINAL_FREE_S` and pass :data:`EVAL_SHARE` (then a note says so: ``evaluate.py RUN``
        scores the test set)."""
        n = len(self.test_set.images)
        if self.cfg.select_on_test or self.affordable(n) or self.s_per_image * n < FINAL_FREE_S:
            return True
        print(f"note: the test set is not scored at the end of training (about {self.s_per_image * n:.0f} s, "
              f"over {EVAL_SHARE:.0%} of the run's time); evaluate.py {self.run_dir} scores it", flush=True)
        return False

    def monitor_due(self, step: int) -> bool:
        """Test-set monitoring at this evaluation: always with ``select_on_test``, else when ``step``
        passed a multiple of ``monitor_every`` since the last one (never when it is 0) and it is
        :meth:`affordable` (else it stays due, for a later evaluation)."""
        if self.cfg.select_on_test:
            return True
        if not self.cfg.monitor_every or step // self.cfg.monitor_every <= self.monitored:
            return False
        if not self.affordable(len(self.test_set.images)):
            return False
        self.monitored = step // self.cfg.monitor_every
        return True

    def monitor(self, step: int, optional: bool = False) -> dict:
        """Test auROC and max balanced accuracy of the current model (monitoring: never the choice,
        except with ``select_on_test``, which keeps the best weights here)."""
        scores = self._timed(lambda: self.test_scorer(self.test_set.images), len(self.test_set.images), optional)
        try:
            m = image_metrics(self.test_set.labels, scores)
        except MetricError as e:
            return {"test_error": str(e)}
        row = {"test_auroc": m["auroc"], "test_max_balanced_accuracy": m["max_balanced_accuracy"]}
        if self.cfg.select_on_test and (self.best is None or row["test_auroc"] > self.best[0]):
            self.best = (row["test_auroc"], step, self.model.get_weights())
        return row

    def preview(self, step: int, n: int = 8) -> None:
        source = self.test_set.images if self.test_set is not None else self.val_images
        if source is None or not len(source):
            return
        idx = np.linspace(0, len(source) - 1, min(n, len(source))).astype(int)
        ppi = kind_of(self.cfg).patches_per_image(self.cfg)
        pick = np.arange(len(idx)) * ppi + ppi // 2  # a central patch of each texture image
        inputs = kind_of(self.cfg).model_inputs(source[idx], self.cfg)
        inputs = np.asarray(inputs)[pick]
        # only the shown patches go through the networks (eagerly: nothing to trace for n patches)
        out = score_patches(self.model.ema_encoder, self.model.ema_generator, self.features, inputs)
        x = out["reconstruction"].numpy()
        z = np.random.default_rng(step).standard_normal((len(idx), self.model.latent_dim)).astype("float32")
        samples = self.model.ema_generator(z, training=False).numpy()
        path = save_preview(self.run_dir / "previews" / f"step_{step:07d}.png", inputs, x,
                            out["diff"].numpy(), samples, title=f"{self.cfg.category} step {step}")
        if self.tensorboard is not None:
            self.tensorboard.image_file(step, "previews", path)
