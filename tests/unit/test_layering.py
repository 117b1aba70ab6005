"""The package layering of ARCHITECTURE.md, checked on the source (imports parsed, not run).

A violation here is an import circle waiting to happen: the library importing
the CLI, the registry client importing the image builder, the builder
importing the runner.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zerostart"

# package -> packages it must never import (directly, at any depth of a function body)
FORBIDDEN = {
    "registry": ("zerostart.image", "zerostart.container", "zerostart.cli", "zerostart.serve"),
    "image": ("zerostart.container", "zerostart.cli"),
    "container": ("zerostart.cli",),
    "snapshot": ("zerostart.cli", "zerostart.container"),
    "serve": (
        "zerostart.cli",
        "zerostart.image",
        "zerostart.registry",
        "zerostart.container",
        "zerostart.platform",
    ),
    "platform": ("zerostart.cli", "zerostart.image"),
    # the fleet reads platform.toml through platform/config.py, and nothing else of the node
    "fleet": (
        "zerostart.cli",
        "zerostart.serve",
        "zerostart.container",
        "zerostart.snapshot",
        "zerostart.platform.gateway",
        "zerostart.platform.pool",
        "zerostart.platform.starter",
        "zerostart.platform.sizing",
    ),
    "model": ("zerostart.cli", "zerostart.serve"),
    "engine": ("zerostart.cli", "zerostart.serve"),
    "imagefs": ("zerostart.cli", "zerostart.image", "zerostart.container", "zerostart.serve"),
    # the layer format is shared by the builder and the lazy filesystem: it uses neither
    "estargz": (
        "zerostart.image",
        "zerostart.imagefs",
        "zerostart.registry",
        "zerostart.container",
        "zerostart.cli",
        "zerostart.serve",
    ),
}


# Package circles that exist today, each to be broken (issue 22). ARCHITECTURE.md says the
# package graph has none: a new circle, or one that grows to take in another package,
# fails; a circle that is broken must be taken off this list (the test says so).
KNOWN_CIRCLES = {
    # format facts (bundle manifest, weight layout, kernel manifest) inside runtime packages
    frozenset({"engine", "kernels", "model", "tokenize"}),
    # platform.toml: fleet/config.py and platform/config.py import each other
    frozenset({"fleet", "platform"}),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts[:1])


def test_no_library_module_imports_the_cli() -> None:
    offenders = [
        f"{p.relative_to(SRC)} imports {name}"
        for p in library_files()
        for name in imported_modules(p)
        if name == "zerostart.cli" or name.startswith("zerostart.cli.")
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_layering(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"src/zerostart/{package} has no modules"
    offenders = [
        f"{p.relative_to(SRC)} imports {name}"
        for p in files
        for name in imported_modules(p)
        for banned in FORBIDDEN[package]
        if name == banned or name.startswith(banned + ".")
    ]
    assert not offenders, offenders


def package_graph() -> dict[str, set[str]]:
    """Top-level package (or module) of src/zerostart -> the others it imports, at any depth.

    Imports under ``if TYPE_CHECKING:`` count: a type-only import still ties the two
    packages together (the api package's view of the pipeline is a Protocol for that).
    """
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for path in SRC.rglob("*.py"):
        source = path.relative_to(SRC).parts[0].removesuffix(".py")
        graph[source]  # a package that imports nothing is a node too
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "zerostart" and len(parts) > 1 and parts[1] != source:
                graph[source].add(parts[1])
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one package (Tarjan, 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_finds_a_circle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert circles(graph) == {frozenset("abc")}


def test_no_new_package_circles() -> None:
    found = circles(package_graph())
    graph = package_graph()
    new = {
        ", ".join(sorted(c)): {a: sorted(graph[a] & c) for a in sorted(c)}
        for c in found - KNOWN_CIRCLES
    }
    assert not new, f"new import circles between packages (ARCHITECTURE.md: none): {new}"
    broken = found ^ KNOWN_CIRCLES
    assert not broken, f"circles broken: take them off KNOWN_CIRCLES: {sorted(map(sorted, broken))}"
