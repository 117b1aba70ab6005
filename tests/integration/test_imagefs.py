"""imagefs against the real registry (Debian's docker-registry on loopback) and real FUSE.

Images are written by our own layer writer (tests/integration/imagefs_images.py)
and pushed with our client; reads go through a fault-injecting proxy
(tests/integration/fault_proxy.py) where a test needs the registry to fail.
Each test checks what a process reading the mount sees, and the daemon's own
stats for what crossed the network.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy, fault_proxy
from imagefs_images import CHUNK_BYTES, Expected, make_image
from registry_server import RegistryServer, registry_binary, running_registry

from zerostart import estargz
from zerostart.image.layers import Entry, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout
from zerostart.imagefs.mount import ImagefsError, LazyMount, is_mounted
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

READ_TIMEOUT_S = 30.0  # a read through a mount that should fail fast; hanging past this is a bug


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def image(
    registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Expected]:
    out = tmp_path_factory.mktemp("image") / "layout"
    expected = make_image(out)
    push(out, f"{registry.address}/test/lazy:1")
    return "test/lazy:1", expected


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with fault_proxy(registry.address) as p:
        yield p


def _mount(tmp_path: Path, ref: str, **kw: Any) -> LazyMount:
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempts", 3)
    kw.setdefault("backoff_s", 0.05)
    return LazyMount(ref, tmp_path / "mnt", **kw)


def _read_in_child(path: Path) -> tuple[str, float]:
    """Read a file in another process (as a container would): ``("ok"|errno name, seconds)``."""
    code = (
        "import sys,os,errno\n"
        "try:\n open(sys.argv[1],'rb').read(); print('ok')\n"
        "except OSError as e: print(errno.errorcode.get(e.errno, str(e.errno)))\n"
    )
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT_S,
        check=True,
    )
    return out.stdout.strip(), time.monotonic() - t0


def _stats(m: LazyMount) -> dict[str, Any]:
    time.sleep(0.7)  # the daemon rewrites its stats twice a second
    return m.stats()


# --------------------------------------------------------------------------- the mount


def test_mount_shows_the_merged_layers(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    with _mount(tmp_path, f"{registry.address}/{name}", prefetch=False) as m:
        root = tmp_path / "mnt"
        assert m.info["mount_ms"] > 0
        notes = [la["note"] for la in m.info["layers"]]
        assert notes[0].startswith("eStargz") and notes[1].startswith("eStargz")
        assert "fetched whole" in notes[2]  # the plain gzip layer says so
        before = _stats(m)["reads"]["registry_fetches"]
        assert before == 0  # metadata is served from the index alone
        assert sorted(os.listdir(root)) == ["app", "data", "empty.txt", "etc", "lib", "plain"]
        assert os.listdir(root / "data/old") == ["new.txt"]  # the opaque dir hid a.txt, b.txt
        assert os.stat(root / "app/model/weights.bin").st_size == len(
            exp.files["app/model/weights.bin"]
        )
        assert os.access(root / "app/run.sh", os.X_OK)
        assert _stats(m)["reads"]["registry_fetches"] == 0
        for path, data in exp.files.items():
            assert (root / path).read_bytes() == data, path
        for path, target in exp.symlinks.items():
            assert os.readlink(root / path) == target
        for path in exp.absent:
            assert not os.path.lexists(root / path), path
        with pytest.raises(OSError) as info:
            (root / "etc/new").write_text("x")
        assert info.value.errno in (errno.EROFS, errno.EACCES)
        stats = _stats(m)
    # app/shared.bin and lib/copy.bin (different layers, same bytes) share their 2 chunks:
    # weights.bin 5 + hostname 1 + config.json 1 (top's) + shared 2 + run.sh 1 + new.txt 1
    first = hashlib.sha256(exp.files["app/shared.bin"][:CHUNK_BYTES]).hexdigest()
    assert (tmp_path / "cache/chunks/sha256" / first[:2] / first).is_file()
    assert stats["reads"]["registry_fetches"] == 11
    assert not is_mounted(tmp_path / "mnt")


def test_warm_cache_serves_with_the_registry_down(
    proxy: FaultProxy, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    ref = f"{proxy.address}/{name}"
    with _mount(tmp_path, ref) as m:
        for path, data in exp.files.items():
            assert (tmp_path / "mnt" / path).read_bytes() == data
    with _mount(tmp_path, ref, prefetch=False) as m:  # same cache dir: warm
        proxy.down = True
        for path, data in exp.files.items():
            assert (tmp_path / "mnt" / path).read_bytes() == data
        stats = _stats(m)
    assert stats["cache"]["disk_hits"] >= 10 and stats["reads"]["registry_fetches"] == 0


def test_a_second_mount_reads_the_kept_index_instead_of_the_tocs(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    ref = f"{registry.address}/{name}"
    with _mount(tmp_path, ref, prefetch=False) as m:
        first = m.info
        first_bytes = _stats(m)["bytes_fetched_at_mount"]
    assert first["index"] == "built"
    assert len(list((tmp_path / "cache/index/layers").glob("sha256-*.lix"))) == 3
    with _mount(tmp_path, ref, prefetch=False) as m:
        second = m.info
        stats = _stats(m)
        assert stats["inodes"] == 1 < stats["records"]  # nothing but the root is made at mount
        for path, data in exp.files.items():  # chunks located through the kept index
            assert (tmp_path / "mnt" / path).read_bytes() == data, path
        made = _stats(m)["inodes"]  # each file and folder on those paths, when looked up
        assert len(exp.files) < made < stats["records"]
        for path, target in exp.symlinks.items():
            assert os.readlink(tmp_path / "mnt" / path) == target
        for path in exp.absent:
            assert not os.path.lexists(tmp_path / "mnt" / path), path
    assert second["index"] == "cached" and stats["index"] == "cached"
    assert second["layers"] == first["layers"]
    # manifest + config only: no TOC tail was fetched again
    assert stats["bytes_fetched_at_mount"] < first_bytes


def test_a_damaged_kept_index_is_refused_and_the_mount_builds_it_again(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    ref = f"{registry.address}/{name}"
    with _mount(tmp_path, ref, prefetch=False):
        pass
    kept = sorted((tmp_path / "cache/index/layers").glob("*.lix"))
    for p in kept:
        p.write_bytes(p.read_bytes()[:-1])  # cut short by one byte
    with _mount(tmp_path, ref, prefetch=False) as m:
        assert m.info["index"] == "built"
        for path, data in exp.files.items():
            assert (tmp_path / "mnt" / path).read_bytes() == data, path
        log = m.log_tail(20_000)
    assert log.count("not used") == len(kept) == 3
    with _mount(tmp_path, ref, prefetch=False) as m:  # written again, whole
        assert m.info["index"] == "cached"


def test_prefetch_fetches_the_landmark_region(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, _ = image
    with _mount(tmp_path, f"{registry.address}/{name}") as m:
        deadline = time.monotonic() + 10
        while _stats(m)["reads"]["prefetch"]["state"] != "done" and time.monotonic() < deadline:
            pass
        stats = _stats(m)
    pre = stats["reads"]["prefetch"]
    assert pre["state"] == "done" and pre["done_bytes"] == pre["total_bytes"] > 250_000
    # hostname + 5 chunks of weights.bin in batches of <= 1 MiB: one or two requests
    assert stats["cache"]["disk_chunks"] == 6


# --------------------------------------------------------------------------- faults


def test_registry_down_mid_run_fails_reads_with_eio_then_recovers(
    proxy: FaultProxy, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    with _mount(tmp_path, f"{proxy.address}/{name}", prefetch=False) as m:
        proxy.down = True
        result, seconds = _read_in_child(tmp_path / "mnt/app/model/weights.bin")
        assert result == "EIO"
        assert seconds < 10  # 3 attempts, 0.05 + 0.1 s back-off: no hang
        stats = _stats(m)
        assert stats["reads"]["retries"] >= 2 and stats["reads"]["failed_reads"] >= 1
        assert "gave up after 3 attempts" in stats["reads"]["errors"][-1]
        proxy.down = False
        data = (tmp_path / "mnt/app/model/weights.bin").read_bytes()
        assert data == exp.files["app/model/weights.bin"]


def test_slow_registry_is_waited_for_then_given_up_on(
    proxy: FaultProxy, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    with _mount(tmp_path, f"{proxy.address}/{name}", prefetch=False, timeout_s=1.0) as m:
        proxy.delay_s = 0.3  # slow but within the timeout: served
        assert (tmp_path / "mnt/etc/hostname").read_bytes() == exp.files["etc/hostname"]
        proxy.delay_s = 3.0  # beyond the timeout on every attempt: EIO, bounded
        result, seconds = _read_in_child(tmp_path / "mnt/app/shared.bin")
        # 3 attempts of 1 s per chunk; the kernel may try the failed page range twice
        assert result == "EIO" and seconds < 2 * (3 * 1.0 + 0.15) + 2.0
        assert "no answer within 1 s" in _stats(m)["reads"]["errors"][-1]
        proxy.delay_s = 0.0


def test_corrupt_chunk_is_refused_and_fetched_again(
    proxy: FaultProxy, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    with _mount(tmp_path, f"{proxy.address}/{name}", prefetch=False) as m:
        proxy.corrupt = 1  # the first fetch is bad, the second good
        assert (tmp_path / "mnt/app/shared.bin").read_bytes() == exp.files["app/shared.bin"]
        assert _stats(m)["reads"]["digest_mismatches"] == 1
        proxy.corrupt = 1000  # bad every time: the read fails, nothing wrong is served
        result, _ = _read_in_child(tmp_path / "mnt/app/run.sh")
        assert result == "EIO"
        stats = _stats(m)
        # two fetches per read; the kernel may retry a failed read once (page by page)
        assert stats["reads"]["digest_mismatches"] in (3, 5)
        assert "refused" in stats["reads"]["errors"][-1]
        assert stats["cache"]["disk_chunks"] == 2  # only the verified chunks of shared.bin
        proxy.corrupt = 0
        assert (tmp_path / "mnt/app/run.sh").read_bytes() == exp.files["app/run.sh"]


def test_disk_cache_over_budget_evicts_and_never_fails_a_read(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    budget = 150_000  # less than the image's chunks (~400 kB)
    with _mount(
        tmp_path,
        f"{registry.address}/{name}",
        prefetch=False,
        disk_bytes=budget,
        memory_bytes=70_000,
    ) as m:
        for _ in range(2):
            for path, data in exp.files.items():
                assert (tmp_path / "mnt" / path).read_bytes() == data
        stats = _stats(m)
    assert stats["cache"]["disk_evictions"] > 0 and stats["cache"]["disk_bytes"] <= budget
    on_disk = sum(f.stat().st_size for f in (tmp_path / "cache/chunks").rglob("*") if f.is_file())
    assert on_disk <= budget


def test_full_disk_under_the_cache_never_fails_a_read(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, exp = image
    cache = tmp_path / "tiny"
    cache.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(cache)], check=True, timeout=10
    )
    try:
        (cache / "chunks").mkdir()
        with _mount(tmp_path, f"{registry.address}/{name}", cache_dir=cache, prefetch=False) as m:
            for path, data in exp.files.items():
                if not path.startswith("plain/"):  # the whole-fetched layer lives in the cache dir
                    assert (tmp_path / "mnt" / path).read_bytes() == data
            stats = _stats(m)
        assert stats["cache"]["disk_write_failures"] + stats["cache"]["disk_evictions"] > 0
    finally:
        subprocess.run(["umount", str(cache)], check=True, timeout=10)


def test_killed_daemon_fails_reads_instead_of_hanging(
    registry: RegistryServer, image: tuple[str, Expected], tmp_path: Path
) -> None:
    name, _ = image
    m = _mount(tmp_path, f"{registry.address}/{name}", prefetch=False)
    m.start()
    try:
        assert m._proc is not None
        os.kill(m._proc.pid, signal.SIGKILL)
        m._proc.wait(10)
        result, seconds = _read_in_child(tmp_path / "mnt/app/shared.bin")
        assert result in ("ENOTCONN", "ECONNABORTED", "EIO") and seconds < 5
        assert not m.alive()
    finally:
        m.stop()
    assert not is_mounted(tmp_path / "mnt")


# --------------------------------------------------------------------------- hostile TOCs


def _forge(tmp_path: Path, registry: RegistryServer, tag: str, edit: Any) -> str:
    """Push an image whose one layer carries a TOC changed by ``edit`` (annotation re-signed)."""
    blobs = tmp_path / "blobs"
    good = write_layer(
        "x",
        [Entry("/a/file.txt", "file", data=b"hello\n" * 1000), Entry("/a/b", "file", data=b"b")],
        blobs,
    )
    raw = Path(good.path).read_bytes()
    toc = estargz.read_toc(good.path)
    doc = {"version": 1, "entries": [e.to_json() for e in toc.entries]}
    edit(doc["entries"])
    toc_json = json.dumps(doc).encode()
    info = tarfile.TarInfo(estargz.TOC_TAR_NAME)
    info.size = len(toc_json)
    member = io.BytesIO()
    with gzip.GzipFile(fileobj=member, mode="wb", mtime=0) as gz:
        gz.write(info.tobuf(tarfile.PAX_FORMAT) + toc_json + b"\0" * (-len(toc_json) % 512 + 1024))
    blob = raw[: toc.toc_offset] + member.getvalue() + estargz.footer_bytes(toc.toc_offset)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    path = blobs / digest.split(":")[1]
    path.write_bytes(blob)
    forged = type(good)(
        **{
            **good.__dict__,
            "path": str(path),
            "digest": digest,
            "size": len(blob),
            "toc_digest": "sha256:" + hashlib.sha256(toc_json).hexdigest(),
        }
    )
    out = tmp_path / f"layout-{tag}"
    write_oci_layout(out, ImageConfig(entrypoint=("/a/b",)), [forged], {})
    push(out, f"{registry.address}/test/evil:{tag}")
    return f"{registry.address}/test/evil:{tag}"


def _set(index: int, **fields: Any) -> Any:
    return lambda entries: entries[index].update(fields)


HOSTILE = {
    "dotdot": (lambda es: es.append({**es[-1], "name": "../../etc/passwd"}), "'..'"),
    "duplicate": (lambda es: es.append(dict(es[-1])), "listed twice"),
    "huge": (lambda es: next(e for e in es if e.get("size")).update(size=1 << 50), "beyond"),
    "escaping-symlink": (
        lambda es: es.append(
            {"name": "a/up", "type": "symlink", "linkName": "../../../../etc/shadow", "mode": 0o777}
        ),
        "climbs above the image root",
    ),
    "offset-past-toc": (
        lambda es: next(e for e in es if e.get("offset")).update(offset=10**9),
        "outside the blob",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_toc_is_refused_at_mount(
    registry: RegistryServer, tmp_path: Path, case: str
) -> None:
    edit, message = HOSTILE[case]
    ref = _forge(tmp_path, registry, case, edit)
    m = _mount(tmp_path, ref)
    with pytest.raises(ImagefsError) as info:
        m.start()
    assert message in str(info.value)
    assert not is_mounted(tmp_path / "mnt") and not m.alive()


def test_toc_not_matching_the_manifest_is_refused(registry: RegistryServer, tmp_path: Path) -> None:
    ref = _forge(tmp_path, registry, "resigned", lambda es: None)
    # re-push the same layer under a manifest whose annotation names another TOC
    layout = tmp_path / "layout-resigned"
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    manifest["layers"][0]["annotations"][estargz.TOC_DIGEST_ANNOTATION] = "sha256:" + "0" * 64
    data = json.dumps(manifest).encode()
    new = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / new).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{new}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    push(layout, ref.replace(":resigned", ":wrong-annotation"))
    m = _mount(tmp_path, ref.replace(":resigned", ":wrong-annotation"))
    with pytest.raises(ImagefsError, match="does not match the layer annotation"):
        m.start()
    assert not is_mounted(tmp_path / "mnt")
