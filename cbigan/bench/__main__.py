"""``python -m cbigan.bench {train,ops,loop,score,serve,metrics} [options]`` (the command line: :mod:`cbigan.cli.bench`)."""

from cbigan.cli.bench import main

raise SystemExit(main())
