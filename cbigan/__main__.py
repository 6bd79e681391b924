"""``python -m cbigan COMMAND ...``: the ``cbigan`` command (:mod:`cbigan.cli.main`)."""

import sys

from cbigan.cli.main import main

sys.exit(main())
