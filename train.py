"""Train CBiGAN on one MVTec AD category: ``python train.py --category grid``.

Entry point only: the flags and ``main`` are in :mod:`cbigan.cli.train` (every flag maps to a field
of :class:`cbigan.core.config.Config`; ``python train.py --help`` lists them with their defaults).
``--category all`` or ``--category a,b,c`` trains several categories (:mod:`cbigan.multirun`);
``--distribute mirrored|multiworker`` trains one category on several GPUs or hosts (docs/distributed.md).
"""

import sys

from cbigan.cli import quiet_tensorflow
from cbigan.cli.train import main, parse_args  # noqa: F401  (tests import parse_args from here)

if __name__ == "__main__":
    quiet_tensorflow()  # TensorFlow's start-up chatter off the terminal, unless --verbose
    sys.exit(main())
