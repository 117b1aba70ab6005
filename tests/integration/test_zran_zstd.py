"""`zerostart index` on a zstd image another tool made, then read lazily through its zTOC.

The image of test_zran_index.py (umoci), its layers recompressed as
``tar+zstd`` by ``pzstd`` (many frames, each preceded by a skippable frame:
seekable at frame starts) or by ``zstd`` (one frame: the whole layer is one
span), pushed by skopeo unchanged. Real registry, real FUSE, real runc.
What a reader sees is checked against the files themselves and a full pull.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import test_zran_index as zran_index
from foreign_images import expected_answer, skopeo_push, zstd_image
from test_zran_index import Foreign, _index

from zerostart.imagefs.mount import LazyMount, is_mounted
from zerostart.procs import free_port
from zerostart.registry.ranges import BlobReader

pytestmark = [
    *zran_index.pytestmark,  # registry, umoci, root, FUSE, pyfuse3
    pytest.mark.skipif(
        not all(os.path.exists(f"/usr/bin/{t}") for t in ("pzstd", "zstd")),
        reason="pzstd and zstd make the test layers (apt-get install zstd)",
    ),
]
pytest.importorskip("zstandard", reason="zstd layers need the zstandard module")
foreign = zran_index.foreign  # the image fixture (built once for this module)


def _zstd_ref(foreign: Foreign, tmp: Path, name: str, *, multi_frame: bool) -> tuple[str, Path]:
    layout = tmp / f"zstd-{name}"
    zstd_image(foreign.layout, "1", layout, multi_frame=multi_frame)
    ref = f"{foreign.reg.address}/zstd/{name}:1"
    skopeo_push(layout, "1", ref)
    return ref, layout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("multi_frame", [True, False], ids=["pzstd", "one-frame"])
def test_a_zstd_image_is_indexed_and_read_through_its_spans(
    multi_frame: bool, foreign: Foreign, tmp_path: Path
) -> None:
    ref, _ = _zstd_ref(foreign, tmp_path, "pz" if multi_frame else "one", multi_frame=multi_frame)
    digest, manifest = BlobReader(ref).manifest()
    assert {x["mediaType"] for x in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    indexed = _index(ref)
    assert indexed["manifest_digest"] == digest  # the image is as it was
    base = indexed["layers"][0]
    if multi_frame:  # checkpoints at frame starts: several spans of ~1 MiB and more
        assert base["checkpoints"] >= 3, base
    else:  # one frame: one span, the whole layer
        assert base["checkpoints"] == 1, base
    assert base["window_bytes"] == 0  # frames need no window
    size = sum(la["size"] for la in indexed["layers"])
    with LazyMount(ref, tmp_path / "mnt", cache_dir=tmp_path / "cache", timeout_s=10.0) as m:
        assert all(la["note"].startswith("zTOC") for la in m.info["layers"]), m.info["layers"]
        root = tmp_path / "mnt"
        time.sleep(0.7)
        at_mount = m.stats()["bytes_fetched"]
        assert (root / "app/data/notes.txt").read_bytes() == foreign.data["app/data/notes.txt"]
        time.sleep(0.7)
        one_read = m.stats()["bytes_fetched"] - at_mount
        if multi_frame:
            assert 0 < one_read < base["size"] / 2  # a frame or two, not the layer
        for path in sorted(foreign.root.rglob("*")):
            rel = path.relative_to(foreign.root)
            if path.is_file() and not path.is_symlink():
                assert _sha((root / rel).read_bytes()) == _sha(path.read_bytes()), rel
        assert os.readlink(root / "app/current") == "releases/v1"
        time.sleep(0.7)
        stats: dict[str, Any] = m.stats()
    assert not is_mounted(tmp_path / "mnt")
    assert stats["reads"]["failed_reads"] == 0 and stats["reads"]["digest_mismatches"] == 0
    assert stats["bytes_fetched"] - at_mount <= size * 1.05  # no span twice


def test_run_lazy_of_a_zstd_image_answers_like_a_full_pull(
    foreign: Foreign, tmp_path: Path, oci_runtime: None
) -> None:
    from zerostart.container.lazy import LazyContainer
    from zerostart.container.runtime import Container
    from zerostart.warmup import WarmupRequest, send

    ref, layout = _zstd_ref(foreign, tmp_path, "run", multi_frame=True)
    _index(ref)
    answers = {}
    with tempfile.TemporaryDirectory() as cache:
        with Container(str(layout), port=free_port(), cache_dir=Path(cache)) as full:
            status, answers["full"] = send(full.port, WarmupRequest("GET", "/answer", None))
            assert status == 200
        lazy = LazyContainer(
            ref, port=free_port(), mount_options={"cache_dir": Path(cache) / "imagefs"}
        )
        with lazy:
            status, answers["lazy"] = send(lazy.port, WarmupRequest("GET", "/answer", None))
            assert status == 200
            notes = [la["note"] for la in lazy.mount_info["layers"]]
    assert answers["lazy"] == answers["full"] == expected_answer(foreign.data)
    assert all(n.startswith("zTOC") for n in notes), notes
