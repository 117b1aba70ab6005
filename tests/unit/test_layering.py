"""The package layering of docs/architecture.md, checked on the source (imports parsed, not run).

A violation here is an import circle waiting to happen: the library importing
the CLI, the registry client importing the image builder, the builder
importing the runner.
"""

from __future__ import annotations

import ast
import collections
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zerostart"

# package -> packages it must never import (directly, at any depth of a function body)
FORBIDDEN = {
    "registry": ("zerostart.image", "zerostart.container", "zerostart.cli", "zerostart.serve"),
    # the builder runs the worker to trace it, but needs nothing of the benchmarks (procs.py)
    "image": ("zerostart.container", "zerostart.cli", "zerostart.benchmark", "zerostart.platform"),
    # the node never imports the build host's builder: what running an image needs of the
    # format is zerostart.oci, of the warm-up zerostart.warmup, of ld.so zerostart.ldso
    "container": ("zerostart.cli", "zerostart.image"),
    "snapshot": ("zerostart.cli", "zerostart.container", "zerostart.image"),
    "serve": (
        "zerostart.cli",
        "zerostart.image",
        "zerostart.registry",
        "zerostart.container",
        "zerostart.platform",
    ),
    "platform": ("zerostart.cli", "zerostart.image"),
    # the fleet reads platform.toml through the leaf platform_toml.py, nothing of the node
    "fleet": (
        "zerostart.cli",
        "zerostart.serve",
        "zerostart.container",
        "zerostart.snapshot",
        "zerostart.platform",
    ),
    "model": ("zerostart.cli", "zerostart.serve"),
    # the worker's engines read the bundle format, never the converter or the kernel compiler
    "engine": (
        "zerostart.cli",
        "zerostart.serve",
        "zerostart.model",
        "zerostart.kernels",
        "zerostart.tokenize",
    ),
    # the bundle format is a leaf: it imports nothing of the packages that read or write it
    "bundle": (
        "zerostart.model",
        "zerostart.engine",
        "zerostart.kernels",
        "zerostart.tokenize",
        "zerostart.pipeline",
        "zerostart.serve",
        "zerostart.cli",
    ),
    "imagefs": ("zerostart.cli", "zerostart.image", "zerostart.container", "zerostart.serve"),
    # the zTOC format (zerostart index) is shared the same way: a leaf
    "ztoc": (
        "zerostart.image",
        "zerostart.imagefs",
        "zerostart.registry",
        "zerostart.container",
        "zerostart.cli",
        "zerostart.serve",
    ),
    # the OCI format (media types, digests, layout reading, layer streams) is a leaf that the
    # builder, the registry client and the node share
    "oci": (
        "zerostart.image",
        "zerostart.registry",
        "zerostart.container",
        "zerostart.imagefs",
        "zerostart.platform",
        "zerostart.cli",
        "zerostart.serve",
    ),
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


def test_no_package_circles() -> None:
    graph = package_graph()
    found = {
        ", ".join(sorted(c)): {a: sorted(graph[a] & c) for a in sorted(c)} for c in circles(graph)
    }
    assert not found, f"import circles between packages (ARCHITECTURE.md: none): {found}"


def test_the_package_check_finds_a_back_edge() -> None:
    # the circle of issue 22, put back: the engine importing the converter's package
    graph = package_graph()
    graph["engine"].add("model")
    assert any({"engine", "model"} <= c for c in circles(graph))


# -- who may import whom, and no circles ------------------------------------------------------
# Each part of src/zerostart (a package, or a top-level module) and the parts it may import,
# at any depth of a function body. A new import across parts must be added here, and only in
# ARCHITECTURE.md's dependency order (cli/ and bench/ use everything; nothing below imports
# anything above). The package graph has no circles (test_no_package_circles).
ALLOWED: dict[str, frozenset[str]] = {
    name: frozenset(deps)
    for name, deps in {
        "errors": (),
        "_records": (),  # plain record classes for the worker's import path (no @dataclass)
        "paths": ("errors",),
        "units": (),
        "cachedir": (),
        "limits": ("_records", "errors"),
        "progress": (),
        "procs": (),  # a free port, a child stopped (the builder's trace, benchmarks, platform)
        "ldso": (),  # where ld.so looks: the builder's ELF closure and the GPU container's mounts
        "faults": ("errors",),
        # the OCI format: media types, digests, layout reading, layer streams (a leaf)
        "oci": ("errors",),
        # warm-up requests, the /health probe, the trace file: the builder records, the node replays
        "warmup": ("errors",),
        "registry": ("errors", "oci"),
        "estargz": ("errors", "oci", "paths"),  # oci: the gzip layer media type
        # the zTOC format (zerostart index) and its span profile, a leaf
        "ztoc": ("chunkprofile", "errors", "estargz", "paths"),
        "chunkprofile": ("errors", "paths"),  # the chunk profile format (issue 21), a leaf
        # snapshot -> engine: the checkpointer reads libcuda's errors through the engine's Driver
        "snapshot": ("cachedir", "engine", "errors", "paths"),
        # the bundle format (manifest, weights file, engine layout, kernels manifest), a leaf
        # that the converter, the kernel compiler, the tokenizer and the engines all import
        "bundle": ("_records", "errors", "paths"),
        # the platform.toml schema, a leaf: `up` (platform) and `deploy` (fleet) read it
        "platform_toml": ("errors", "units"),
        "engine": ("_records", "bundle", "errors"),
        # kernels -> engine: cpu_build checks the CPU tuning table with the engine's reader
        "kernels": ("bundle", "cachedir", "engine", "errors"),
        # tokenize -> kernels: convert's tokenizer compiler builds tokenizer.so (build time)
        "tokenize": ("_records", "bundle", "errors", "kernels"),
        "model": ("bundle", "engine", "errors", "kernels", "tokenize"),
        "tasks": ("engine", "errors"),
        "api": ("_records", "bundle", "errors", "tasks", "tokenize"),
        "pipeline": ("api", "bundle", "engine", "errors", "limits", "tasks", "tokenize"),
        "benchmark": ("errors", "pipeline", "procs"),
        "serve": (
            *("_records", "api", "bundle", "engine", "errors", "faults", "limits", "paths"),
            *("pipeline", "snapshot", "tokenize"),  # api: the route names (App.__init__)
        ),
        "imagefs": (
            *("cachedir", "chunkprofile", "errors", "estargz", "oci", "paths", "procs"),
            *("registry", "ztoc"),
        ),
        "image": (
            *("bundle", "cachedir", "chunkprofile", "errors", "estargz", "kernels", "ldso"),
            *("model", "oci", "procs", "warmup"),
        ),
        # the node: nothing of the builder (image/), FORBIDDEN above
        "container": (
            *("cachedir", "errors", "imagefs", "ldso", "oci", "paths", "snapshot", "warmup"),
        ),
        "platform": (
            *("bundle", "container", "errors", "faults", "model", "paths", "platform_toml"),
            *("procs", "serve", "snapshot", "fleet"),  # fleet: sizing.py's LP
        ),
        "fleet": ("errors", "platform_toml", "units"),
        "cli": (
            *("benchmark", "bundle", "cachedir", "chunkprofile", "container", "errors", "fleet"),
            "image",
            *("imagefs", "model", "platform", "platform_toml", "progress", "registry", "serve"),
            *("snapshot", "units", "warmup", "ztoc"),
        ),
    }.items()
}
# Circles between modules (any import, any depth) are forbidden too: the last ones
# (platform/replica.py <-> platform/starter.py: default_starter; cli/main.py <-> cli/image.py
# and cli/platform.py: sigterm_as_interrupt, now in cli/_signals.py) are gone (issue 22).


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _parsed_module_graph() -> dict[str, frozenset[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        m: frozenset(
            name
            for name in imported_modules(path)
            if name in modules and name != m and not m.startswith(name + ".")
        )
        for m, path in modules.items()
    }


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules of src/zerostart it imports (its own ancestors' __init__ left out)."""
    return {m: set(deps) for m, deps in _parsed_module_graph().items()}


def test_every_import_across_packages_is_allowed() -> None:
    full = package_graph()
    parts = set(full) - {"__init__"}  # ``from zerostart import __version__`` is no part
    graph = {p: deps & parts for p, deps in full.items() if p in parts}
    assert set(graph) == set(ALLOWED), "a package was added or removed: give it an ALLOWED row"
    extra = {f"{p} -> {d}" for p, deps in graph.items() for d in deps - ALLOWED[p]}
    assert not extra, f"imports ALLOWED does not list (ARCHITECTURE.md's order?): {sorted(extra)}"
    stale = {f"{p} -> {d}" for p, deps in ALLOWED.items() for d in deps - graph[p]}
    assert not stale, f"ALLOWED lists imports no module makes any more: {sorted(stale)}"


def test_no_module_circles() -> None:
    assert circles(module_graph()) == set()


def test_the_module_check_finds_the_old_replica_starter_circle() -> None:
    graph = module_graph()
    graph["zerostart.platform.replica"].add("zerostart.platform.starter")  # default_starter
    found = circles(graph)
    assert any({"zerostart.platform.replica", "zerostart.platform.starter"} <= c for c in found)


# -- private modules stay inside their package -------------------------------------------------
# A package's ``_modules`` are its own: others import its public names (``zerostart.snapshot``
# re-exports what the platform needs). The imports of another package's private modules made
# today, each named; a new one fails, and one that goes must be taken off.
KNOWN_PRIVATE_IMPORTS: dict[str, frozenset[str]] = {
    name: frozenset(packages)
    for name, packages in {
        # the container front end of snapshot's internals (CRIU images, manifest, store)
        "container/snapshot_run.py": ("snapshot",),
        # the zran index speaks the registry's upload/download protocol and builds a zTOC
        "imagefs/_zran.py": ("registry",),
        "imagefs/zindex.py": ("registry", "ztoc"),
        # the warm slot pre-imports the Unigram / BPE tokenizer path before it says "ready"
        "serve/slot.py": ("tokenize",),
    }.items()
}


def private_imports() -> dict[str, set[str]]:
    """File (relative to src/zerostart) -> the other packages whose private modules it imports."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for path in SRC.rglob("*.py"):
        part = path.relative_to(SRC).parts[0].removesuffix(".py")
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] != "zerostart" or len(parts) < 3 or parts[1] == part:
                continue
            if any(p.startswith("_") and not p.startswith("__") for p in parts[2:]):
                found[str(path.relative_to(SRC))].add(parts[1])
    return found


def test_private_modules_stay_inside_their_package() -> None:
    found = private_imports()
    new = {f: sorted(p - KNOWN_PRIVATE_IMPORTS.get(f, frozenset())) for f, p in found.items()}
    new = {f: p for f, p in new.items() if p}
    assert not new, f"imports of another package's private modules (use its public names): {new}"
    gone = {f: sorted(p - found.get(f, set())) for f, p in KNOWN_PRIVATE_IMPORTS.items()}
    gone = {f: p for f, p in gone.items() if p}
    assert not gone, f"take these off KNOWN_PRIVATE_IMPORTS, they are gone: {gone}"
