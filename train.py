"""Train CBiGAN on one MVTec AD category: ``python train.py --category grid``.

Thin CLI over :mod:`cbigan.training`; every flag maps to a field of :class:`cbigan.config.Config`.
``--category all`` (the 15 MVTec AD categories) or ``--category a,b,c`` trains several categories, one
after another or ``--jobs N`` at once, then evaluates them and builds the tables (:mod:`cbigan.multirun`).
``--distribute mirrored|multiworker`` trains one category on several GPUs or hosts (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cbigan.config import DISTRIBUTE, PRESETS, SELECTION_RULES, Config, apply_preset


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--category", default=d.category,
                   help="MVTec AD category or any folder name under --data-dir; 'all' (the 15 MVTec AD "
                        "categories) or a comma-separated list trains each and builds the tables")
    p.add_argument("--jobs", type=int, default=1,
                   help="several categories: how many train at once, as separate processes (each pinned "
                        "to its own GPU when there are GPUs)")
    p.add_argument("--no-table", dest="table", action="store_false",
                   help="several categories: do not evaluate the runs and build the tables at the end")
    p.add_argument("--evaluate", action="store_true",
                   help="after training, evaluate the run as 'python evaluate.py RUN' does (same process)")
    p.add_argument("--distribute", choices=DISTRIBUTE, default=None,
                   help="one category on several devices: 'mirrored' = all GPUs of this host, "
                        "'multiworker' = several hosts configured by TF_CONFIG (docs/distributed.md); "
                        "--batch-size stays the global batch")
    p.add_argument("--data-dir", default=d.data_dir, help="folder holding <category>/train/good, test/...")
    p.add_argument("--output-dir", default=d.output_dir, help="runs go to OUTPUT_DIR/<category>/<run>")
    p.add_argument("--run-name", default=None, help="run folder name (default: preset, alpha, seed, time)")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="named training preset")
    p.add_argument("--download", action="store_true", help="fetch the official MVTec AD archive if the category is missing")
    p.add_argument("--skip-bad-images", action="store_true", help="train on readable images and report unreadable ones")
    p.add_argument("--fresh", action="store_true", help="start over in an existing run folder instead of resuming")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="do not write the TF Serving SavedModel at the end")
    p.add_argument("--export-dir", default=None, help="SavedModel base folder (default RUN/export): EXPORT_DIR/<model-name>/<version>")
    p.add_argument("--model-name", default=None, help="TF Serving model name (default: the category)")
    p.add_argument("--deterministic", action="store_true", help="enable TensorFlow op determinism (slower)")
    g = p.add_argument_group("data")
    g.add_argument("--kind", choices=["object", "texture"], default=None, help="override the category's preset")
    g.add_argument("--image-size", type=int, default=None, help="resize side (default 128 objects, 512 textures)")
    g.add_argument("--patch-size", type=int, default=None, help="network input side (64 textures)")
    g.add_argument("--rotation", type=float, default=None, help="max rotation in degrees (augmentation)")
    g.add_argument("--val-split", type=float, default=None, help="share of train/good held out for calibration")
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, default=None)
    g.add_argument("--width", type=int, default=None, help="width multiplier c")
    g.add_argument("--norm", choices=["none", "batch", "layer", "instance"], default=None)
    g.add_argument("--activation", default=None)
    g.add_argument("--feature-layer", default=None, help="critic layer used as f_D in the score")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="number of batches (paper code: 1,200,000)")
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget; stops at steps or minutes")
    g.add_argument("--batch-size", type=int, default=None,
                   help="global batch per step (split evenly over the replicas with --distribute)")
    g.add_argument("--alpha", type=float, default=None, help="consistency weight: 0 = EGBAD, 1 = autoencoder")
    g.add_argument("--d-iter", type=int, default=None, help="critic-only batches per E+G batch")
    g.add_argument("--gp-weight", type=float, default=None)
    g.add_argument("--lr-d", type=float, default=None)
    g.add_argument("--lr-eg", type=float, default=None)
    g.add_argument("--ema-decay", type=float, default=None)
    g.add_argument("--ema-every", type=int, default=None)
    g.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false", default=None)
    g.add_argument("--seed", type=int, default=None)
    g = p.add_argument_group("scoring and logging")
    g.add_argument("--lambda", dest="score_lambda", type=float, default=None, help="weight of L_fD in the score")
    g.add_argument("--threshold-percentile", type=float, default=None,
                   help="decision threshold = this percentile of the held-out train/good scores")
    g.add_argument("--eval-every", type=int, default=None)
    g.add_argument("--log-every", type=int, default=None)
    g.add_argument("--preview-every", type=int, default=None)
    g.add_argument("--select", choices=SELECTION_RULES, default=None,
                   help="which snapshot is the model, without test labels: 'synthetic' = the evaluation "
                        "(every --eval-every steps) that best separates held-out normal images from "
                        "synthetic-defect copies of them; 'final' = the last weights (default: synthetic)")
    g.add_argument("--select-on-test", action="store_true", default=None,
                   help="keep the checkpoint with the best TEST auROC (the original's rule; leaks test labels)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cfg = apply_preset(Config(), args.preset)
    fields = {f.name for f in dataclasses.fields(Config)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and k != "preset" and v is not None}
    return dataclasses.replace(cfg, **overrides).resolved(), args


def main(argv=None) -> int:
    from cbigan import multirun

    try:
        cfg, args = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if multirun.is_multi(args.category) or args.jobs != 1:  # no TensorFlow in this process
        return multirun.main(cfg, args, sys.argv[1:] if argv is None else list(argv))
    from cbigan.callbacks import NonFiniteLossError
    from cbigan.data import DataError
    from cbigan.distribute import DistributeError, writes_run_folder
    from cbigan.export import ExportError
    from cbigan.training import TrainingInterrupted, train

    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    try:
        run_dir = train(cfg, download=args.download, skip_bad_images=args.skip_bad_images,
                        verbose=0 if args.quiet else 1, fresh=args.fresh, export=args.export,
                        export_dir=args.export_dir, model_name=args.model_name)
    except (DataError, NonFiniteLossError, ExportError, DistributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    if args.evaluate and writes_run_folder(cfg.distribute):  # other workers have no run folder
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import evaluate  # the evaluate.py next to this file

        print(f"{multirun.EVALUATING} {run_dir}", flush=True)  # the launcher's logs look for this line
        return evaluate.main([str(run_dir)] + (["--quiet"] if args.quiet else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
