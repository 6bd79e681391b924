"""``python -m cbigan.plots {recon,curves,roc,hist,maps,gif} ...``: figures of runs (:mod:`cbigan.reporting.plots`).

    python -m cbigan.plots recon  RUN [--compare RUN_B] [--rows N]   reconstructions and difference maps
    python -m cbigan.plots curves RUN                                 losses, critic scores, test metrics
    python -m cbigan.plots roc    RUN [RUN ...]                       ROC curves, one per run / category
    python -m cbigan.plots hist   RUN [RUN ...] [--by-type]           score histograms, good vs defective
    python -m cbigan.plots gif    RUN                                 animated GIF of the training previews
    python -m cbigan.plots maps   RUN [--rows N] [--sigma S] [--stride K] [--original-size]
                                                                      anomaly maps over the test images

The command line that made a figure is stored in the PNG/PDF metadata and in ``commands.txt`` beside
it. Exit status 2 for a problem with the input (said in one line).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from cbigan.reporting.figures import ScoreSet, curves_figure, hist_figure, maps_figure, recon_figure, roc_figure
from cbigan.reporting.plots import DPI, PlotError, RunFolderView, default_out, maps_data, read_table, recon_data, save_figure
from cbigan.training.previews import make_preview_gif
from cbigan.core.runfolder import EVAL_LOG, SUMMARY_JSON, TRAIN_LOG
from cbigan.cli import parser as new_parser


def command_line(argv: list[str] | None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return "python -m cbigan.plots " + shlex.join(argv)


# ---------------------------------------------------------------------------------- commands
def cmd_recon(args) -> list[Path]:
    runs = [args.run] + ([args.compare] if args.compare else [])
    if args.rows is not None and args.rows < 1:
        raise PlotError("--rows must be at least 1")
    rows, labels, title, note = recon_data(runs, args.rows, args.data_dir, args.names)
    fig = recon_figure(rows, labels, title=title, note=note)
    name = "recon" if not args.compare else f"recon_vs_{Path(args.compare).name}"
    return save_figure(fig, args.out or default_out([args.run], name), args.dpi, args.pdf, args.command)


def cmd_curves(args) -> list[Path]:
    run = Path(args.run)
    train_log, eval_log = read_table(run / TRAIN_LOG), read_table(run / EVAL_LOG)
    if train_log is None and eval_log is None:
        raise PlotError(f"{run} has no train_log.csv or eval_log.csv; "
                        f"pass a run folder runs/<category>/<run>")
    title = f"{run.parent.name} / {run.name}"
    try:
        summary = json.loads((run / SUMMARY_JSON).read_text())
        title += f": {summary['steps']} steps in {summary['wall_seconds'] / 60:.1f} min"
    except (OSError, ValueError, KeyError, TypeError):
        if train_log is not None and len(train_log):
            title += f": {int(train_log['step'].iloc[-1])} steps so far"
    fig = curves_figure(train_log, eval_log, title=title)
    return save_figure(fig, args.out or default_out([run], "curves"), args.dpi, args.pdf, args.command)


def _score_sets(args) -> list[ScoreSet]:
    runs = [RunFolderView(d, args.data_dir) for d in args.runs]
    cats = [r.cfg.category for r in runs]
    names = args.names or [c if cats.count(c) == 1 else r.label for c, r in zip(cats, runs)]
    if len(names) != len(runs):
        raise PlotError(f"--names gives {len(names)} names for {len(runs)} runs")
    return [r.score_set(n) for r, n in zip(runs, names)]


def cmd_roc(args) -> list[Path]:
    sets = _score_sets(args)
    fig = roc_figure(sets, title="ROC of image-level anomaly scores")
    return save_figure(fig, args.out or default_out(args.runs, "roc"), args.dpi, args.pdf, args.command)


def cmd_hist(args) -> list[Path]:
    sets = _score_sets(args)
    fig = hist_figure(sets, by_type=args.by_type, title="anomaly scores of the test images")
    return save_figure(fig, args.out or default_out(args.runs, "hist"), args.dpi, args.pdf, args.command)


def cmd_maps(args) -> list[Path]:
    if args.rows is not None and args.rows < 1:
        raise PlotError("--rows must be at least 1")
    rows, title, note = maps_data(args.run, args.rows, args.data_dir, args.sigma, args.stride,
                                  args.original_size)
    fig = maps_figure(rows, title=title, note=note)
    return save_figure(fig, args.out or default_out([args.run], "maps"), args.dpi, args.pdf, args.command)


def cmd_gif(args) -> list[Path]:
    out = make_preview_gif(args.run, max_frames=args.max_frames)
    if out is None:
        raise PlotError(f"{args.run} has no previews/step_*.png")
    return [out]


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m cbigan.plots", "Figures of runs, headless (matplotlib Agg).",
                        epilog=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="{recon,curves,roc,hist,maps,gif}")
    rows_help = "number of images (default: the most and least anomalous of good and of each defect type)"

    def add(name: str, text: str):
        return sub.add_parser(name, help=text, description=text, formatter_class=parser.formatter_class,
                              prog=f"python -m cbigan.plots {name}")

    def common(p, data=True):
        p.add_argument("--out", help="output file, .png or .pdf (default: <run>/figures/<name>.png; several "
                                     "runs: <their common parent>/figures/<name>.png)")
        p.add_argument("--pdf", action="store_true", help="also write a PDF beside the PNG")
        p.add_argument("--dpi", type=int, default=DPI, help="pixels per inch")
        if data:
            p.add_argument("--data-dir", help="data folder (default: the one the run was trained on)")

    p = add("recon", "test images, reconstructions and difference maps (Figs. 4, 5)")
    p.add_argument("run", help="run folder runs/<category>/<run>")
    p.add_argument("--compare", metavar="RUN_B", help="a second run side by side (e.g. EGBAD vs CBiGAN)")
    p.add_argument("--rows", type=int, metavar="N", help=rows_help)
    p.add_argument("--names", nargs="+", help="column labels of the runs (default: method, alpha and run name)")
    common(p)
    p.set_defaults(func=cmd_recon)

    p = add("curves", "losses, critic scores and test metrics over steps")
    p.add_argument("run", help="run folder runs/<category>/<run>")
    common(p, data=False)
    p.set_defaults(func=cmd_curves)

    for name, func, text in (("roc", cmd_roc, "ROC curves, one per run (category)"),
                             ("hist", cmd_hist, "score histograms of good vs defective test images")):
        p = add(name, text)
        p.add_argument("runs", nargs="+", help="run folders runs/<category>/<run>")
        p.add_argument("--names", nargs="+",
                       help="legend names of the runs (default: the category; the method label when a "
                            "category appears twice)")
        if name == "hist":
            p.add_argument("--by-type", action="store_true", help="stack defective images by defect type")
        common(p)
        p.set_defaults(func=func)

    p = add("maps", "anomaly maps over test images, with the ground-truth outline")
    p.add_argument("run", help="run folder runs/<category>/<run>")
    p.add_argument("--rows", type=int, metavar="N", help=rows_help)
    p.add_argument("--sigma", type=float,
                   help="Gaussian smoothing of the maps in pixels; 0: none (default: 4)")
    p.add_argument("--stride", type=int, help="textures: patch stride of the maps (default: the patch size)")
    p.add_argument("--original-size", action="store_true",
                   help="show every image at its original size, its map resized back to it")
    common(p)
    p.set_defaults(func=cmd_maps)

    p = add("gif", "animated GIF of a run's training previews (<run>/previews.gif)")
    p.add_argument("run", help="run folder runs/<category>/<run>")
    p.add_argument("--max-frames", type=int, default=60, help="most frames in the GIF (evenly spread)")
    p.set_defaults(func=cmd_gif)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = command_line(argv)
    try:
        paths = args.func(args)
    except Exception as e:  # user errors in one line; anything else is a bug and keeps its traceback
        user = [PlotError]
        for module, name in (("cbigan.data.pipeline", "DataError"), ("cbigan.scoring.metrics", "MetricError")):
            if module in sys.modules:
                user.append(getattr(sys.modules[module], name))
        if isinstance(e, tuple(user)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
