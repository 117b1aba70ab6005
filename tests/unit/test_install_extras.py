"""`pip install -e '.[dev]'` must work on a fresh machine: no package of the dev extra may
need system headers to build (pyfuse3 needs libfuse3-dev and pkg-config and ships no wheel,
so it lives in the ``imagefs`` extra, installed by scripts/test.sh where they exist)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source-only on PyPI and built against a system library: never in `dev`.
NEEDS_SYSTEM_HEADERS = {"pyfuse3": "libfuse3-dev, pkg-config"}


def _name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower()


def test_dev_extra_needs_no_system_headers_and_imagefs_keeps_pyfuse3() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = {_name(r) for r in extras["dev"]}
    assert not dev & NEEDS_SYSTEM_HEADERS.keys(), dev & NEEDS_SYSTEM_HEADERS.keys()
    assert "pyfuse3" in {_name(r) for r in extras["imagefs"]}
    assert "'.[imagefs]'" in (ROOT / "scripts" / "test.sh").read_text()
