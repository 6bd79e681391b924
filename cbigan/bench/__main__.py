"""``python -m cbigan.bench {train,score,serve,metrics} [options]`` (the command line: :mod:`cbigan.cli.bench`)."""

from ..cli.bench import main

raise SystemExit(main())
