"""``python -m cbigan.predict MODEL IMAGES...``: score new images (:mod:`cbigan.serving.predict`).

Exit status: 0 when at least one image was scored, 1 when none could be (or the model cannot be
loaded), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbigan.cli import parser


def invoked_as() -> str:
    """How the user started the command: the root ``predict.py`` or ``python -m cbigan.predict``."""
    script = Path(sys.argv[0])
    in_package = (script.parent / "__init__.py").is_file()  # cbigan/serving/predict.py or cbigan/cli/predict.py
    return "python predict.py" if script.name == "predict.py" and not in_package else "python -m cbigan.predict"


def build_parser() -> argparse.ArgumentParser:
    p = parser(invoked_as(), "Score images with a trained run or a SavedModel export.")
    p.add_argument("model",
                   help="run folder (runs/<category>/<run>), export folder (.../<model>/<version>) or "
                        "LiteRT model (.../litert/<model>.tflite)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--csv", default="predictions.csv", help="where to write path,score,is_anomaly")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="write heat-map overlays of each image here (default: no overlays)")
    p.add_argument("--map-vmax", type=float, default=None,
                   help="top of the heat-map colour scale (default: the largest 99.5th percentile)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold (default: the model's calibrated one, if any)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (same-size images)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout and no progress bar")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    from cbigan.data.pipeline import DataError
    from cbigan.serving.predict import collect_inputs, open_model, predict, print_table, write_csv, write_maps

    from cbigan.core.runfolder import check_writable

    try:  # before scoring: results are never lost to a place that cannot be written
        check_writable(Path(args.csv).expanduser().parent, "--csv FILE", "the predictions CSV")
        if args.maps:
            check_writable(args.maps, "--maps DIR", "the heat-map overlays")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    files, missing = collect_inputs(args.inputs)
    if not files:
        for path, why in missing:
            print(f"skipped {path}: {why}", file=sys.stderr)
        print("error: no image files found in " + ", ".join(args.inputs), file=sys.stderr)
        return 1
    try:
        from cbigan.serving.export import ExportError

        model = open_model(args.model)
    except (DataError, ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res, display = predict(model, files, batch_size=args.batch_size, threshold=args.threshold,
                           keep_maps=args.maps is not None, progress=not args.quiet)
    res.bad = missing + res.bad
    if not args.quiet:
        print_table(res)
    for path, why in res.bad:
        print(f"skipped {path}: {why}", file=sys.stderr)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    if not res.predictions:
        print("error: no image could be scored", file=sys.stderr)
        return 1
    csv_path = write_csv(res, args.csv)
    print(f"wrote {csv_path} ({len(res.predictions)} rows)")
    if args.maps:
        written = write_maps(res, display, args.maps, args.map_vmax)
        print(f"wrote {len(written)} heat-map overlay(s) to {args.maps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
