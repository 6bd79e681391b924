"""CBiGAN for unsupervised visual anomaly detection (TensorFlow 2 / Keras 3)."""

import sys

if sys.argv[:1] == ["-m"]:  # ``python -m cbigan[.X]``: quiet TensorFlow before that module imports it
    from cbigan.cli import quiet_tensorflow

    quiet_tensorflow(sys.argv[1:])
