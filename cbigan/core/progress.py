"""One progress bar rule for the long loops (scoring a test set, predict on a folder, calibration).

A tqdm bar on stderr, shown only on a terminal: silent under ``--quiet`` (``quiet=True``), in
non-terminal logs (files, pipes, CI) and for fewer than ``min_items`` items.
"""

from __future__ import annotations

import sys


def shows_progress(file=None, quiet: bool = False) -> bool:
    """Whether a bar would be drawn on ``file`` (default stderr)."""
    if quiet:
        return False
    out = sys.stderr if file is None else file
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable=None, *, desc: str = "", total: int | None = None, unit: str = "img",
             quiet: bool = False, file=None, min_items: int = 2):
    """``tqdm(iterable)`` (or a manual bar with ``total``) that stays silent as the module says."""
    from tqdm import tqdm

    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    out = sys.stderr if file is None else file
    disable = not shows_progress(out, quiet) or (total is not None and total < min_items)
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=out, leave=False, disable=disable,
                dynamic_ncols=True)
