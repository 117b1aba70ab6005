"""The package layering of ARCHITECTURE.md, checked on the source (imports parsed, not run).

A violation here is an import circle waiting to happen: the library importing
the CLI, the registry client importing the image builder, the builder
importing the runner.
"""

from __future__ import annotations

import ast
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
    # the zTOC format (zerostart index) is shared the same way: a leaf
    "ztoc": (
        "zerostart.image",
        "zerostart.imagefs",
        "zerostart.registry",
        "zerostart.container",
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
