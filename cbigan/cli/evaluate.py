"""Evaluate trained runs and lay them out like the paper's Tables II and III.

  python evaluate.py runs/<category>/<run> [--lambda 0 0.1 0.5 1]   per-image scores + metrics per lambda
                    [--sigma 4] [--stride 32]                      (+ pixel auROC / AUPRO with masks)
  python evaluate.py runs/<category>/<run> --report                  + RUN/report.html (open in a browser)
  python evaluate.py --table runs/                                   Tables II/III -> runs/tables/
  python evaluate.py --compare runs_a/ runs_b/                       per-category difference B - A

Thin CLI over :mod:`cbigan.reporting.evaluation` (scores, metrics) and :mod:`cbigan.reporting.tables` (tables, compare).
Categories with a ``ground_truth`` folder also get anomaly maps (:mod:`cbigan.scoring.localization`) and pixel
metrics (:mod:`cbigan.scoring.pixel_metrics`) in ``metrics.csv``; ``--table`` then adds pixel tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cbigan.core.anomaly_score import IMAGE_SCORE_RULES
from cbigan.cli import each_warning_once, parser


def build_parser() -> argparse.ArgumentParser:
    p = parser("python evaluate.py", __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="*", type=Path,
                   help="run folders runs/<category>/<run> to evaluate (with --table: folders holding runs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--table", action="store_true",
                      help="gather the newest evaluated run of every category and method into Tables II/III")
    mode.add_argument("--compare", nargs=2, metavar=("A", "B"), type=Path,
                      help="per-category difference between two runs or two folders of runs (B - A)")
    p.add_argument("--lambda", dest="lambdas", type=float, nargs="+", default=None, metavar="L",
                   help="lambdas to sweep (weight of L_fD in the score) (default: the chosen lambda only)")
    p.add_argument("--score-lambda", type=float, default=None,
                   help="lambda of scores.csv and of the tables (default: the run's, the paper's 0.1)")
    p.add_argument("--label", default=None,
                   help="variant name of the method in the tables (default: the run's preset)")
    p.add_argument("--data-dir", default=None,
                   help="data folder to evaluate on (default: the one stored in the run's config)")
    p.add_argument("--rescore", action="store_true",
                   help="score again even if stored per-patch scores of the same weights exist")
    p.add_argument("--skip-bad-images", action="store_true", help="evaluate on the readable test images")
    p.add_argument("--sigma", type=float, default=None,
                   help="Gaussian smoothing of the anomaly maps, in pixels of the model-resolution map; "
                        "0: none (default: 4)")
    p.add_argument("--stride", type=int, default=None,
                   help="textures: stride of the patches of the anomaly maps; below the patch size (64) "
                        "overlapping patches are averaged, removing block seams (default: the patch size)")
    p.add_argument("--rules", nargs="+", default=None, metavar="RULE", choices=IMAGE_SCORE_RULES,
                   help=f"image-score rules to report beside the run's own ({', '.join(IMAGE_SCORE_RULES)}; "
                        "default: all of them when the anomaly maps are computed anyway)")
    p.add_argument("--no-pixel", action="store_true",
                   help="no anomaly maps and pixel metrics, even when the category has ground-truth masks")
    p.add_argument("--out", type=Path, default=None,
                   help="where --table writes CSV and Markdown (default: a folder 'tables' beside the runs, "
                        "DIR/tables for --table DIR); with run folders: where their evaluation files go "
                        "instead of each run folder (several runs: OUT/<category>/<run>), e.g. for a run on a "
                        "read-only disk")
    p.add_argument("--report", action="store_true",
                   help="also write RUN/report.html (with --out: OUT/report.html): one self-contained "
                        "inspection page (metrics, ROC, histogram, every test image sorted by score with its "
                        "anomaly map)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def tables_dir(roots) -> Path:
    """Where ``--table`` writes without ``--out``: ``tables/`` in the folder holding the runs (the
    common folder of several)."""
    roots = [Path(r) for r in roots]
    if len(roots) == 1:
        return roots[0] / "tables"
    return Path(os.path.commonpath([str(r.resolve()) for r in roots])) / "tables"


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # the report reads the test folder again after scoring: a warning about it (e.g. a missing mask)
    # is printed once, not once per reading
    with each_warning_once():
        return _run(args)


def _run(args) -> int:
    from cbigan.reporting.evaluation import EvaluationError
    from cbigan.scoring.metrics import MetricError

    try:
        if args.table:
            from cbigan.reporting.tables import write_tables

            roots = args.runs or [Path("runs")]
            out = args.out if args.out is not None else tables_dir(roots)
            res = write_tables(roots, out)
            print(res["text"], end="")
            print(f"tables written to {out}/: " + ", ".join(f.name for f in res["files"]))
            return 0
        if args.compare:
            from cbigan.reporting.tables import compare, format_compare

            a, b = args.compare
            print(format_compare(compare(a, b), a, b), end="")
            return 0
        if not args.runs:
            print("error: pass a run folder runs/<category>/<run>, or --table, or --compare A B",
                  file=sys.stderr)
            return 2
        from cbigan.reporting.evaluation import check_run_dir, evaluate_run, evaluation_dir, format_report

        outs = {}
        for run in args.runs:  # check every folder, and where it is written, before the slow part
            check_run_dir(run)
            out = None if args.out is None else (
                args.out if len(args.runs) == 1 else args.out / Path(run).resolve().parent.name / Path(run).name)
            outs[run] = evaluation_dir(run, out)
        for run in args.runs:
            ev = evaluate_run(run, args.lambdas, score_lambda=args.score_lambda, label=args.label,
                              data_dir=args.data_dir, rescore=args.rescore,
                              skip_bad_images=args.skip_bad_images, progress=not args.quiet,
                              pixel=not args.no_pixel, sigma=args.sigma, stride=args.stride,
                              rules=args.rules, out_dir=outs[run])
            print(format_report(ev))
            if args.report:
                from cbigan.reporting.report import write_report

                print(f"wrote {write_report(run, data_dir=args.data_dir, out_dir=outs[run])} (open it in a browser)")
    except (EvaluationError, MetricError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
