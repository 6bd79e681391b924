"""Benchmarks (not tests): ``python -m cbigan.bench {train,score,serve,metrics}``.

Each subcommand lives in ``cbigan/benchmarks/<name>.py`` with a ``main(argv)`` and prints its figures,
ratios measured side by side in one run.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("train", "score", "serve", "metrics")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m cbigan.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"cbigan.benchmarks.{argv[0]}")
    except ModuleNotFoundError:
        print(f"benchmark '{argv[0]}' is not available in this version", file=sys.stderr)
        return 2
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
