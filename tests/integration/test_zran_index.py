"""`zerostart index` on an image another tool built (umoci, pushed by skopeo), then run lazily.

The image is a python:slim-like root made from this machine's Debian Python
(tests/integration/foreign_images.py): plain ``tar+gzip`` written by umoci's
pgzip, never touched by zerostart's builder. Against the real registry
(Debian's docker-registry, which has no referrers API: the fallback tag is
used), real FUSE and real runc, each test checks what a reader sees against
the files themselves and a full pull, and what crossed the network.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import fault_proxy
from foreign_images import (
    add_layer,
    expected_answer,
    python_rootfs,
    skopeo_push,
    tools_missing,
    umoci_image,
)
from registry_server import RegistryServer, registry_binary, running_registry

from zerostart.imagefs.mount import ImagefsError, LazyMount, is_mounted
from zerostart.procs import free_port
from zerostart.registry.ranges import BlobReader
from zerostart.registry.referrers import add_referrer, fallback_tag, list_referrers
from zerostart.ztoc import ARTIFACT_TYPE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(registry_binary() is None, reason="docker-registry not installed"),
    pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing())),
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts with allow_other need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(
        importlib.util.find_spec("pyfuse3") is None,
        reason="pyfuse3 not installed (pip install '.[imagefs]', needs libfuse3-dev)",
    ),
]

SPAN_MIB = 1  # small spans, so that one file's read is visibly a fraction of the layer
CLI_TIMEOUT_S = 120.0


class Foreign:
    def __init__(self, reg: RegistryServer, layout: Path, root: Path, data: dict[str, bytes]):
        self.reg, self.layout, self.root, self.data = reg, layout, root, data
        self.ref = f"{reg.address}/foreign/py:1"
        self.other = f"{reg.address}/foreign/py:2"  # the same files, another manifest
        self.digest_before = ""


def _index(ref: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zerostart.cli",
            "index",
            ref,
            "--span-mib",
            str(SPAN_MIB),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Foreign]:
    work = tmp_path_factory.mktemp("foreign")
    data = python_rootfs(work / "root")
    umoci_image(work / "root", work / "layout", "1")
    top = {"app/releases/v1/version": b"1.0.8\n", "app/data/extra.txt": b"from the top layer\n"}
    add_layer(work / "layout", "1", top, work)  # overrides a file of the first layer
    for name, body in top.items():  # what the merged image must show
        (work / "root" / name).write_bytes(body)
        data[name] = body
    with running_registry(work / "registry") as reg:
        f = Foreign(reg, work / "layout", work / "root", data)
        skopeo_push(f.layout, "1", f.ref)
        f.digest_before = BlobReader(f.ref).manifest()[0]
        yield f


@pytest.fixture(scope="module")
def indexed(foreign: Foreign) -> dict[str, Any]:
    return _index(foreign.ref)


def test_without_an_index_the_layer_is_fetched_whole(foreign: Foreign, tmp_path: Path) -> None:
    """No referrer in this repository: the umoci layer (no end-of-archive blocks) comes whole."""
    ref = f"{foreign.reg.address}/foreign/plain:1"
    skopeo_push(foreign.layout, "1", ref)
    with LazyMount(ref, tmp_path / "mnt", cache_dir=tmp_path / "cache") as mount:
        assert "fetched whole" in mount.info["layers"][0]["note"]
        version = tmp_path / "mnt/app/current/version"
        assert version.read_bytes() == foreign.data["app/releases/v1/version"]


def test_index_leaves_the_image_as_it_was(foreign: Foreign, indexed: dict[str, Any]) -> None:
    reader = BlobReader(foreign.ref)
    digest, manifest = reader.manifest()
    assert digest == foreign.digest_before == indexed["manifest_digest"]
    base, top = indexed["layers"]
    assert [base["digest"], top["digest"]] == [x["digest"] for x in manifest["layers"]]
    assert base["entries"] > 50 and base["checkpoints"] >= base["size"] // (SPAN_MIB << 20)
    assert top["entries"] >= 2
    # distribution 2.8 has no referrers API: the sha256-<hex> tag lists the artifact
    assert indexed["fallback_tag"] is True
    assert foreign.reg.requests("PUT", f"/manifests/{fallback_tag(digest)}", 201) == 1
    (listed,) = list_referrers(reader, digest, ARTIFACT_TYPE)
    assert listed["digest"] == indexed["artifact_digest"]
    artifact, _, _ = reader.manifest_document(listed["digest"])
    assert artifact["subject"]["digest"] == digest
    assert artifact["artifactType"] == ARTIFACT_TYPE


def _stats(m: LazyMount) -> dict[str, Any]:
    time.sleep(0.7)  # the daemon rewrites its stats twice a second
    return m.stats()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_mount_reads_the_files_fetching_spans(
    foreign: Foreign, indexed: dict[str, Any], tmp_path: Path
) -> None:
    mount = LazyMount(foreign.ref, tmp_path / "mnt", cache_dir=tmp_path / "cache", timeout_s=5.0)
    size = sum(layer["size"] for layer in indexed["layers"])
    with mount:
        assert all(la["note"].startswith("zTOC") for la in mount.info["layers"])
        root = tmp_path / "mnt"
        at_mount = _stats(mount)["bytes_fetched"]
        assert (root / "app/data/notes.txt").read_bytes() == foreign.data["app/data/notes.txt"]
        with open(root / "app/data/big.bin", "rb") as f:
            f.seek(3_000_000)
            assert f.read(65536) == foreign.data["app/data/big.bin"][3_000_000:3_065_536]
        one_read = _stats(mount)["bytes_fetched"] - at_mount
        assert 0 < one_read <= 3 * (SPAN_MIB << 20) + 200_000 < size
        assert os.readlink(root / "app/current") == "releases/v1"
        for path in sorted(foreign.root.rglob("*")):  # every file, byte for byte, and its mode
            rel = path.relative_to(foreign.root)
            if path.is_file() and not path.is_symlink():
                assert _sha((root / rel).read_bytes()) == _sha(path.read_bytes()), rel
                assert (root / rel).stat().st_mode == path.stat().st_mode, rel
        stats = _stats(mount)
        assert stats["reads"]["failed_reads"] == 0 and stats["reads"]["digest_mismatches"] == 0
        assert stats["bytes_fetched"] - at_mount <= size * 1.05  # no span twice
    assert not is_mounted(tmp_path / "mnt")
    # A second mount maps each layer's kept index (entries and span checkpoints): it asks
    # for no referrers list and no zTOC, and still reads every file through the spans.
    # (Its prefetch, after the mount, lists the referrers for a span profile: off here.)
    (tmp_path / "cache/chunks").rename(tmp_path / "chunks.old")  # the spans come again
    listed = foreign.reg.requests("GET", "/referrers/") + foreign.reg.requests(
        "GET", f"/manifests/{fallback_tag(foreign.digest_before)}"
    )
    blobs = foreign.reg.requests("GET", "/blobs/")
    again = LazyMount(foreign.ref, tmp_path / "mnt", cache_dir=tmp_path / "cache", prefetch=False)
    with again:
        assert again.info["index"] == "cached"
        assert (root / "app/data/notes.txt").read_bytes() == foreign.data["app/data/notes.txt"]
        assert os.readlink(root / "app/current") == "releases/v1"
    assert listed == foreign.reg.requests("GET", "/referrers/") + foreign.reg.requests(
        "GET", f"/manifests/{fallback_tag(foreign.digest_before)}"
    )
    # the config, then spans: no zTOC blob (a zTOC is ~1 % of the layer, a span 1 MiB)
    assert foreign.reg.requests("GET", "/blobs/") - blobs <= 1 + 3


def test_run_lazy_answers_like_a_full_pull(
    foreign: Foreign, indexed: dict[str, Any], oci_runtime: None
) -> None:
    """The umoci layout run unpacked (a full pull) and the registry image run lazily: same answer."""
    from zerostart.container.lazy import LazyContainer
    from zerostart.container.runtime import Container
    from zerostart.warmup import WarmupRequest, send

    answers = {}
    with tempfile.TemporaryDirectory() as cache:
        full = Container(str(foreign.layout), port=free_port(), cache_dir=Path(cache))
        with full:
            status, answers["full"] = send(full.port, WarmupRequest("GET", "/answer", None))
            assert status == 200
        lazy = LazyContainer(
            foreign.ref, port=free_port(), mount_options={"cache_dir": Path(cache) / "imagefs"}
        )
        with lazy:
            status, answers["lazy"] = send(lazy.port, WarmupRequest("GET", "/answer", None))
            assert status == 200
            time.sleep(0.7)  # the daemon rewrites its stats twice a second
            stats = lazy.stats()
    assert answers["lazy"] == answers["full"]
    assert answers["lazy"] == expected_answer(foreign.data)
    size = sum(layer["size"] for layer in indexed["layers"])
    assert stats["reads"]["failed_reads"] == 0
    assert stats["bytes_fetched"] < size  # python + the modules it imports, not all


def test_an_index_for_another_image_is_refused(
    foreign: Foreign, indexed: dict[str, Any], tmp_path: Path
) -> None:
    """A referrer listed under this image whose subject is another image: the mount refuses."""
    umoci = foreign.layout
    subprocess.run(
        ["umoci", "config", "--image", f"{umoci}:1", "--tag", "2", "--config.env", "X=2"],
        check=True,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
    )
    skopeo_push(umoci, "2", foreign.other)
    other = BlobReader(foreign.other).manifest()[0]
    assert other != indexed["manifest_digest"]
    listed = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1}
    listed |= {"digest": indexed["artifact_digest"], "artifactType": ARTIFACT_TYPE}
    add_referrer(foreign.other.rsplit(":", 1)[0], other, listed)
    mount = LazyMount(foreign.other, tmp_path / "mnt", cache_dir=tmp_path / "cache")
    with pytest.raises(ImagefsError, match="names subject"):
        mount.start()
    assert not is_mounted(tmp_path / "mnt")


def test_a_corrupt_span_is_fetched_again_then_refused(
    foreign: Foreign, indexed: dict[str, Any], tmp_path: Path
) -> None:
    """A span whose bytes fail the zTOC's sha256 is never served: one more fetch, then EIO."""
    big = foreign.data["app/data/big.bin"]
    with fault_proxy(foreign.reg.address) as proxy:
        ref = foreign.ref.replace(foreign.reg.address, proxy.address)
        mount = LazyMount(
            ref, tmp_path / "mnt", cache_dir=tmp_path / "cache", timeout_s=5.0, backoff_s=0.05
        )
        with mount:
            path = tmp_path / "mnt" / "app/data/big.bin"
            proxy.corrupt = 1  # the first fetch is bad, the second good
            with open(path, "rb") as f:
                assert f.read(4096) == big[:4096]
            assert _stats(mount)["reads"]["digest_mismatches"] == 1
            proxy.corrupt = 1000  # bad every time: the read fails, nothing wrong is served
            with open(path, "rb") as f, pytest.raises(OSError) as err:
                f.seek(len(big) - 4096)
                f.read(4096)
            assert err.value.errno == errno.EIO
            proxy.corrupt = 0
            assert _stats(mount)["reads"]["failed_reads"] >= 1


def test_index_of_an_estargz_image_says_it_needs_none(foreign: Foreign, tmp_path: Path) -> None:
    from imagefs_images import make_image

    from zerostart.registry.client import push

    make_image(tmp_path / "layout", plain_layer=False)
    ref = f"{foreign.reg.address}/ours/estargz:1"
    push(tmp_path / "layout", ref)
    done = subprocess.run(
        [sys.executable, "-m", "zerostart.cli", "index", ref],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1
    assert "no plain gzip layer to index" in done.stderr and "eStargz" in done.stderr
    assert "Traceback" not in done.stderr
