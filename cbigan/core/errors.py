"""The toolkit's user-facing errors (no TensorFlow import): each carries a one-line message that names
the file or folder at fault and says what to do. Command-line tools print it as ``error: <message>``.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """A problem with the user's data or output folder (missing, unreadable, in use, full)."""


class EvaluationError(RuntimeError):
    """A problem with what was asked of evaluation (not a run folder, not evaluated yet, bad option)."""


def exception_reason(e: BaseException) -> str:
    """``ClassName: message`` of an exception (just the class name when it has no message): the reason
    a file could not be read, as the one-line errors quote it."""
    return f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
