"""The import structure of the ``cbigan`` package.

* The contracts in ``.importlinter`` (no import cycles, the layers, the light modules reach no TensorFlow
  but through imports inside functions), checked by import-linter's ``lint-imports``, which counts every
  import statement, those inside functions too.
* The light modules (run folders, records, config, anomaly score, folder layout, errors) do not load
  TensorFlow or Keras when imported: checked in a fresh interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
#: Modules that must stay importable without TensorFlow (reading results, configs, folders, errors).
LIGHT_MODULES = ("core.errors", "core.layout", "core.anomaly_score", "core.kinds", "core.config", "core.runfolder",
                 "core.results", "reporting.tables")
#: Top-level names of the heavy frameworks.
HEAVY = ("tensorflow", "keras", "tf_keras")


def lint_imports(cwd: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    """``lint-imports`` on ``config`` for the package(s) under ``cwd`` (no cache written)."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo", str(config)],
        cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, f"an import contract in .importlinter is broken:\n{result.stdout}{result.stderr}"
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


def test_import_contracts_can_break(tmp_path):
    """The same contracts on a copy of the package with four deliberate faults: two cycles (between top-level
    modules, multirun <-> reproduce, and inside a stage, scoring.localization <-> scoring.threshold,
    through imports inside functions), a record module importing from a higher stage (core.layout ->
    reporting.figures) and a module-level TensorFlow import in core.results."""
    pkg = tmp_path / "cbigan"
    shutil.copytree(ROOT / "cbigan", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in [("multirun", "def _cycle():\n    from cbigan import reproduce\n    return reproduce\n"),
                       ("reproduce", "def _cycle():\n    from cbigan import multirun\n    return multirun\n"),
                       ("core/layout", "def _climbs():\n    from cbigan.reporting.figures import to_display\n"
                                       "    return to_display\n"),
                       ("scoring/localization", "def _cycle():\n    from cbigan.scoring import threshold\n"
                                                "    return threshold\n"),
                       ("core/results", "import tensorflow as _tf  # noqa: E402\n")]:
        with open(pkg / f"{name}.py", "a") as f:
            f.write("\n" + text)
    result = lint_imports(tmp_path)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, out
    assert "Contracts: 0 kept, 3 broken." in out, out
    assert ".multirun -> .reproduce" in out or ".reproduce -> .multirun" in out, out
    assert "cbigan.core.layout -> cbigan.reporting.figures" in out, out
    assert "cycles are allowed in cbigan.scoring" in out, out
    assert ".localization -> .threshold" in out or ".threshold -> .localization" in out, out
    assert "cbigan.core.results is not allowed to import tensorflow" in out, out


def import_light_modules(cwd: Path) -> subprocess.CompletedProcess:
    """Import the light modules one after the other in a fresh interpreter; exit 1 naming the first one
    whose import loads TensorFlow or Keras."""
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {LIGHT_MODULES!r}:
            importlib.import_module("cbigan." + name)
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
            if heavy:
                sys.exit(f"importing cbigan.{{name}} loads {{heavy[0]}}")
        """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_light_modules_do_not_load_tensorflow_when_imported():
    result = import_light_modules(ROOT)
    assert result.returncode == 0, result.stderr


def test_light_module_check_can_fail(tmp_path):
    """A copy of the package whose results module imports TensorFlow (a stand-in package: fast)."""
    shutil.copytree(ROOT / "cbigan", tmp_path / "cbigan", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("")
    with open(tmp_path / "cbigan" / "core" / "results.py", "a") as f:
        f.write("\nimport tensorflow as _tf  # noqa: E402\n")
    result = import_light_modules(tmp_path)
    assert result.returncode == 1 and "importing cbigan.core.results loads tensorflow" in result.stderr, result.stderr
