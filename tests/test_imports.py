"""The import structure of the ``cbigan`` package, read with ``ast`` (nothing is imported or executed).

* No import cycles between ``cbigan`` modules, counting every ``import`` / ``from ... import`` statement:
  module-level and inside functions, absolute (``cbigan.x``) and relative (``.x``, ``..x``).
* The light modules (run folders, config, anomaly score, folder layout, errors) do not import TensorFlow
  or Keras, directly or through other ``cbigan`` modules, not even inside a function.

How a statement becomes edges of the module graph (a package's ``__init__.py`` is the package):

* ``import cbigan.a.b``: ``cbigan.a.b`` (or its longest existing prefix);
* ``from B import name``: ``B.name`` where that is a module (``from . import x``, ``from .pkg import
  name``), else ``B`` itself (a name defined in ``B``);
* plus the packages Python runs on the way (``B`` in ``from .pkg import name``, ``cbigan.a`` in
  ``import cbigan.a.b``), except those that contain the importing module: they are already being
  imported when its code runs;
* imports under ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` are left out: they never run
  when the module is imported (``python -m cbigan.x`` runs the file as ``__main__``, a module apart
  from ``cbigan.x``); so are self-imports.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cbigan"
#: Modules that must stay importable without TensorFlow (reading results, configs, folders, errors).
LIGHT_MODULES = ("runfolder", "config", "anomaly_score", "layout", "errors")
#: Top-level names of the heavy frameworks.
HEAVY = ("tensorflow", "keras", "tf_keras")


@dataclass(frozen=True)
class Import:
    """One imported module: ``target`` (absolute dotted name), where, and whether it is deferred."""

    target: str
    path: str
    line: int
    in_function: bool

    def where(self) -> str:
        return f"{self.path}:{self.line}" + (" (inside a function)" if self.in_function else "")


# ---------------------------------------------------------------------------------------- scanning
def discover(pkg_dir: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """{module name: (file, is_package)} for every ``.py`` file under ``pkg_dir``."""
    modules = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir).with_suffix("")
        if "__pycache__" in rel.parts:
            continue
        parts = [package, *rel.parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _never_runs_on_import(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` / ``if __name__ == "__main__":``."""
    if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        sides = [test.left, test.comparators[0]]
        names = [x for x in sides if isinstance(x, ast.Name) and x.id == "__name__"]
        mains = [x for x in sides if isinstance(x, ast.Constant) and x.value == "__main__"]
        return bool(names and mains)
    return False


def _statements(tree: ast.Module):
    """(import statement, inside a function) for every import that can run when the module is imported."""
    out = []

    def visit(node, in_function):
        if isinstance(node, ast.If) and _never_runs_on_import(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append((node, in_function))
            return
        deeper = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, deeper)

    visit(tree, False)
    return out


def _ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b'] (the packages containing it)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _existing_prefix(name: str, modules) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def scan(pkg_dir: Path, package: str = PACKAGE):
    """(internal graph {module: {module: [Import]}}, external imports {module: [Import]}) of a package."""
    modules = discover(pkg_dir, package)
    internal = {m: {} for m in modules}
    external = {m: [] for m in modules}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(pkg_dir.parent))
        containing = set(_ancestors(module))
        for node, in_function in _statements(tree):
            named = []  # (absolute dotted name, only run on the way) for what this statement loads
            if isinstance(node, ast.Import):
                named = [(alias.name, False) for alias in node.names]
            else:
                if node.level:
                    here = module if is_package else module.rpartition(".")[0]
                    up = here.split(".")
                    if node.level - 1 >= len(up):
                        raise ImportError(f"{rel}:{node.lineno}: relative import beyond the top package")
                    base = ".".join(up[:len(up) - (node.level - 1)])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                named = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, False) for a in node.names]
                named.append((base, True))  # the package ``from`` reads from is run too (unless it contains us)
            seen = set()
            for name, on_the_way in named:
                is_internal = name == package or name.startswith(package + ".")
                if not is_internal:
                    if name not in seen and not on_the_way:
                        external[module].append(Import(name, rel, node.lineno, in_function))
                        seen.add(name)
                    continue
                target = _existing_prefix(name, modules)
                if target is None:
                    continue
                targets = [t for t in _ancestors(target) if t not in containing]
                if not (on_the_way and target in containing):
                    targets.append(target)
                for t in targets:
                    if t != module and t not in seen:
                        seen.add(t)
                        internal[module].setdefault(t, []).append(Import(t, rel, node.lineno, in_function))
    return internal, external


# ---------------------------------------------------------------------------------------- cycles
def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; graph: {node: iterable of nodes}."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                comps.append(sorted(comp))
    return comps


def shortest_cycle(graph, start, members) -> list[str]:
    """The shortest cycle ``[start, ..., start]`` within ``members`` (breadth-first, ties by name)."""
    parent, queue = {}, deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]  # path: node, its parent, ..., start
            if child in members and child not in parent and child != start:
                parent[child] = node
                queue.append(child)
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph) -> list[list[str]]:
    """Import cycles ``[a, ..., a]``: for every strongly connected component with a cycle (several
    modules, or one that imports itself), the shortest cycle through each member that no cycle reported
    so far passes through, so every module on a cycle is named; [] for an acyclic graph."""
    cycles = []
    for comp in strongly_connected(graph):
        if len(comp) == 1 and comp[0] not in graph.get(comp[0], ()):
            continue
        covered = set()
        for node in comp:
            if node not in covered:
                cycle = shortest_cycle(graph, node, set(comp))
                covered |= set(cycle)
                cycles.append(cycle)
    return sorted(cycles)


def describe(cycle, internal) -> str:
    chain = " -> ".join(cycle)
    steps = [f"    {a} -> {b}: " + ", ".join(i.where() for i in internal[a][b]) for a, b in pairwise(cycle)]
    return "\n".join([chain, *steps])


# ---------------------------------------------------------------------------------------- the finder itself
def test_cycle_finder_finds_a_cycle_and_nothing_in_an_acyclic_graph():
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a", "c"]}) == []
    assert find_cycles({}) == []
    # the shortest way round, separate cycles reported separately, a self-import is a cycle
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": ["a"]}) == [["a", "c", "a"], ["b", "c", "a", "b"]]
    # one component, two cycles through a shared module: both are named
    assert find_cycles({"t": ["e", "p"], "e": ["t"], "p": ["t"]}) == [["e", "t", "e"], ["p", "t", "p"]]
    assert find_cycles({"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x"], "s": ["s"]}) == [
        ["a", "b", "a"], ["s", "s"], ["x", "y", "z", "x"]]
    # a long chain (no recursion limit)
    chain = {f"m{i:04d}": [f"m{i + 1:04d}"] for i in range(3000)}
    assert find_cycles(chain) == []
    chain["m3000"] = ["m0000"]
    assert len(find_cycles(chain)[0]) == 3002


def _write(root: Path, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_scanner_resolves_every_import_form(tmp_path):
    _write(tmp_path, {
        "fakepkg/__init__.py": "",
        "fakepkg/a.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "import numpy as np\n"
            "from . import b\n"
            "import fakepkg.c as cc\n"
            "from .sub.deep import X\n"
            "if TYPE_CHECKING:\n"
            "    from . import d\n"
            "def f():\n"
            "    from .sub import thing\n"
            "    import tensorflow as tf\n"),
        "fakepkg/b.py": "from .a import something\nif __name__ == '__main__':\n    from .sub import thing\n",
        "fakepkg/c.py": "from fakepkg import CONSTANT\nimport os.path\n",
        "fakepkg/d.py": "from . import d\n",
        "fakepkg/sub/__init__.py": "from ..b import x\n",
        "fakepkg/sub/thing.py": "",
        "fakepkg/sub/deep.py": "from . import thing\nfrom .. import c\nclass K:\n    from .thing import y\n",
    })
    internal, external = scan(tmp_path / "fakepkg", "fakepkg")
    graph = {m: set(ts) for m, ts in internal.items()}
    assert graph == {
        "fakepkg": set(),
        "fakepkg.a": {"fakepkg.b", "fakepkg.c", "fakepkg.sub", "fakepkg.sub.deep", "fakepkg.sub.thing"},
        "fakepkg.b": {"fakepkg.a"},
        "fakepkg.c": {"fakepkg"},  # CONSTANT is read from the package's __init__
        "fakepkg.d": set(),  # a self-import is no edge
        "fakepkg.sub": {"fakepkg.b"},  # '..' from a package's __init__
        "fakepkg.sub.deep": {"fakepkg.c", "fakepkg.sub.thing"},  # its own package is already running
        "fakepkg.sub.thing": set(),
    }
    assert [(i.target, i.line, i.in_function) for i in external["fakepkg.a"]] == [
        ("__future__", 1, False), ("typing", 2, False), ("numpy", 3, False), ("tensorflow", 11, True)]
    assert internal["fakepkg.a"]["fakepkg.sub.thing"][0].in_function
    assert not internal["fakepkg.sub.deep"]["fakepkg.sub.thing"][1].in_function  # a class body runs on import
    assert find_cycles(graph) == [["fakepkg.a", "fakepkg.b", "fakepkg.a"],
                                  ["fakepkg.sub", "fakepkg.b", "fakepkg.a", "fakepkg.sub"]]
    assert describe(["fakepkg.a", "fakepkg.b", "fakepkg.a"], internal).splitlines() == [
        "fakepkg.a -> fakepkg.b -> fakepkg.a",
        "    fakepkg.a -> fakepkg.b: fakepkg/a.py:4",
        "    fakepkg.b -> fakepkg.a: fakepkg/b.py:1",
    ]


def test_heavy_import_check_follows_the_graph(tmp_path):
    _write(tmp_path, {
        "lite/__init__.py": "",
        "lite/light.py": "from . import middle\n",
        "lite/middle.py": "def f():\n    from .heavy import g\n",
        "lite/heavy.py": "import tensorflow.keras as k\n",
        "lite/sub/__init__.py": "import keras\n",
        "lite/sub/leaf.py": "import json\n",
        "lite/clean.py": "from .sub.leaf import x\n",
    })
    internal, external = scan(tmp_path / "lite", "lite")
    strict = heavy_imports(internal, external, "lite.light", at_import_only=False)
    assert strict == [("lite.light -> lite.middle (lite/light.py:1) -> lite.heavy (lite/middle.py:2, inside a function)"
                       " imports tensorflow.keras at lite/heavy.py:1")]
    assert heavy_imports(internal, external, "lite.light", at_import_only=True) == []  # deferred only
    # a module's package __init__ runs first, and so does that of a subpackage imported from outside
    assert heavy_imports(internal, external, "lite.sub.leaf", at_import_only=True) == [
        "lite.sub.leaf -> lite.sub (its package) imports keras at lite/sub/__init__.py:1"]
    assert len(heavy_imports(internal, external, "lite.clean", at_import_only=True)) == 1


# ---------------------------------------------------------------------------------------- the real package
@pytest.fixture(scope="module")
def cbigan_imports():
    return scan(ROOT / PACKAGE, PACKAGE)


def test_scanner_sees_the_real_package(cbigan_imports):
    internal, external = cbigan_imports
    assert {"cbigan", "cbigan.model", "cbigan.losses", "cbigan.networks"} <= set(internal)
    assert {"cbigan.losses", "cbigan.networks", "cbigan.config"} <= set(internal["cbigan.model"])
    assert {"tensorflow", "keras"} <= {i.target.split(".")[0] for i in external["cbigan.model"]}
    assert "cbigan.model" not in reachable(internal, "cbigan.losses")  # the losses do not import the model


def test_no_import_cycles(cbigan_imports):
    internal, _ = cbigan_imports
    cycles = find_cycles({m: set(ts) for m, ts in internal.items()})
    assert not cycles, "import cycles in cbigan:\n" + "\n".join(describe(c, internal) for c in cycles)


def reachable(internal, start, at_import_only=False) -> dict[str, list[str]]:
    """{module: import path from ``start``} for every cbigan module that importing ``start`` may load,
    its containing packages included (Python runs their ``__init__`` first). ``at_import_only``: follow
    only imports that run when a module is imported (not those inside functions)."""
    paths = {start: [start]}
    queue = deque([start])
    for pkg in _ancestors(start):
        if pkg in internal and pkg not in paths:
            paths[pkg] = [start, pkg]
            queue.append(pkg)
    while queue:
        node = queue.popleft()
        for child, imports in sorted(internal.get(node, {}).items()):
            if at_import_only and all(i.in_function for i in imports):
                continue
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return paths


def _via(internal, path) -> str:
    """'a -> b (a.py:3) -> c (b.py:9, inside a function)': each hop with where it is imported."""
    out = path[0]
    for a, b in pairwise(path):
        hop = internal[a].get(b)
        if hop is None:  # a containing package, run before ``a``
            out += f" -> {b} (its package)"
            continue
        first = min(hop, key=lambda i: (i.in_function, i.line))
        out += f" -> {b} ({first.path}:{first.line}" + (", inside a function)" if first.in_function else ")")
    return out


def heavy_imports(internal, external, start, at_import_only):
    found = []
    for module, path in reachable(internal, start, at_import_only).items():
        for imp in external[module]:
            if imp.target.split(".")[0] in HEAVY or imp.target.startswith("tensorflow"):
                if at_import_only and imp.in_function:
                    continue
                found.append(f"{_via(internal, path)} imports {imp.target} at {imp.where()}")
    return found


def _light_module(name):
    if not (ROOT / PACKAGE / f"{name}.py").is_file():
        pytest.skip(f"{PACKAGE}/{name}.py does not exist")
    return f"{PACKAGE}.{name}"


@pytest.mark.parametrize("name", LIGHT_MODULES)
def test_light_modules_do_not_load_tensorflow_when_imported(name, cbigan_imports):
    """Importing them does not load TensorFlow or Keras (imports inside functions not followed)."""
    module = _light_module(name)
    found = heavy_imports(*cbigan_imports, module, at_import_only=True)
    assert not found, f"importing {module} loads TensorFlow or Keras:\n" + "\n".join(found)
