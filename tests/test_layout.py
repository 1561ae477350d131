"""The package's two parts stay apart: the layer library never imports the reproduction harness,
and no module of ``perturbnn`` imports itself back through a chain of imports.

The imports are read from the source with :mod:`ast` (every ``import`` statement, at any depth,
including those inside functions and ``TYPE_CHECKING`` blocks), so the check does not depend on
what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "perturbnn"
HARNESS = "perturbnn.repro"
# Modules may not exceed this many lines (about 500, the size of one idea; see issue 10).
MAX_LINES = 520


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The ``perturbnn`` modules that ``name`` imports (a package's ``__init__`` counts only when
    it is imported by name, not as the parent of an imported submodule)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from package import submodule`` imports the submodule.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH: dict[str, set[str]] = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_harness(name: str) -> bool:
    return name == HARNESS or name.startswith(HARNESS + ".")


def test_the_graph_sees_the_known_imports() -> None:
    # Guards the parser itself: a checker that found no edges would pass every test below.
    assert "perturbnn.layers" in GRAPH["perturbnn"]
    assert "perturbnn.repro.config" in GRAPH["perturbnn.repro.run"]
    assert "perturbnn.repro.distributed" in GRAPH["perturbnn.repro.fit"]
    assert any(_is_harness(name) for name in MODULES) and len(MODULES) > 20


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _is_harness(n)))
def test_layer_library_never_imports_the_harness(name: str) -> None:
    harness = sorted(m for m in GRAPH[name] if _is_harness(m))
    assert not harness, f"{name} imports the reproduction harness: {harness}"


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or ``[]`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles() -> None:
    cycle = _find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_hold_one_idea(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it (at most {MAX_LINES})"
