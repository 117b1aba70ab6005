"""The package layering of ARCHITECTURE.md, checked on the source (imports parsed, not run).

A violation here is an import circle waiting to happen: the library importing
the CLI, the registry client importing the image builder, the builder
importing the runner.
"""

from __future__ import annotations

import ast
import functools
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


# -- who may import whom, and no circles ------------------------------------------------------
# Each part of src/zerostart (a package, or a top-level module) and the parts it may import,
# at any depth of a function body. A new import across parts must be added here, and only in
# ARCHITECTURE.md's dependency order (cli/ and bench/ use everything; nothing below imports
# anything above). Edges marked "issue 22" make today's known circles (KNOWN_CYCLES).
ALLOWED: dict[str, frozenset[str]] = {
    name: frozenset(deps)
    for name, deps in {
        "errors": (),
        "paths": ("errors",),
        "units": (),
        "cachedir": (),
        "limits": ("errors",),
        "progress": (),
        "faults": ("errors",),
        "registry": ("errors",),
        "estargz": ("errors", "paths"),
        "snapshot": ("errors", "paths"),
        # the bundle format lives in these four today: issue 22 (leaf format packages)
        "tokenize": ("errors", "model"),
        "model": ("engine", "errors", "kernels", "paths", "tokenize"),
        "engine": ("errors", "model", "paths"),
        "kernels": ("cachedir", "engine", "errors", "model"),
        "tasks": ("engine", "errors"),
        "api": ("errors", "model", "pipeline", "tasks", "tokenize"),  # pipeline: issue 22
        "pipeline": ("api", "engine", "errors", "limits", "model", "tasks", "tokenize"),
        "benchmark": ("errors", "pipeline"),
        "serve": (
            *("engine", "errors", "faults", "limits", "model", "paths", "pipeline"),
            *("snapshot", "tokenize"),
        ),
        "imagefs": ("cachedir", "errors", "estargz", "paths", "registry"),
        # benchmark: the builder's trace (issue 22)
        "image": ("benchmark", "cachedir", "engine", "errors", "estargz", "kernels", "model"),
        "container": ("cachedir", "image", "imagefs", "paths", "snapshot"),
        "platform": (
            *("container", "engine", "errors", "faults", "model", "paths", "serve"),
            *("snapshot", "units", "fleet"),  # fleet: sizing.py's LP, issue 22
        ),
        "fleet": ("errors", "platform", "units"),  # platform: platform.toml's schema, issue 22
        "cli": (
            *("benchmark", "container", "errors", "fleet", "image", "imagefs", "model"),
            *("platform", "progress", "registry", "serve", "snapshot", "units"),
        ),
    }.items()
}
# Strongly connected parts today, each to be broken by issue 22 (format facts and
# platform.toml's schema in leaf packages; api's type hints without the Pipeline). A circle
# that is broken must leave this list; a new one fails.
KNOWN_CYCLES = {
    frozenset({"engine", "kernels", "model", "tokenize"}),
    frozenset({"api", "pipeline"}),
    frozenset({"fleet", "platform"}),
}
# Module-level circles (any import, any depth), same rule.
KNOWN_MODULE_CYCLES = {
    frozenset(
        {
            *("zerostart.api", "zerostart.api._classify", "zerostart.api._embed"),
            *("zerostart.api._encode", "zerostart.api._text", "zerostart.pipeline"),
        }
    ),
    frozenset({"zerostart.cli.image", "zerostart.cli.main", "zerostart.cli.platform"}),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules of src/zerostart it imports (its own ancestors' __init__ left out)."""
    return {m: set(deps) for m, deps in _parsed_graph().items()}


@functools.cache
def _parsed_graph() -> dict[str, frozenset[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        m: frozenset(
            name
            for name in imported_modules(path)
            if name in modules and name != m and not m.startswith(name + ".")
        )
        for m, path in modules.items()
    }


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.add(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def _part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m, deps in _module_graph().items():
        graph.setdefault(_part(m), set()).update(
            _part(d) for d in deps if _part(d) not in (_part(m), "zerostart")
        )
    graph.pop("zerostart", None)  # the package's own __init__
    return graph


def test_every_import_across_parts_is_allowed() -> None:
    graph = _part_graph()
    assert set(graph) == set(ALLOWED), "a part was added or removed: give it its ALLOWED row"
    extra = {f"{p} -> {d}" for p, deps in graph.items() for d in deps - ALLOWED[p]}
    assert not extra, f"imports ALLOWED does not list (ARCHITECTURE.md's order?): {sorted(extra)}"
    stale = {f"{p} -> {d}" for p, deps in ALLOWED.items() for d in deps - graph[p]}
    assert not stale, f"ALLOWED lists imports no module makes any more: {sorted(stale)}"


def test_the_package_graph_has_no_circles_but_the_known_ones() -> None:
    assert _cycles(_part_graph()) == KNOWN_CYCLES
    assert _cycles(_module_graph()) == KNOWN_MODULE_CYCLES


def test_the_cycle_check_finds_a_circle() -> None:
    # platform/replica.py <-> platform/starter.py was one (default_starter); put it back
    graph = _module_graph()
    graph["zerostart.platform.replica"].add("zerostart.platform.starter")
    assert frozenset({"zerostart.platform.replica", "zerostart.platform.starter"}) <= max(
        _cycles(graph) - KNOWN_MODULE_CYCLES, key=len
    )
