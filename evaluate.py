"""Evaluate trained runs and lay them out like the paper's Tables II and III.

  python evaluate.py runs/<category>/<run> [--lambda 0 0.1 0.5 1]   per-image scores + metrics per lambda
                    [--sigma 4] [--stride 32]                      (+ pixel auROC / AUPRO with masks)
  python evaluate.py --table runs/                                   Tables II/III beside the paper's rows
  python evaluate.py --compare runs_a/ runs_b/                       per-category difference B - A

Thin CLI over :mod:`cbigan.evaluation` (scores, metrics) and :mod:`cbigan.tables` (tables, compare).
Categories with a ``ground_truth`` folder also get anomaly maps (:mod:`cbigan.localization`) and pixel
metrics (:mod:`cbigan.pixel_metrics`) in ``metrics.csv``; ``--table`` then adds pixel tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path,
                   help="run folders runs/<category>/<run> to evaluate (with --table: folders holding runs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--table", action="store_true",
                      help="gather the newest evaluated run of every category and method into Tables II/III")
    mode.add_argument("--compare", nargs=2, metavar=("A", "B"), type=Path,
                      help="per-category difference between two runs or two folders of runs (B - A)")
    p.add_argument("--lambda", dest="lambdas", type=float, nargs="+", default=None, metavar="L",
                   help="lambdas to sweep (weight of L_fD in the score); default: the chosen lambda only")
    p.add_argument("--score-lambda", type=float, default=None,
                   help="lambda of scores.csv and of the tables (default: the run's, the paper's 0.1)")
    p.add_argument("--label", default=None,
                   help="variant name of the method in the tables (default: the run's preset)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the run's config")
    p.add_argument("--rescore", action="store_true",
                   help="score again even if stored per-patch scores of the same weights exist")
    p.add_argument("--skip-bad-images", action="store_true", help="evaluate on the readable test images")
    p.add_argument("--sigma", type=float, default=None,
                   help="Gaussian smoothing of the anomaly maps, in pixels of the model-resolution map "
                        "(default 4; 0: none)")
    p.add_argument("--stride", type=int, default=None,
                   help="textures: stride of the patches of the anomaly maps; below the patch size (64) "
                        "overlapping patches are averaged, removing block seams (default: the patch size)")
    p.add_argument("--no-pixel", action="store_true",
                   help="no anomaly maps and pixel metrics, even when the category has ground-truth masks")
    p.add_argument("--out", type=Path, default=Path("results"), help="where --table writes CSV and Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from cbigan.evaluation import EvaluationError
    from cbigan.metrics import MetricError

    try:
        if args.table:
            from cbigan.tables import write_tables

            res = write_tables(args.runs or [Path("runs")], args.out)
            print(res["text"], end="")
            print("wrote " + ", ".join(str(f) for f in res["files"]))
            return 0
        if args.compare:
            from cbigan.tables import compare, format_compare

            a, b = args.compare
            print(format_compare(compare(a, b), a, b), end="")
            return 0
        if not args.runs:
            print("error: pass a run folder runs/<category>/<run>, or --table, or --compare A B",
                  file=sys.stderr)
            return 2
        from cbigan.evaluation import check_run_dir, evaluate_run, format_report

        for run in args.runs:  # check every folder before the slow part
            check_run_dir(run)
        for run in args.runs:
            ev = evaluate_run(run, args.lambdas, score_lambda=args.score_lambda, label=args.label,
                              data_dir=args.data_dir, rescore=args.rescore,
                              skip_bad_images=args.skip_bad_images, progress=not args.quiet,
                              pixel=not args.no_pixel, sigma=args.sigma, stride=args.stride)
            print(format_report(ev))
    except (EvaluationError, MetricError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
