"""The toolkit's user-facing errors (no TensorFlow import): each carries a one-line message that names
the file or folder at fault and says what to do. Command-line tools print it as ``error: <message>``.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """A problem with the user's data or output folder (missing, unreadable, in use, full)."""


class EvaluationError(RuntimeError):
    """A problem with what was asked of evaluation (not a run folder, not evaluated yet, bad option)."""
