"""Snapshot logic that needs no CRIU: host compatibility, file digests, manifest seal, store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from zerostart.snapshot import marker
from zerostart.snapshot._compat import host_problems
from zerostart.snapshot._errors import CorruptSnapshotError, SnapshotError
from zerostart.snapshot._host import (
    SMALL_FILE_BYTES,
    HostFingerprint,
    changed_file,
    cpu_info,
    digest_file,
    mapped_paths,
    uses_cuda,
)
from zerostart.snapshot._manifest import (
    IMAGES_DIR,
    MANIFEST_NAME,
    SnapshotManifest,
    read_manifest,
    write_manifest,
)
from zerostart.snapshot._process import default_ready_url, port_from_command
from zerostart.snapshot._store import check_name, dedup_images, remove_snapshot, verify_images

HOST = HostFingerprint(
    arch="x86_64",
    kernel="6.18.44",
    cpu_model="Intel Xeon",
    cpu_flags=("avx2", "avx512f", "fma", "sse4_2"),
    criu_version="4.1.1",
)

MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /usr/bin/python3.11
7f00 rw-s 00000000 00:05 9 /dev/zero (deleted)
7f01 r--p 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f02 r-xp 00001000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f03 rw-p 00000000 00:00 0 [heap]
7f04 r--s 00000000 fd:01 789 /models/weights.safetensors
7f05 rw-s 00000000 00:01 11 /memfd:cuda (deleted)
7f06 rw-p 00000000 00:00 0
7f07 r--p 00000000 fd:01 99 /tmp/gone.so (deleted)
7f08 rw-s 00000000 00:06 5 /dev/nvidiactl
"""


def test_cpu_info_reads_first_cpu_model_and_sorted_flags() -> None:
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: sse2 avx2 fma avx2\n\nprocessor\t: 1\nmodel name\t: other\nflags\t: x\n"
    assert cpu_info(text) == ("AMD EPYC 9654", ("avx2", "fma", "sse2"))


def test_mapped_paths_keeps_regular_files_once_in_order() -> None:
    assert mapped_paths(MAPS) == [
        "/usr/bin/python3.11",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/models/weights.safetensors",
    ]


def test_uses_cuda_only_with_nvidia_device_mapped() -> None:
    assert uses_cuda(MAPS)
    assert not uses_cuda(MAPS.replace("/dev/nvidiactl", "/dev/zero"))


@pytest.mark.parametrize(
    ("command", "port"),
    [
        (["zerostart", "serve", "b", "--port", "8080"], 8080),
        (["python", "s.py", "--port=9000"], 9000),
        (["python", "s.py"], None),
        (["python", "s.py", "--port"], None),
    ],
)
def test_port_from_command(command: list[str], port: int | None) -> None:
    assert port_from_command(command) == port
    expected = f"http://127.0.0.1:{port}/health" if port else None
    assert default_ready_url(command) == expected


def test_same_host_is_compatible() -> None:
    assert host_problems(HOST, HOST) == []


def test_cpu_superset_and_other_model_are_compatible() -> None:
    here = HostFingerprint(
        **{**HOST.__dict__, "cpu_model": "Other", "cpu_flags": (*HOST.cpu_flags, "amx_tile")}
    )
    assert host_problems(HOST, here) == []


def test_missing_cpu_flag_kernel_and_criu_are_named() -> None:
    here = HostFingerprint(
        arch="x86_64",
        kernel="6.1.0",
        cpu_model="Old",
        cpu_flags=("avx2", "fma", "sse4_2"),
        criu_version="3.17.1",
    )
    problems = host_problems(HOST, here)
    assert problems == [
        "kernel 6.18.44 -> 6.1.0",
        "CPU flags missing on this host: avx512f (snapshot taken on 'Intel Xeon')",
        "CRIU 4.1.1 -> 3.17.1",
    ]


@pytest.mark.parametrize(
    ("here", "ok"), [("4.1.1", True), ("4.2", True), ("4.1.0", False), ("5.0", False), ("", False)]
)
def test_criu_version_rule(here: str, ok: bool) -> None:
    problems = host_problems(HOST, HostFingerprint(**{**HOST.__dict__, "criu_version": here}))
    assert (problems == []) is ok


def test_cuda_snapshot_needs_same_driver() -> None:
    rec = HostFingerprint(**{**HOST.__dict__, "cuda_driver": "12.8", "gpus": ("NVIDIA H100",)})
    here = HostFingerprint(**{**HOST.__dict__, "cuda_driver": None})
    assert host_problems(rec, here) == ["CUDA driver 12.8 -> none", "GPUs ['NVIDIA H100'] -> []"]


def test_changed_file_fast_path_and_hash_fallback(tmp_path: Path) -> None:
    big = tmp_path / "lib.so"
    big.write_bytes(b"a" * (SMALL_FILE_BYTES + 1))
    rec = digest_file(str(big))
    assert changed_file(rec) is None
    # Same bytes, new mtime (a copy, a reinstall): hashed and accepted.
    os.utime(big, ns=(1, 1))
    assert changed_file(rec) is None
    # Same size, one byte changed, mtime moved: hashed and refused.
    big.write_bytes(b"a" * SMALL_FILE_BYTES + b"b")
    assert changed_file(rec) == f"{big} changed content (sha256 differs)"
    # Same size, changed, mtime put back: only a full check sees it.
    os.utime(big, ns=(rec.mtime_ns, rec.mtime_ns))
    assert changed_file(rec) is None
    assert changed_file(rec, full=True) is not None
    big.write_bytes(b"a")
    assert "changed size" in (changed_file(rec) or "")
    big.unlink()
    assert changed_file(rec) == f"{big} is missing"


def test_small_files_are_always_hashed(tmp_path: Path) -> None:
    small = tmp_path / "config.json"
    small.write_bytes(b"{1}")
    rec = digest_file(str(small))
    small.write_bytes(b"{2}")
    os.utime(small, ns=(rec.mtime_ns, rec.mtime_ns))
    assert changed_file(rec) is not None


def _manifest(tmp_path: Path) -> tuple[Path, SnapshotManifest]:
    folder = tmp_path / "snapshots" / "s"
    images = folder / IMAGES_DIR
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(SMALL_FILE_BYTES * 2))
    (images / "core-1.img").write_bytes(b"core")
    digests, saved = dedup_images(tmp_path, images)
    assert saved == 0
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    m = SnapshotManifest(
        name="s",
        command=("python", "srv.py", "--port", "1"),
        cwd="/",
        env={"PATH": "/bin"},
        ready_url="http://127.0.0.1:1/health",
        port=1,
        created="2026-01-01T00:00:00+00:00",
        host=HOST,
        mapped_files=(digest_file(str(lib)),),
        images=digests,
        pid=42,
    )
    write_manifest(folder, m)
    return folder, m


def test_manifest_roundtrip(tmp_path: Path) -> None:
    folder, m = _manifest(tmp_path)
    assert read_manifest(folder) == m


def test_edited_manifest_is_refused_and_resealed_one_is_read(tmp_path: Path) -> None:
    folder, m = _manifest(tmp_path)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["host"]["kernel"] = "5.10"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptSnapshotError, match="edited or damaged"):
        read_manifest(folder)
    write_manifest(folder, m.with_host(kernel="5.10"))
    assert read_manifest(folder).host.kernel == "5.10"


def test_verify_images_catches_flipped_byte_missing_and_extra(tmp_path: Path) -> None:
    folder, m = _manifest(tmp_path)
    images = folder / IMAGES_DIR
    verify_images(folder, m.images)
    (images / "extra.img").write_bytes(b"")
    with pytest.raises(CorruptSnapshotError, match=r"unexpected image files: extra\.img"):
        verify_images(folder, m.images)
    (images / "extra.img").unlink()
    pages = images / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[1000] ^= 0xFF
    pages.unlink()  # break the hardlink so the blob keeps the good bytes
    pages.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="does not match its sha256"):
        verify_images(folder, m.images)
    pages.unlink()
    with pytest.raises(CorruptSnapshotError, match=r"missing image files: pages-1\.img"):
        verify_images(folder, m.images)


@pytest.mark.parametrize("name", ["../../../lib.so", "/etc/passwd", "sub/pages-1.img", ".."])
def test_an_image_name_that_is_not_a_file_of_images_is_refused_by_name(
    tmp_path: Path, name: str
) -> None:
    """A sealed manifest is not signed: its ``images`` keys go through the containment
    helper before anything is joined (they used to surface only as "missing")."""
    folder, m = _manifest(tmp_path)
    images = {**m.images, name: m.images["core-1.img"]}
    with pytest.raises(CorruptSnapshotError, match="image file name") as info:
        verify_images(folder, images)
    assert name in str(info.value)


def test_identical_images_are_stored_once_and_freed_with_last_user(tmp_path: Path) -> None:
    _, m = _manifest(tmp_path)
    other = tmp_path / "snapshots" / "t" / IMAGES_DIR
    other.mkdir(parents=True)
    first = tmp_path / "snapshots" / "s" / IMAGES_DIR / "pages-1.img"
    (other / "pages-1.img").write_bytes(first.read_bytes())
    (other / "core-1.img").write_bytes(b"different")
    digests, saved = dedup_images(tmp_path, other)
    assert saved == first.stat().st_size
    assert os.path.samefile(first, other / "pages-1.img")
    assert digests["pages-1.img"] == m.images["pages-1.img"]
    freed = remove_snapshot(tmp_path, "s")
    assert freed == len(b"core")  # pages are still used by "t"
    assert (other / "pages-1.img").exists()


def test_a_damaged_blob_is_replaced_not_linked_into_new_snapshots(tmp_path: Path) -> None:
    _, m = _manifest(tmp_path)
    first = tmp_path / "snapshots" / "s" / IMAGES_DIR / "pages-1.img"
    good = first.read_bytes()
    os.chmod(first, 0o644)
    with open(first, "r+b") as f:  # damage in place: the blob is the same inode
        f.write(bytes([good[0] ^ 0xFF]))
    other = tmp_path / "snapshots" / "t" / IMAGES_DIR
    other.mkdir(parents=True)
    (other / "pages-1.img").write_bytes(good)
    digests, saved = dedup_images(tmp_path, other)
    assert saved == 0
    assert (other / "pages-1.img").read_bytes() == good
    assert digests["pages-1.img"].sha256 == m.images["pages-1.img"].sha256
    assert not os.path.samefile(first, other / "pages-1.img")


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "../x", "sp ace"])
def test_bad_snapshot_names_are_refused(bad: str) -> None:
    with pytest.raises(SnapshotError, match="bad snapshot name"):
        check_name(bad)


def test_marker_booted_process_reports_none_and_changed_start_reports_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = marker.start_ticks()
    assert now is not None and now > 0
    assert marker.restore_info(now) is None
    # When this process was created, in wall-clock seconds: what a restorer would record.
    hz = os.sysconf("SC_CLK_TCK")
    created = time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - now / hz)
    monkeypatch.setenv(marker.SNAPSHOT_DIR_ENV, str(tmp_path))
    recorded = {
        "mode": "restore",
        "restored_at_epoch_s": created + 0.1,
        "phases": {"criu_restore": 0.1},
    }
    (tmp_path / marker.RESTORE_INFO_NAME).write_text(json.dumps(recorded))
    assert marker.restore_info(now - 1) == recorded
    # A file left by an earlier restore (minutes before this process existed) is not trusted.
    stale = {**recorded, "restored_at_epoch_s": created - 600}
    (tmp_path / marker.RESTORE_INFO_NAME).write_text(json.dumps(stale))
    assert marker.restore_info(now - 1) == {"mode": "restore"}


def test_the_public_api_resolves_every_name_to_its_private_module() -> None:
    """What the platform and the CLI import from ``zerostart.snapshot`` is the real thing."""
    import zerostart.snapshot as snap
    from zerostart.snapshot import _criu, _host, _manifest, _process, _store

    for name in snap.__all__:
        assert getattr(snap, name) is not None, name
    assert snap.criu_version is _criu.version
    assert snap.stop_process is _process.stop
    assert snap.host_fingerprint is _host.host_fingerprint
    assert snap.read_manifest is _manifest.read_manifest
    assert snap.snapshot_dir is _store.snapshot_dir
    with pytest.raises(AttributeError, match="no attribute 'stop'"):
        snap.stop  # noqa: B018  (only the public name)
