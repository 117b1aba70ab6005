"""``zerostart run IMAGE --snapshot``: a real image of a real bundle, booted in runc, frozen
with CRIU, restored, restored again, and refused when its snapshot is damaged.

Needs root, runc and a working CRIU (scripts/install_criu.sh); each test skips
with the reason when one is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from zerostart.container.snapshot_run import (
    LABEL_IMAGE_DIGEST,
    SnapshotRun,
    run_with_snapshot,
)
from zerostart.errors import ZerostartError
from zerostart.image.build import BuildResult, build_image
from zerostart.procs import free_port
from zerostart.snapshot import SnapshotError
from zerostart.snapshot._manifest import IMAGES_DIR, read_manifest, write_manifest
from zerostart.warmup import WarmupRequest, send

pytestmark = [pytest.mark.integration, pytest.mark.root]

TEXTS = ["My name is Clara Schmidt and I live in Paris.", "The weather is lovely today."]
ATOL = 1e-6


@pytest.fixture(scope="module")
def usable() -> None:
    """Skip unless this host can checkpoint containers: root, runc that runs, CRIU that passes."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runc and CRIU create namespaces, mounts and ptrace")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install_system_deps.sh installs it)")
    from zerostart.container.runtime import choose_runtime
    from zerostart.snapshot._criu import check

    try:
        if os.path.basename(choose_runtime("runc")) != "runc":
            pytest.skip("runc does not run containers here")
        check()
    except ZerostartError as exc:
        pytest.skip(f"no working runc + CRIU here: {exc}")


@pytest.fixture(scope="module")
def embed_image(
    usable: None,
    bundle_for_model: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> BuildResult:
    return build_image(bundle_for_model("minilm-embed"), tmp_path_factory.mktemp("img") / "embed")


def _embed(port: int) -> np.ndarray:
    status, answer = send(port, WarmupRequest("POST", "/embed", {"inputs": TEXTS}))
    assert status == 200, answer
    return np.array(answer)


def _start(image: BuildResult, port: int, store: Path) -> SnapshotRun:
    return run_with_snapshot(image.image.path, port=port, store=store)


def test_boot_snapshot_restore_twice_and_fall_back_on_a_corrupt_snapshot(
    embed_image: BuildResult, tmp_path: Path
) -> None:
    port, store = free_port(), tmp_path / "store"

    first = _start(embed_image, port, store)
    try:
        assert first.mode == "booted" and "no snapshot" in (first.reason or "")
        assert first.snapshot_error is None, first.snapshot_error
        booted = _embed(port)  # the booted container keeps serving after the checkpoint
        status, info = send(port, WarmupRequest("GET", "/info"))
        assert status == 200 and info["start"]["mode"] == "boot"
    finally:
        first.container.stop()
    manifest = read_manifest(first.path)
    assert manifest.labels[LABEL_IMAGE_DIGEST] == embed_image.image.manifest_digest
    assert manifest.port == port and first.size_bytes > 1_000_000
    # the mmapped weights are digested in the unpacked rootfs, not copied into the images
    assert any(f.path.endswith("/model/weights.safetensors") for f in manifest.mapped_files)

    for attempt in range(2):  # restore twice from the same snapshot
        run = _start(embed_image, port, store)
        try:
            assert run.mode == "restored", run.reason
            assert run.name == first.name
            assert np.allclose(_embed(port), booted, atol=ATOL, rtol=0)
            status, info = send(port, WarmupRequest("GET", "/info"))
            start = info["start"]
            assert start["mode"] == "restore", start
            assert start["restore"]["snapshot"] == run.name
            assert set(start["phases"]) >= {"verify", "restore_to_health", "total"}, attempt
        finally:
            run.container.stop()

    # taken on another kernel: refused with the difference named, booted, re-taken
    write_manifest(first.path, manifest.with_host(kernel="5.10.0-other"))
    other = _start(embed_image, port, store)
    try:
        assert other.mode == "booted"
        assert "IncompatibleSnapshotError" in (other.reason or "")
        assert "kernel 5.10.0-other -> " in (other.reason or ""), other.reason
        assert np.allclose(_embed(port), booted, atol=ATOL, rtol=0)
    finally:
        other.container.stop()
    assert read_manifest(first.path).host.kernel == os.uname().release

    # damage a page image: refused before CRIU runs, booted instead, and the snapshot re-taken
    pages = max((first.path / IMAGES_DIR).glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.chmod(0o644)
    pages.write_bytes(bytes(data))
    fallback = _start(embed_image, port, store)
    try:
        assert fallback.mode == "booted"
        assert "CorruptSnapshotError" in (fallback.reason or ""), fallback.reason
        assert pages.name in (fallback.reason or "")
        assert np.allclose(_embed(port), booted, atol=ATOL, rtol=0)
        assert fallback.snapshot_error is None, fallback.snapshot_error
    finally:
        fallback.container.stop()
    again = _start(embed_image, port, store)
    try:
        assert again.mode == "restored", again.reason
        assert np.allclose(_embed(port), booted, atol=ATOL, rtol=0)
    finally:
        again.container.stop()


def test_a_taken_port_is_refused_not_booted(embed_image: BuildResult, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SnapshotError, match=f"port {port} is already in use"):
            _start(embed_image, port, tmp_path / "store")
