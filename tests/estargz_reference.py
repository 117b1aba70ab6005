"""The reference eStargz implementation, built for the tests from Debian's packages.

``tests/interop/estargz_ref/main.go`` is a small command line around
containerd/stargz-snapshotter's ``estargz`` Go package. It is compiled here,
offline, in GOPATH mode against the sources Debian ships in
``golang-github-containerd-stargz-snapshotter-dev`` (``/usr/share/gocode``),
with Debian's ``golang-go``. Tests that need it skip, with the reason, when
either package is missing (scripts/install_system_deps.sh installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

SOURCE = Path(__file__).resolve().parent / "interop" / "estargz_ref"
GOPATH_DEBIAN = Path("/usr/share/gocode")
LIBRARY = GOPATH_DEBIAN / "src" / "github.com" / "containerd" / "stargz-snapshotter" / "estargz"
BUILD_TIMEOUT_S = 600  # a cold Go build of the package and its dependencies on a busy core
RUN_TIMEOUT_S = 300
INSTALL_HINT = "apt-get install golang-go golang-github-containerd-stargz-snapshotter-dev"


def build_reference_tool(out_dir: Path) -> Path:
    """Compile the reference tool into ``out_dir``; skip the test when Debian's Go bits are missing."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(f"no Go compiler for the eStargz reference ({INSTALL_HINT})")
    if not LIBRARY.is_dir():
        pytest.skip(f"Debian's stargz-snapshotter Go library is missing ({INSTALL_HINT})")
    out = out_dir / "estargz_ref"
    env = dict(
        os.environ,
        GO111MODULE="off",  # GOPATH mode: Debian's sources, no module download
        GOPATH=f"{out_dir / 'gopath'}:{GOPATH_DEBIAN}",
        GOCACHE=str(out_dir / "gocache"),
        GOFLAGS="",
        GOPROXY="off",
        CGO_ENABLED="0",
    )
    done = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"building the eStargz reference tool failed:\n{done.stderr[-3000:]}")
    return out


def run_reference(tool: Path, *args: str, check: bool = True) -> tuple[int, Any, str]:
    """Run the tool; return (exit status, its JSON output or None, stderr)."""
    done = subprocess.run(
        [str(tool), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"estargz_ref {args[0]} failed: {done.stderr.strip()}")
    out = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None
    return done.returncode, out, done.stderr
