"""Train CBiGAN on one MVTec AD category: ``python train.py --category grid``.

Every training flag maps to a field of :class:`cbigan.core.config.Config`; a flag left out takes the value
of the ``--preset`` (``paper`` by default: the paper's), which is what ``--help`` shows.
``--category all`` (the 15 MVTec AD categories) or ``--category a,b,c`` trains several categories, one
after another or ``--jobs N`` at once, then evaluates them and builds the tables (:mod:`cbigan.multirun`).
``--distribute mirrored|multiworker`` trains one category on several GPUs or hosts (docs/distributed.md).
TensorFlow is imported only to train in this process.
"""

from __future__ import annotations

import argparse
import sys

from cbigan.core.anomaly_score import IMAGE_SCORE_RULES
from cbigan.core.config import (
    DISTRIBUTE, NORMALIZATIONS, PRECISION_CHOICES, PRESETS, ROTATED_OBJECTS, SELECTION_RULES, TEXTURES,
    TRAIN_CROPS, Config, default_run_name, describe, resolve)
from cbigan.core.config import FIELDS as SETTINGS
from cbigan import multirun
from cbigan.core.kinds import KINDS, TilesKind
from cbigan.cli import config_default, parser, show


#: The help's stand-in category for a folder trained as tiles.
TILES_CASE = TilesKind.name


#: The ``--help`` heading of the research knobs: flags no recorded run changes, or whose only evidence is a
#: null result (issue 33: each flag costs every reader).
ADVANCED = "advanced (research knobs: no recorded run changes them, or their only evidence is a null result)"
#: Flags whose argparse default is the paper's value (not None): given only where they differ from it.
WITH_DEFAULT = ("category", "data_dir", "output_dir", "preset")


def _resolved(category: str, preset: str) -> Config:
    kind = TilesKind.name if category == TILES_CASE else None
    return resolve({"category": category, "kind": kind, "preset": preset}, infer=False)[0]


def _data_default(name: str, text: str, cases: tuple) -> str:
    """``(default: TEXT; --preset fast: ...)`` for a data field resolved per category: ``cases`` are
    (category, label) pairs whose value in a non-default preset is listed when it differs."""
    notes = []
    for preset in sorted(PRESETS):
        if preset == Config().preset:
            continue
        changed = [f"{show(getattr(_resolved(c, preset), name))} {label}" for c, label in cases
                   if getattr(_resolved(c, preset), name) != getattr(_resolved(c, Config().preset), name)]
        if changed:
            notes.append(f"--preset {preset}: {', '.join(changed)}")
    return f"(default: {'; '.join([text] + notes)})"


def _objects_alike(name: str) -> bool:
    """Whether ``name`` is the same for every object in each non-default preset (rotated or not)."""
    return all(getattr(_resolved("object", p), name) == getattr(_resolved(ROTATED_OBJECTS[0], p), name)
               for p in PRESETS if p != Config().preset)


def data_defaults() -> dict[str, str]:
    """What ``--kind``, ``--image-size``, ``--patch-size``, ``--rotation`` and ``--width`` default to, per
    kind."""
    paper = Config().preset
    obj, rot, tex = "object", ROTATED_OBJECTS[0], TEXTURES[0]  # "object": not an MVTec AD category

    def val(category: str, name: str) -> str:
        return show(getattr(_resolved(category, paper), name))

    rotated = ", ".join(ROTATED_OBJECTS)
    return {
        "kind": f"(default: from the category: texture for {', '.join(TEXTURES)}; for another folder tiles "
                f"when its training images vary in size or are 2:1 or longer, else object)",
        "image_size": _data_default("image_size", f"{val(obj, 'image_size')} objects, "
                                                  f"{val(tex, 'image_size')} textures, the largest training "
                                                  f"image's side for tiles (at most 1024)",
                                    ((obj, "objects"), (tex, "textures"))),
        "patch_size": _data_default("patch_size", f"the image size for objects, {val(tex, 'patch_size')} "
                                                  f"for textures", ((tex, "textures"),)),
        "rotation": _data_default("rotation", f"+-{val(rot, 'rotation')} for {rotated}, {val(obj, 'rotation')} "
                                              f"for other objects, 0 to {val(tex, 'rotation')} for textures",
                                  ((rot, "for objects" if _objects_alike("rotation") else f"for {rotated}"),
                                   (tex, "for textures"))),
        "width": _data_default("width", val(obj, "width"), ((obj, "for objects"), (tex, "for textures"),
                                                           (TILES_CASE, "for tiles"))),
    }


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    data = data_defaults()
    p = parser("python train.py", "Train CBiGAN on one MVTec AD category (several with --category all or "
                                  "a,b,c). A flag left out takes the --preset's value, shown as its default.")
    p.add_argument("--category", default=d.category,
                   help="MVTec AD category or any folder name under --data-dir; 'all' (the 15 MVTec AD "
                        "categories) or a comma-separated list trains each and builds the tables")
    p.add_argument("--jobs", type=int, default=1,
                   help="several categories: how many train at once, as separate processes (each pinned "
                        "to its own GPU when there are GPUs)")
    p.add_argument("--no-table", dest="table", action="store_false",
                   help="several categories: do not evaluate the runs and build the tables at the end "
                        "(default: off; they are evaluated and tabulated)")
    p.add_argument("--evaluate", action="store_true",
                   help="after training, evaluate the run as 'python evaluate.py RUN --report' does (same "
                        "process): metrics files and RUN/report.html")
    p.add_argument("--intra-op-threads", type=int, default=None, metavar="N",
                   help="TensorFlow intra-op threads on a CPU (0: TensorFlow's own choice, every core) (default: "
                        "chosen by input size and cores: 1 for 64 px inputs on up to 2 cores, where it "
                        "measured 1.28x faster; else 0; stored in config.json)")
    p.add_argument("--distribute", choices=DISTRIBUTE, default=None,
                   help="one category on several devices: 'mirrored' = all GPUs of this host, "
                        "'multiworker' = several hosts configured by TF_CONFIG (docs/distributed.md); "
                        "--batch-size stays the global batch " + config_default("distribute", "none: one device"))
    p.add_argument("--data-dir", default=d.data_dir, help="folder holding <category>/train/good, test/...")
    p.add_argument("--output-dir", default=d.output_dir, help="runs go to OUTPUT_DIR/<category>/<run>")
    p.add_argument("--run-name", default=None,
                   help="run folder name; the same command again resumes the run (default: "
                        f"<preset>-alpha<alpha>-seed<seed>, e.g. {default_run_name(d)})")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS),
                   help="named training preset: the values of the flags below that are not given")
    p.add_argument("--download", action="store_true", help="fetch the official MVTec AD archive if the category is missing")
    p.add_argument("--skip-bad-images", action="store_true", help="train on readable images and report unreadable ones")
    p.add_argument("--fresh", action="store_true", help="start over in an existing run folder instead of resuming")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="do not write the TF Serving SavedModel at the end (default: off; the run is exported)")
    p.add_argument("--export-dir", default=None,
                   help="SavedModel base folder: EXPORT_DIR/<model-name>/<version> (default: RUN/export)")
    p.add_argument("--model-name", default=None, help="TF Serving model name (default: the category)")
    p.add_argument("--deterministic", action="store_true", help="enable TensorFlow op determinism (slower)")
    p.add_argument("--print-config", action="store_true",
                   help="print every setting the run would use, its value and where it comes from (paper, "
                        "preset NAME, kind NAME, data, flag), and exit without training or writing anything")
    g = p.add_argument_group("data")
    g.add_argument("--kind", choices=sorted(KINDS), default=None,
                   help="scoring protocol: objects whole, textures as patches " + data["kind"])
    g.add_argument("--image-size", type=int, default=None, help="side after resizing " + data["image_size"])
    g.add_argument("--patch-size", type=int, default=None, help="network input side " + data["patch_size"])
    g.add_argument("--rotation", type=float, default=None,
                   help="max rotation in degrees (augmentation) " + data["rotation"])
    g.add_argument("--val-split", type=float, default=None,
                   help="share of train/good held out for the threshold and model selection; 0: train on "
                        "all of it, no calibrated threshold " + config_default("val_split"))
    g.add_argument("--scale", type=float, default=None,
                   help="tiles: one scale factor for every image before it is placed on the canvas of "
                        "--image-size (1 = native resolution; smaller where an image would not fit) "
                        + config_default("scale"))
    g.add_argument("--normalize", choices=NORMALIZATIONS, default=None,
                   help="input normalization: 'per_image' standardizes every image per channel, so a global "
                        "brightness or contrast change (lighting drift) does not change the score "
                        + config_default("normalize", "none, per_image with --kind tiles"))
    g.add_argument("--train-crops", choices=TRAIN_CROPS, default=None,
                   help="tiles: where training crops lie: 'canvas' = anywhere on the canvas, its mirrored "
                        "padding included; 'image' = centred inside each image (objects and textures: the "
                        "same thing) " + config_default("train_crops", "canvas, image with --kind tiles"))
    g.add_argument("--global-views", type=float, default=None,
                   help="tiles: share of each training batch that is a whole image resized to one tile (its "
                        "global view), so the model learns the whole part's look beside its tiles; its score and its map "
                        "join the tiles' with a weight calibrated on held-out images (not in the paper) " + config_default("global_views", "0, 0.5 with --preset fast for "
                                                               "tiles scored by a map rule"))
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, default=None, help="size of z " + config_default("latent_dim"))
    g.add_argument("--width", type=int, default=None, help="width multiplier c of the networks " + data["width"])
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None,
                   help="number of batches " + config_default("steps", f"{d.steps}, the authors' code"))
    g.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget; stops at --steps or --minutes, whichever comes first "
                        + config_default("minutes", "no time limit"))
    g.add_argument("--batch-size", type=int, default=None,
                   help="global batch per step (split evenly over the replicas with --distribute) "
                        + config_default("batch_size"))
    g.add_argument("--alpha", type=float, default=None,
                   help="consistency weight: 0 = EGBAD, 1 = autoencoder " + config_default("alpha"))
    g.add_argument("--d-iter", type=int, default=None,
                   help="critic-only batches per E+G batch " + config_default("d_iter"))
    g.add_argument("--gp-weight", type=float, default=None,
                   help="gradient-penalty weight " + config_default("gp_weight"))
    g.add_argument("--lr-d", type=float, default=None,
                   help="Adam learning rate of the critic D " + config_default("lr_d"))
    g.add_argument("--lr-eg", type=float, default=None,
                   help="Adam learning rate of E and G " + config_default("lr_eg"))
    g.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the EMA of E and G (the evaluated model) " + config_default("ema_decay"))
    g.add_argument("--ema-every", type=int, default=None,
                   help="steps between EMA updates " + config_default("ema_every"))
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the data order, augmentation and latent draws " + config_default("seed"))
    g.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="training arithmetic: 'mixed_bfloat16' = bfloat16 convolutions with float32 weights, "
                        "losses and outputs (1.10x / 1.12x the float32 step at 64 / 128 px on a CPU with "
                        "AVX512_BF16; results/benchmarks.md); 'auto' = mixed_bfloat16 on a CPU with native "
                        "bfloat16 (avx512_bf16 or amx_bf16) and no GPU, else float32, recorded in config.json; "
                        "evaluation and export run float32 either way "
                        + config_default("precision"))
    g = p.add_argument_group("scoring and logging")
    g.add_argument("--lambda", dest="score_lambda", type=float, default=None,
                   help="weight of L_fD in the score " + config_default("score_lambda"))
    g.add_argument("--image-score", choices=IMAGE_SCORE_RULES, default=None,
                   help="image score rule: 'paper' = max over patches of the summed parts; 'map_max' / "
                        "'map_topk' = maximum / mean of the top --score-topk share of the smoothed anomaly "
                        "map, which small defects raise; 'fused' / 'fused_max' = the mean / maximum of every "
                        "kind of evidence (summed score, map maximum, global view), each standardized on "
                        "the held-out images (cbigan/core/anomaly_score.py) " + config_default("image_score", "paper, map_max with --kind tiles"))
    g.add_argument("--score-topk", type=float, default=None,
                   help="map_topk: share of the map's pixels averaged " + config_default("score_topk"))
    g.add_argument("--score-margin", type=int, default=None,
                   help="map rules: map pixels left out at each image's border, whose edge raises the map "
                        "on normal images (default: 0, half a tile with --kind tiles)")
    g.add_argument("--threshold-percentile", type=float, default=None,
                   help="decision threshold = this percentile of the held-out train/good scores "
                        + config_default("threshold_percentile"))
    g.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (snapshots for model selection, monitoring) "
                        + config_default("eval_every"))
    g.add_argument("--monitor-every", type=int, default=None,
                   help="steps between scorings of the test set for monitoring (test auROC in eval_log.csv, "
                        "never used to choose the model), at the first evaluation past each multiple and at "
                        "the end, each unless it would take over 10%% of the run's time (tiles' large "
                        "canvases); 0: only at the end; always every evaluation with --select-on-test "
                        + config_default("monitor_every", "1000: every evaluation"))
    g.add_argument("--log-every", type=int, default=None,
                   help="steps between train_log.csv rows and backups (on one device a backup is written "
                        "at most once a minute and held in memory in between; SIGINT/SIGTERM, the end and "
                        "a non-finite loss write the latest good one) " + config_default("log_every"))
    g.add_argument("--preview-every", type=int, default=None,
                   help="steps between preview images " + config_default("preview_every"))
    g.add_argument("--select", choices=SELECTION_RULES, default=None,
                   help="which snapshot is the model, without test labels: 'synthetic' = the evaluation "
                        "(every --eval-every steps) that best separates held-out normal images from "
                        "synthetic-defect copies of them; 'final' = the last weights "
                        + config_default("select", "synthetic, final with --kind tiles"))
    g.add_argument("--select-on-test", action="store_true", default=None,
                   help="keep the checkpoint with the best TEST auROC (the original's rule; leaks test labels)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group(ADVANCED)
    g.add_argument("--norm", choices=["none", "batch", "layer", "instance"], default=None,
                   help="normalization layers of E, G and D, to try a normalized variant of the paper's "
                        "networks (no recorded run uses one) " + config_default("norm"))
    g.add_argument("--activation", default=None,
                   help="hidden activation (a Keras name), to try another than the paper's " + config_default("activation"))
    g.add_argument("--feature-layer", default=None,
                   help="critic layer used as f_D in the score, to score with deeper critic features "
                        + config_default("feature_layer"))
    g.add_argument("--denoise", type=float, default=None,
                   help="denoising training: share of the E+G batch's images given a synthetic defect (a "
                        "spot, line or pasted patch) before encoding, with the clean image as the "
                        "reconstruction target (cbigan/data/defects.py; not in the paper; no change at 15 CPU "
                        "minutes on our three sets: results/small_defects, tenth study) " + config_default("denoise"))
    g.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false", default=None,
                   help="use --ema-decay from the first update, without the warm-up min(decay, (1+n)/(10+n)), "
                        "to compare with EMAs that have none (default: off; with the warm-up)")
    return p


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    """The resolved :class:`Config` (:func:`cbigan.core.config.resolve`: the paper's defaults, the preset, the
    input kind, the data, the flags given) and the parsed arguments."""
    args = build_parser().parse_args(argv)
    paper = Config()
    flags = {k: v for k, v in vars(args).items() if k in SETTINGS and v is not None
             and not (k in WITH_DEFAULT and v == getattr(paper, k))}
    # an unknown category's kind chosen from its images (cbigan.core.kinds.infer_kind): args.kind_note
    cfg, args.kind_note = resolve(flags, infer=not multirun.is_multi(args.category))
    return cfg, args


def main(argv=None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.kind_note:
        print(args.kind_note)
    if args.print_config:  # nothing trained, nothing written
        print(describe(cfg))
        return 0
    if multirun.is_multi(args.category) or args.jobs != 1:  # no TensorFlow in this process
        return multirun.train_categories(cfg, args, sys.argv[1:] if argv is None else list(argv))
    from cbigan.training.callbacks import NonFiniteLossError
    from cbigan.data.pipeline import DataError
    from cbigan.model.distribute import DistributeError, writes_run_folder
    from cbigan.serving.export import ExportError
    from cbigan.training.run import TrainingInterrupted, train

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
        from cbigan.cli.evaluate import main as evaluate_main

        print(f"{multirun.EVALUATING} {run_dir}", flush=True)  # the launcher's logs look for this line
        return evaluate_main([str(run_dir), "--report"] + (["--quiet"] if args.quiet else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
