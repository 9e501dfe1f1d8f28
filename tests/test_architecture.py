"""The house rules of docs/architecture.md, checked on the source: who may import whom.

Every import statement counts, at the top of a module or inside a function, so a dependency
cannot hide in a function body. Rooms are carseg's subpackages (carseg.io, carseg.runtime, ...)
and its top-level modules (carseg.cli, carseg.errors).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARSEG = REPO / "python" / "carseg"
EXPORT = REPO / "export"

# room -> the rooms it may import (besides itself). errors is the floor everyone stands on.
ALLOWED = {
    "carseg": {"errors", "_compat", "_native"},  # the package's __init__
    "_compat": set(),  # old module names (carseg.runner, ...) -> carseg.train.*, by string
    "errors": set(),
    "io": {"errors"},
    "runtime": {"errors", "io", "_native"},
    "datasets": {"errors", "io"},
    "train": {"errors", "io", "runtime", "datasets"},
    "apps": {"errors", "io", "runtime", "datasets", "_native"},
    "cli": {"errors", "io", "runtime", "datasets", "train", "apps"},
    "__main__": {"cli"},
}


def _package(path: Path) -> str:
    """The package a file's relative imports start from: carseg.apps for carseg/apps/x.py."""
    root = CARSEG.parent if CARSEG in path.parents else REPO
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1])


def _imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    package = _package(path) if package is None else package
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from carseg import x` imports carseg.x when x is a module or subpackage
            found += [(node.lineno, f"{base}.{a.name}" if base == "carseg" else base)
                      for a in node.names]
    return found


def _room(module: str) -> str | None:
    """The room of a carseg module (carseg.io.names -> io); "carseg" for the package itself
    and its attributes (`from carseg import __version__`); None outside carseg."""
    parts = module.split(".")
    if parts[0] != "carseg":
        return None
    if len(parts) > 1 and any((CARSEG / f"{parts[1]}{ext}").exists()
                              for ext in ("", ".py", ".pyi")):
        return parts[1]
    return "carseg"


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _room_of_file(path: Path) -> str:
    rel = path.relative_to(CARSEG)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "carseg"


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules(CARSEG):
        src = _room_of_file(path)
        for _, module in _imports(path):
            dst = _room(module)
            if dst is not None and dst not in (src, "carseg"):
                graph.setdefault(src, set()).add(dst)
    return graph


def test_carseg_never_imports_export() -> None:
    offenders = [f"{p.relative_to(REPO)}:{line}: import {m}" for p in _modules(CARSEG)
                 for line, m in _imports(p) if m == "export" or m.startswith("export.")]
    assert not offenders, "carseg must not import export (export may import carseg):\n" + \
        "\n".join(offenders)


def test_every_room_imports_only_what_it_may() -> None:
    bad = []
    for path in _modules(CARSEG):
        src = _room_of_file(path)
        assert src in ALLOWED, f"{path.relative_to(REPO)}: room {src!r} is not in ALLOWED; " \
                               f"add it to docs/architecture.md and this test"
        for line, module in _imports(path):
            dst = _room(module)
            # the package itself (`from carseg import __version__`) runs first for any import
            if dst is not None and dst not in (src, "carseg") and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {src} imports {module}")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_cycle_between_rooms() -> None:
    cycle = _cycle(room_graph())
    assert cycle is None, "a cycle between carseg's rooms: " + " -> ".join(cycle or [])


def test_nothing_but_the_cli_uses_the_apps() -> None:
    users = sorted(src for src, dsts in room_graph().items() if "apps" in dsts)
    assert users == ["cli"], users


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}}, None),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: list[str] | None
                                       ) -> None:
    """The checks above can fail: the finder sees a cycle where there is one."""
    assert _cycle(graph) == cycle


def test_import_reader_sees_nested_and_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom . import names\nfrom ..runtime.manifest import load\n"
                 "def f():\n    from carseg import cli, errors\n    import export.api\n")
    assert [m for _, m in _imports(f, package="carseg.apps")] == [
        "os", "carseg.apps", "carseg.runtime.manifest", "carseg.cli", "carseg.errors",
        "export.api"]
