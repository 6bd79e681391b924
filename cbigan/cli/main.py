"""The ``cbigan`` command (``pip install .``; also ``python -m cbigan``): one subcommand per job.

``cbigan train ...`` is ``python train.py ...``, ``cbigan evaluate ...`` is ``python evaluate.py ...``,
and so on: each subcommand hands the rest of the command line to the ``main(argv)`` of its module in
:mod:`cbigan.cli`, so the flags, help and exit status are those of that module (``cbigan train --help``
prints ``python train.py --help``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cbigan.cli import quiet_tensorflow

#: subcommand -> (module of cbigan.cli, one line of help)
COMMANDS = {
    "train": ("train", "train a model on one category or several (python train.py)"),
    "evaluate": ("evaluate", "score a run's test set: metrics, maps, report.html, tables (python evaluate.py)"),
    "predict": ("predict", "score new images with a run, a SavedModel or a .tflite model (python predict.py)"),
    "export": ("export", "write a run's TF Serving SavedModel or LiteRT model (python -m cbigan.export)"),
    "plots": ("plots", "figures of runs: recon, curves, roc, hist, maps, gif (python -m cbigan.plots)"),
    "bench": ("bench", "benchmarks: train, ops, loop, score, serve, metrics (python -m cbigan.bench)"),
    "reproduce": ("reproduce", "CBiGAN, EGBAD and the autoencoder per category, Tables II/III "
                               "(python -m cbigan.reproduce)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cbigan", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="CBiGAN anomaly detection: train on defect-free images, flag and locate defects.",
        epilog="'cbigan COMMAND --help' lists the options of a command. TensorFlow's start-up messages\n"
               "are hidden unless --verbose is given or TF_CPP_MIN_LOG_LEVEL is set.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, or the usage error naming the commands
        return 2
    name, rest = argv[0], argv[1:]
    quiet_tensorflow(rest)
    module = importlib.import_module(f"cbigan.cli.{COMMANDS[name][0]}")
    return int(module.main(rest) or 0)

if __name__ == "__main__":
    sys.exit(main())
