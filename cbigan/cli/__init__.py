"""Command lines: the argument parsing of every cbigan command, one module per command.

=========================================================  ==========================
command                                                    parser and ``main(argv)``
=========================================================  ==========================
``python train.py``                                        :mod:`cbigan.cli.train`
``python evaluate.py``                                     :mod:`cbigan.cli.evaluate`
``python -m cbigan.export``                                :mod:`cbigan.cli.export`
``python -m cbigan.predict``                               :mod:`cbigan.cli.predict`
``python -m cbigan.plots``                                 :mod:`cbigan.cli.plots`
``python -m cbigan.reproduce``                             :mod:`cbigan.cli.reproduce`
``python -m cbigan.bench {train,score,serve,metrics}``     :mod:`cbigan.cli.bench`
``cbigan <command>`` (after ``pip install .``)             :mod:`cbigan.cli.main`
=========================================================  ==========================

Each module has ``build_parser()`` and ``main(argv=None) -> int`` (the exit status) and also runs as
``python -m cbigan.cli.<command>``. The library modules hold no argument parsing; the ``python -m
cbigan.export|predict|plots`` forms above are the command modules ``cbigan/export.py``, ``predict.py`` and
``plots.py`` (each runs its ``cbigan.cli`` module), ``python -m cbigan.reproduce`` a guard at the bottom
of that module.

Help texts tell the real default of every option once: :class:`HelpFormatter` appends
``(default: X)`` where the parser's default is the value used (``on``/``off`` for switches), and the
options whose parser default is only a "not given" marker (``None``: the value then comes from the
preset, the category or the run) say in words what they default to, for the training options from
:class:`cbigan.core.config.Config` and the presets (:func:`config_default`). Building the parsers imports no
TensorFlow (the commands import what they need after parsing): ``--help`` of ``python -m
cbigan.cli.<command>`` is quick, and ``train.py`` launching several categories stays TensorFlow-free.

Every entry point (``train.py``, ``evaluate.py``, ``predict.py``, the ``cbigan`` command and, from
``cbigan/__init__.py``, every ``python -m cbigan...``) first calls :func:`quiet_tensorflow`:
TensorFlow's start-up chatter (CUDA stubs, oneDNN and CPU-instruction notes, ``failed call to cuInit``
on a machine without a GPU) stays out of the terminal unless the user passes ``--verbose`` (every
parser made by :func:`parser` has it) or sets ``TF_CPP_MIN_LOG_LEVEL`` themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

from cbigan.core.config import show  # a value as a user types it, in help and --print-config alike

#: The repository (cbigan/cli/ is two levels down): warnings raised from its code print as one line.
_OURS = Path(__file__).resolve().parents[2]
_python_format = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None):
    """Our own warnings (bad input, missing masks, ...) as ``warning: <message>``: they name the file or
    folder and what to do, so the Python source line a default warning shows only adds noise. Others'
    warnings keep Python's format."""
    try:
        ours = Path(filename).resolve().is_relative_to(_OURS) and issubclass(category, UserWarning)
    except (OSError, ValueError):
        ours = False
    return f"warning: {message}\n" if ours else _python_format(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning  # the commands import this package before anything warns

#: Set beside ``TF_CPP_MIN_LOG_LEVEL`` when :func:`quiet_tensorflow` set it (child processes, e.g. the
#: categories of ``--category all``, inherit both and stay quiet too).
QUIET_MARK = "CBIGAN_QUIET_TF"
#: Lines of TensorFlow's start-up that ``TF_CPP_MIN_LOG_LEVEL`` does not hide: written by its native
#: libraries to the stderr file descriptor while they load, before its logging is initialized.
CHATTER = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "cpu_feature_guard.cc",
           "To enable the following instructions", "oneDNN custom operations", "cuda_platform.cc",
           "failed call to cuInit", "Unable to register cu")


class _QuietLoader:
    """Runs the import of ``tensorflow`` with the stderr file descriptor caught, then writes back what
    was caught less the :data:`CHATTER` lines (Python warnings and errors of the import keep showing)."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = [line for line in caught.read().decode("utf-8", "replace").splitlines(True)
                        if not any(c in line for c in CHATTER)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first ``import tensorflow`` in :class:`_QuietLoader`, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(argv=None) -> bool:
    """Keeps TensorFlow's start-up chatter out of the terminal, unless ``--verbose`` is in ``argv``
    (default ``sys.argv``) or the user set ``TF_CPP_MIN_LOG_LEVEL``: sets it to 3 and, when TensorFlow is
    not imported yet, filters what its native libraries print while loading. Call it before anything
    imports TensorFlow. Returns whether it quieted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" in argv:
        return False
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ and QUIET_MARK not in os.environ:
        return False  # the user's own setting
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ[QUIET_MARK] = "1"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
    return True


VERBOSE_HELP = "show TensorFlow's start-up messages (hidden unless TF_CPP_MIN_LOG_LEVEL is set)"


@contextlib.contextmanager
def each_warning_once():
    """Within it, a warning whose text was already shown is not shown again, from whatever line it
    comes (Python's default shows it once per line that raises it: e.g. a missing mask, once by the
    scoring and once by the report reading the same test folder)."""
    shown, previous = set(), warnings.showwarning

    def show_once(message, category, filename, lineno, file=None, line=None):
        if (str(message), category) not in shown:
            shown.add((str(message), category))
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once
    try:
        yield
    finally:
        warnings.showwarning = previous


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends the real default to an option's help, once.

    Nothing is added when the help already says ``default`` (in words), for positionals, and for
    options whose default is ``None`` (not given: the help says what happens then, if anything);
    switches (no value) get ``(default: off)``, i.e. the switch is not given. Descriptions and
    epilogs are printed as written.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # store_true / store_false / store_const: absent = off
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: {show(action.default).replace('%', '%%')})"


def parser(prog: str, description: str, **kw) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with :class:`HelpFormatter`; a one-paragraph ``description`` is wrapped,
    an ``epilog`` is printed as written."""
    if "\n" not in description:
        description = textwrap.fill(description, 78)
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kw)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)  # read by quiet_tensorflow
    return p


def config_default(name: str, text: str | None = None) -> str:
    """``(default: X; --preset fast: Y)`` for the :class:`cbigan.core.config.Config` field ``name``: its
    value in the default (paper) preset, then each preset that changes it. ``text`` replaces X."""
    from cbigan.core.config import PRESETS, Config

    base = getattr(Config(), name)
    out = f"default: {show(base) if text is None else text}"
    for preset, overrides in sorted(PRESETS.items()):
        if name in overrides and overrides[name] != base:
            out += f"; --preset {preset}: {show(overrides[name])}"
    return f"({out})".replace("%", "%%")
