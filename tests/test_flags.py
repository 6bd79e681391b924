"""Every flag earns its place: each option of every command is documented beyond ``--help`` (README.md,
docs/, and for the benchmarks results/benchmarks.md) and exercised by a test (its flag, or the setting it
fills, appears in a test other than the help tests). The two benchmarks that need minutes of training steps
and the yardstick (``bench train``, ``bench ops``) are measured, not tested: :data:`MEASURED_ONLY`."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "evaluate", "predict", "export", "plots", "reproduce", "bench")
#: Tests that only read the help texts: they do not count as a test of a flag's use.
HELP_TESTS = ("test_cli.py", "test_flags.py")
#: Sub-commands whose flags need no test: benchmarks of the training step, minutes per figure, run by hand
#: on a quiet machine (results/benchmarks.md holds their figures and commands).
MEASURED_ONLY = ("bench train", "bench ops")


def options(parser: argparse.ArgumentParser, name: str = ""):
    """(command name, flag strings, destination) of every option of ``parser`` and its sub-commands,
    ``--help`` aside."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from options(sub, f"{name} {sub_name}".strip())
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield name, tuple(action.option_strings), action.dest


def unearned(parsers: dict, docs: str, tests: dict) -> list[str]:
    """``command --flag: what is missing`` for every option without documentation or a test."""
    out = []
    for command, parser in parsers.items():
        for sub, flags, dest in options(parser, command):
            named = [re.escape(f) + r"(?![\w-])" for f in flags]
            documented = any(re.search(x, docs) for x in named)
            uses = named + [rf"\b{dest}\s*=", rf"[\"']{dest}[\"']", rf"\.{dest}\b"]
            tested = sub in MEASURED_ONLY or any(re.search(x, text) for text in tests.values() for x in uses)
            missing = [w for w, ok in (("documentation", documented), ("test", tested)) if not ok]
            if missing:
                out.append(f"{sub} {max(flags, key=len)}: missing {' and '.join(missing)}")
    return out


def _project():
    parsers = {c: importlib.import_module(f"cbigan.cli.{c}").build_parser() for c in COMMANDS}
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                                               ROOT / "results" / "benchmarks.md"])
    tests = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name not in HELP_TESTS}
    return parsers, docs, tests


def test_every_flag_is_documented_and_tested():
    parsers, docs, tests = _project()
    assert sum(1 for p in parsers.values() for _ in options(p)) > 100  # every command was read
    assert unearned(parsers, docs, tests) == []


def test_a_flag_without_documentation_or_test_is_named():
    parsers, docs, tests = _project()
    parsers["train"].add_argument("--frobnicate-level", type=int, dest="frobnicate_level")
    parsers["evaluate"].add_argument("--quux", action="store_true")
    assert unearned(parsers, docs + "\nuse `--quux` to quux\n", tests) == [
        "train --frobnicate-level: missing documentation and test", "evaluate --quux: missing test"]
