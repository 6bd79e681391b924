"""``python -m cbigan.export RUN``: write a TF Serving SavedModel of a trained run (:mod:`cbigan.serving.export`),
or with ``--format litert`` a LiteRT (TensorFlow Lite) model for edge devices (:mod:`cbigan.serving.litert`)."""

from __future__ import annotations

import argparse
import sys

from cbigan.cli import parser


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m cbigan.export",
               "Write a TF Serving SavedModel <export-dir>/<model-name>/<version>/ of a trained run, or "
               "with --format litert a LiteRT model <export-dir>/litert/<model-name>.tflite (+ .json).")
    p.add_argument("run_dir", help="runs/<category>/<run> (config.json + model.weights.h5)")
    p.add_argument("--format", choices=("savedmodel", "litert"), default="savedmodel",
                   help="savedmodel: TF Serving (default); litert: one .tflite file of the frozen scoring "
                        "graph for the LiteRT interpreter (ai-edge-litert), the resize done outside it")
    p.add_argument("--export-dir", default=None, help="base folder (default: RUN_DIR/export)")
    p.add_argument("--model-name", default=None, help="TF Serving model name (default: the category)")
    p.add_argument("--version", type=int, default=None,
                   help="version number (default: highest existing + 1, or 1; savedmodel only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --version (without --version: the highest existing one) instead of adding one "
                        "(savedmodel; a LiteRT file is always replaced)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None,
                   help="use this decision threshold instead of the run's calibrated one")
    g.add_argument("--threshold-percentile", type=float, default=None,
                   help="recalibrate on the held-out images at this percentile (rewrites threshold.json)")
    g.add_argument("--recalibrate", action="store_true",
                   help="recalibrate on the held-out images with the run's percentile")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable held-out images")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.format == "litert" and args.version is not None:
        p.error("--version is for --format savedmodel (a LiteRT export is one file)")
    from cbigan.data.pipeline import DataError
    from cbigan.serving.export import ExportError

    from pathlib import Path

    from cbigan.core.runfolder import EXPORT, check_writable

    try:  # before loading and calibrating: the export is never lost to a place it cannot be written
        check_writable(args.export_dir or Path(args.run_dir) / EXPORT, "--export-dir DIR", "the export")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    threshold = dict(threshold=args.threshold, recalibrate=args.recalibrate,
                     percentile=args.threshold_percentile, skip_bad_images=args.skip_bad_images)
    try:
        if args.format == "litert":
            from cbigan.serving.litert import export_litert, read_litert_metadata as read_meta

            target = export_litert(args.run_dir, export_dir=args.export_dir, model_name=args.model_name,
                                   **threshold)
            written = f"{target} (+ {target.with_suffix('.json').name})"
            next_step = f"score images: python -m cbigan.predict {target} IMAGES..."
        else:
            from cbigan.serving.export import export_run, read_metadata as read_meta

            target = export_run(args.run_dir, args.export_dir, model_name=args.model_name, version=args.version,
                                overwrite=args.overwrite, **threshold)
            written, next_step = str(target), f"inspect: saved_model_cli show --dir {target} --all"
    except (DataError, ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = read_meta(target)
    thr = meta.get("threshold")
    print(f"exported {written}")
    print(f"threshold: {'none (no calibrated threshold; is_anomaly is always false)' if thr is None else thr}"
          f" - {meta.get('threshold_info', {}).get('rule', '')}")
    print(next_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
