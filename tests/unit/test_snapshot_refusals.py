"""A snapshot taken on another CPU architecture is refused, by the rule and by ``check``.

``check`` is what ``zerostart restore`` runs before it restores (and falls
back to a boot when it raises); it needs CRIU only for ``criu --version``.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest

from zerostart.snapshot import _api, _criu
from zerostart.snapshot._compat import host_problems
from zerostart.snapshot._errors import IncompatibleSnapshotError
from zerostart.snapshot._host import (
    SMALL_FILE_BYTES,
    HostFingerprint,
    digest_file,
    host_fingerprint,
)
from zerostart.snapshot._manifest import IMAGES_DIR, SnapshotManifest, write_manifest
from zerostart.snapshot._store import dedup_images

HOST = HostFingerprint(
    arch="x86_64",
    kernel="6.18.44",
    cpu_model="Intel Xeon",
    cpu_flags=("avx2", "fma"),
    criu_version="4.1.1",
)


def test_another_architecture_is_named() -> None:
    here = HostFingerprint(**{**HOST.__dict__, "arch": "aarch64"})
    assert host_problems(HOST, here) == ["CPU architecture x86_64 -> aarch64"]


@pytest.mark.skipif(shutil.which("criu") is None, reason="criu not installed")
def test_check_refuses_a_snapshot_from_another_architecture(tmp_path: Path) -> None:
    here = host_fingerprint(_criu.version())
    images = tmp_path / "snapshots" / "s" / IMAGES_DIR
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(SMALL_FILE_BYTES))
    digests, _ = dedup_images(tmp_path, images)
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    manifest = SnapshotManifest(
        name="s",
        command=("python", "srv.py", "--port", "1"),
        cwd="/",
        env={"PATH": "/bin"},
        ready_url="http://127.0.0.1:1/health",
        port=1,
        created="2026-01-01T00:00:00+00:00",
        host=here,
        mapped_files=(digest_file(str(lib)),),
        images=digests,
        pid=42,
    )
    write_manifest(images.parent, manifest)
    assert _api.check("s", store=tmp_path) == manifest  # control: this host is compatible
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    write_manifest(images.parent, manifest.with_host(arch=other))
    with pytest.raises(IncompatibleSnapshotError, match=f"CPU architecture {other} ->"):
        _api.check("s", store=tmp_path)


def test_criu_network_lock_follows_what_the_host_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """iptables: CRIU's default; nft only: nftables; neither (the H200 machine): skip."""
    from zerostart.snapshot import _criu

    def which(tools: set[str]):  # type: ignore[no-untyped-def]
        return lambda name: f"/usr/sbin/{name}" if name in tools else None

    monkeypatch.setattr(_criu.shutil, "which", which({"iptables", "iptables-restore"}))
    assert _criu.network_lock_flags() == []
    monkeypatch.setattr(_criu.shutil, "which", which({"nft"}))
    assert _criu.network_lock_flags() == ["--network-lock", "nftables"]
    monkeypatch.setattr(_criu.shutil, "which", which(set()))
    assert _criu.network_lock_flags() == ["--network-lock", "skip"]
