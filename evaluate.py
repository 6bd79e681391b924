"""Evaluate trained runs and lay them out like the paper's Tables II and III.

  python evaluate.py runs/<category>/<run> [--lambda 0 0.1 0.5 1]   per-image scores + metrics per lambda
  python evaluate.py --table runs/                                   Tables II/III beside the paper's rows
  python evaluate.py --compare runs_a/ runs_b/                       per-category difference B - A

Entry point only: the flags and ``main`` are in :mod:`cbigan.cli.evaluate`.
"""

import sys

from cbigan.cli import quiet_tensorflow
from cbigan.cli.evaluate import main, parse_args  # noqa: F401

if __name__ == "__main__":
    quiet_tensorflow()  # TensorFlow's start-up chatter off the terminal, unless --verbose
    sys.exit(main())
