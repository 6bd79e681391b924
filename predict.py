"""Score new images with a trained run, its SavedModel or its LiteRT model (same as
``python -m cbigan.predict``, runnable by path from any folder).

  python predict.py runs/<category>/<run> new_images/ --maps maps/   CSV of score, is_anomaly + overlays

Entry point only: the flags and ``main`` are in :mod:`cbigan.cli.predict`.
"""

import sys

from cbigan.cli import quiet_tensorflow
from cbigan.cli.predict import main  # noqa: F401

if __name__ == "__main__":
    quiet_tensorflow()  # TensorFlow's start-up chatter off the terminal, unless --verbose
    sys.exit(main())
