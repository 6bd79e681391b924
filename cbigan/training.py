"""One training run end to end: data, model, ``fit`` with callbacks, and the run folder.

Run folder ``<output_dir>/<category>/<run_name>/``:

* ``config.json``: the resolved configuration (rebuilds the model);
* ``train_log.csv``: every loss and critic score, one row per ``log_every`` steps;
* ``eval_log.csv``: test metrics every ``eval_every`` steps (monitoring only: never used to pick the
  model unless ``--select-on-test``);
* ``previews/``: inputs, reconstructions, differences and samples G(z) every ``preview_every`` steps;
* ``model.weights.h5``: the final model; its EMA encoder/generator are what evaluation uses;
* ``summary.json``: steps, wall time, why training stopped, final metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from . import callbacks as cb
from .config import Config
from .data import (DataError, download_category, load_test_set, load_train_set, to_model_range,
                   to_patches, train_dataset)
from .metrics import MetricError, image_metrics
from .model import CBiGAN, build_model
from .plots import make_preview_gif, save_preview
from .scoring import Scorer

WEIGHTS = "model.weights.h5"


def default_run_name(cfg: Config) -> str:
    return f"{cfg.preset}-alpha{cfg.alpha:g}-seed{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """Write weights to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(path).with_name(f".tmp-{Path(path).name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def load_run(run_dir: str | Path) -> tuple[Config, CBiGAN]:
    """Rebuild a trained model from its run folder (config.json + model.weights.h5)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise DataError(f"{run_dir} is not a finished run folder (needs config.json and {WEIGHTS}); "
                        f"pass runs/<category>/<run>")
    cfg = Config.from_json(cfg_path)
    model = build_model(cfg)
    model.load_weights(weights)
    return cfg, model


class RunEvaluator:
    """Test-set monitoring and previews during training (uses the EMA networks, like every output)."""

    def __init__(self, model, cfg: Config, run_dir: Path, test_set, val_images):
        self.model, self.cfg, self.run_dir = model, cfg, run_dir
        self.test_set, self.val_images = test_set, val_images
        self.scorer = Scorer(model, cfg)
        self.best = None  # (auroc, step, weights) for --select-on-test
        self.t0 = time.monotonic()
        self.last = {}

    def evaluate(self, step: int) -> dict:
        row = {"step": step, "seconds": round(time.monotonic() - self.t0, 1)}
        if len(self.val_images):
            val = self.scorer.score(self.val_images).image_scores(self.cfg.score_lambda)
            row["val_score_mean"] = float(np.mean(val))
        if self.test_set is not None:
            scores = self.scorer.score(self.test_set.images).image_scores(self.cfg.score_lambda)
            try:
                m = image_metrics(self.test_set.labels, scores)
                row.update(test_auroc=m["auroc"], test_max_balanced_accuracy=m["max_balanced_accuracy"])
            except MetricError as e:
                row["test_error"] = str(e)
            if self.cfg.select_on_test and "test_auroc" in row:
                if self.best is None or row["test_auroc"] > self.best[0]:
                    self.best = (row["test_auroc"], step, self.model.get_weights())
        cb.append_csv(self.run_dir / "eval_log.csv", row)
        self.last = row
        return row

    def preview(self, step: int, n: int = 8) -> None:
        source = self.test_set.images if self.test_set is not None else self.val_images
        if source is None or not len(source):
            return
        idx = np.linspace(0, len(source) - 1, min(n, len(source))).astype(int)
        out = self.scorer.raw(source[idx])
        ppi = self.scorer.patches_per_image
        pick = np.arange(len(idx)) * ppi + ppi // 2  # a central patch of each texture image
        x = out["reconstruction"].numpy()[pick]
        inputs = to_model_range(source[idx])
        if self.cfg.kind == "texture":
            inputs = to_patches(inputs, self.cfg.patch_size)
        inputs = np.asarray(inputs)[pick]
        z = np.random.default_rng(step).standard_normal((len(idx), self.model.latent_dim)).astype("float32")
        samples = self.model.ema_generator(z, training=False).numpy()
        save_preview(self.run_dir / "previews" / f"step_{step:07d}.png", inputs, x,
                     out["diff"].numpy()[pick], samples, title=f"{self.cfg.category} step {step}")


def prepare_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.output_dir) / cfg.category / cfg.run_name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to run folder {run_dir}: {e.strerror}; choose another "
                        f"--output-dir") from None
    return run_dir


def train(cfg: Config, *, download: bool = False, skip_bad_images: bool = False, verbose: int = 1) -> Path:
    """Train one category as ``cfg`` says and return its run folder."""
    cfg = cfg.resolved()
    if download:
        download_category(cfg.category, cfg.data_dir)
    train_set = load_train_set(cfg, skip_bad=skip_bad_images)
    if train_set.skipped:
        print(f"skipped {len(train_set.skipped)} unreadable image(s): "
              + ", ".join(str(p) for p in train_set.skipped))
    try:
        test_set = load_test_set(cfg, skip_bad=skip_bad_images)
    except DataError as e:
        print(f"note: no test-set monitoring ({e})")
        test_set = None
    if cfg.run_name is None:
        cfg = dataclasses.replace(cfg, run_name=default_run_name(cfg))
    run_dir = prepare_run_dir(cfg)
    cfg.to_json(run_dir / "config.json")
    print(f"training {cfg.category} ({cfg.kind}, {len(train_set.images)} train / "
          f"{len(train_set.val_images)} held-out images) -> {run_dir}")

    model = build_model(cfg)
    evaluator = RunEvaluator(model, cfg, run_dir, test_set, train_set.val_images)
    budget = cb.StepBudget(cfg.steps, cfg.minutes)
    guard = cb.NaNGuard()
    callbacks = [
        guard, budget,
        cb.StepCSVLogger(run_dir / "train_log.csv", cfg.batch_size),
        cb.PeriodicCallback(cfg.eval_every, evaluator.evaluate),
        cb.PeriodicCallback(cfg.preview_every, evaluator.preview),
    ]
    per_epoch = max(1, min(cfg.log_every, cfg.steps))
    epochs = -(-cfg.steps // per_epoch)
    t0 = time.monotonic()
    model.fit(train_dataset(train_set.images, cfg), steps_per_epoch=per_epoch, epochs=epochs,
              callbacks=callbacks, verbose=verbose, shuffle=False)
    wall = time.monotonic() - t0
    if guard.error:
        raise cb.NonFiniteLossError(guard.error)

    selected = "final EMA weights"
    if cfg.select_on_test and evaluator.best is not None:
        auroc, step, weights = evaluator.best
        model.set_weights(weights)
        selected = f"best test auROC {auroc:.4f} at step {step} (--select-on-test: test labels used)"
    save_weights_atomic(model, run_dir / WEIGHTS)
    summary = {"steps": cb.model_step(model), "wall_seconds": round(wall, 1),
               "stopped_because": budget.reason or "fit ended", "model": selected,
               "selected_on_test": bool(cfg.select_on_test), "last_eval": evaluator.last}
    write_json_atomic(run_dir / "summary.json", summary)
    make_preview_gif(run_dir)  # previews.gif: the evolution of the previews
    print(f"done: {summary['steps']} steps in {wall / 60:.1f} min ({summary['stopped_because']}); "
          f"model = {selected}; saved {run_dir / WEIGHTS}")
    return run_dir
