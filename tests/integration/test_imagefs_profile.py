"""Chunk profiles on real FUSE mounts of images in the real registry (docker-registry on loopback).

A profile is recorded by a mount (``LazyMount(record=...)``) while another
process reads the files, by ``read`` and by page faults of an ``mmap``;
carried in a layer of its own (``add_profile_layer``); and applied by the
next mount of the image, whose range requests (seen by the proxy) follow the
profile's order. Hostile profiles are pushed as images of their own: each is
refused or trimmed with a log line, and the mount keeps serving.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import fault_proxy
from imagefs_images import CHUNK_BYTES, Expected, make_image
from registry_server import RegistryServer, registry_binary, running_registry

from zerostart import chunkprofile, estargz
from zerostart.image.layers import Entry, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout
from zerostart.image.profile import add_profile_layer
from zerostart.imagefs.mount import LazyMount, is_mounted
from zerostart.registry.client import push

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(registry_binary() is None, reason="docker-registry not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts with allow_other need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(
        importlib.util.find_spec("pyfuse3") is None,
        reason="pyfuse3 not installed (pip install '.[imagefs]', needs libfuse3-dev)",
    ),
]

WEIGHTS = "app/model/weights.bin"
PREFETCH_WAIT_S = 15.0
# Reads as a container's process makes them, with the kernel's read-ahead turned off
# (POSIX_FADV_RANDOM, MADV_RANDOM) so that each touches exactly the chunk it names:
# hostname by read(2), weights chunk 4 by pread, weights chunk 1 by a page fault, shared.bin.
READER = f"""
import mmap, os, sys
root, C = sys.argv[1], {CHUNK_BYTES}
open(os.path.join(root, "etc/hostname"), "rb").read()
fd = os.open(os.path.join(root, "{WEIGHTS}"), os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
assert len(os.pread(fd, 100, 4 * C + 10)) == 100
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print(m[C + 5])
m.close()
os.close(fd)
open(os.path.join(root, "app/shared.bin"), "rb").read()
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def layout(
    registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Expected]:
    out = tmp_path_factory.mktemp("image") / "layout"
    expected = make_image(out)
    push(out, f"{registry.address}/test/profile:plain")
    return out, expected


def _mount(tmp_path: Path, ref: str, **kw: Any) -> LazyMount:
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("timeout_s", 5.0)
    return LazyMount(ref, tmp_path / "mnt", **kw)


def _prefetched(m: LazyMount) -> dict[str, Any]:
    deadline = time.monotonic() + PREFETCH_WAIT_S
    while True:
        time.sleep(0.6)  # the daemon rewrites its stats twice a second
        stats = m.stats()
        if stats["reads"]["prefetch"]["state"] not in ("none", "running"):
            return stats
        assert time.monotonic() < deadline, stats["reads"]["prefetch"]
        assert m.alive(), m.log_tail()


def _chunk_starts(layer_blob: str) -> dict[tuple[str, int], int]:
    """(path, file offset) -> compressed offset of that chunk in the blob."""
    toc = estargz.read_toc(layer_blob)
    return {(n, c.chunk_offset): c.offset for n, cs in toc.chunks.items() for c in cs}


def test_profile_is_recorded_carried_and_applied_in_order(
    registry: RegistryServer, layout: tuple[Path, Expected], tmp_path: Path
) -> None:
    out, exp = layout
    record = tmp_path / "profile.json"
    with _mount(tmp_path, f"{registry.address}/test/profile:plain", prefetch=False, record=record):
        subprocess.run(
            [sys.executable, "-c", READER, str(tmp_path / "mnt")], check=True, timeout=60
        )
    assert not is_mounted(tmp_path / "mnt")
    profile = chunkprofile.decode(record.read_bytes())
    c = CHUNK_BYTES
    assert profile.reads == (
        ("etc/hostname", 0),
        (WEIGHTS, 4 * c),  # pread
        (WEIGHTS, 1 * c),  # the page fault of the mapping
        ("app/shared.bin", 0),
        ("app/shared.bin", c),
    )

    profiled = tmp_path / "profiled"
    shutil.copytree(out, profiled)
    add_profile_layer(profiled, profile)
    push(profiled, f"{registry.address}/test/profile:2")
    base_blob = exp.layers[0]
    starts = _chunk_starts(base_blob.path)
    with fault_proxy(registry.address) as proxy:
        ref = f"{proxy.address}/test/profile:2"
        with _mount(tmp_path, ref, cache_dir=tmp_path / "cache2", prefetch_streams=1) as m:
            stats = _prefetched(m)
            before = stats["reads"]["registry_fetches"]
            for path, data in exp.files.items():  # the profiled chunks come from the cache
                assert (tmp_path / "mnt" / path).read_bytes() == data, path
            time.sleep(0.6)
            after = m.stats()["reads"]["registry_fetches"]
    pre = stats["reads"]["prefetch"]
    assert pre["state"] == "done" and pre["source"] == "profile", pre
    assert pre["profile"]["chunks"] == 5 and pre["profile"]["skipped_missing"] == 0
    # the base layer's range requests after its TOC: the profile's chunks in its order
    # (hostname, weights 4, weights 1, then shared.bin's two chunks as one run)
    got = [int(r.split("=")[1].split("-")[0]) for d, r in proxy.ranges if d == base_blob.digest]
    want = [starts[("etc/hostname", 0)], starts[(WEIGHTS, 4 * c)], starts[(WEIGHTS, c)]]
    want.append(starts[("app/shared.bin", 0)])
    assert got[1:5] == want, (got, want)
    # not prefetched, fetched on demand when read: weights chunks 0, 2, 3, + the other layer's
    assert after - before >= 3


def _hostile_layout(out: Path, exp: Expected, raw: bytes) -> Path:
    blobs = out.parent / f".{out.name}-blobs"
    profile = write_layer(
        "profile", [Entry("/" + chunkprofile.PROFILE_PATH, "file", data=raw)], blobs
    )
    write_oci_layout(out, ImageConfig(entrypoint=("/app/run.sh",)), [*exp.layers, profile], {})
    return out


HOSTILE = {
    "escape": (
        json.dumps(
            {
                "format": chunkprofile.FORMAT,
                "version": 1,
                "files": ["../../etc/passwd"],
                "reads": [[0, 0]],
            }
        ).encode(),
        "climbs out of its folder",
    ),
    "huge-count": (
        b'{"format":"zerostart.chunk-profile","version":1,"files":["etc/hostname"],"reads":['
        + b",".join([b"[0,0]"] * (chunkprofile.MAX_READS + 1))
        + b"]}",
        "limits",
    ),
    "not-json": (b"\xff\xfe{[", "not JSON"),
    "index-out-of-range": (
        json.dumps(
            {
                "format": chunkprofile.FORMAT,
                "version": 1,
                "files": ["etc/hostname"],
                "reads": [[5, 0]],
            }
        ).encode(),
        "within bounds",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_profile_is_refused_and_the_mount_serves(
    kind: str, registry: RegistryServer, layout: tuple[Path, Expected], tmp_path: Path
) -> None:
    raw, message = HOSTILE[kind]
    _, exp = layout
    out = _hostile_layout(tmp_path / "layout", exp, raw)
    push(out, f"{registry.address}/test/profile:{kind}")
    with _mount(tmp_path, f"{registry.address}/test/profile:{kind}") as m:
        stats = _prefetched(m)
        for path, data in exp.files.items():
            assert (tmp_path / "mnt" / path).read_bytes() == data, path
        assert m.alive()
    pre = stats["reads"]["prefetch"]
    assert pre["state"] == "done" and pre["source"] == "landmark", pre
    assert "profile" not in pre
    log = m.log_tail(20_000)
    assert "chunk profile refused" in log and message in log, log[-2000:]


def test_stale_profile_entries_are_skipped_and_counted(
    registry: RegistryServer, layout: tuple[Path, Expected], tmp_path: Path
) -> None:
    """Offsets past the file (and the blob), names the image lacks, a directory: skipped."""
    _, exp = layout
    raw = chunkprofile.Profile(
        (
            (WEIGHTS, 10**12),
            ("no/such/file", 0),
            ("etc", 0),
            (WEIGHTS, 2 * CHUNK_BYTES + 7),  # inside chunk 2: the one entry that counts
        )
    ).encode()
    out = _hostile_layout(tmp_path / "layout", exp, raw)
    push(out, f"{registry.address}/test/profile:stale")
    with _mount(tmp_path, f"{registry.address}/test/profile:stale") as m:
        stats = _prefetched(m)
        assert (tmp_path / "mnt" / WEIGHTS).read_bytes() == exp.files[WEIGHTS]
    pre = stats["reads"]["prefetch"]
    assert pre["source"] == "profile" and pre["state"] == "done", pre
    assert pre["profile"] == {
        "entries": 4,
        "chunks": 1,
        "bytes": pre["profile"]["bytes"],
        "skipped_missing": 2,
        "skipped_offset": 1,
        "skipped_local": 0,
    }
    assert 0 < pre["profile"]["bytes"] < CHUNK_BYTES * 2
