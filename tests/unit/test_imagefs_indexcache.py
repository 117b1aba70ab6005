"""The cached image index (imagefs/_indexcache.py): what a later mount reads instead of the TOCs.

A real eStargz layer written by our writer, served from memory by a stand-in
for the registry's range reader: the first index is built from the TOC and
kept; the second comes back from the file with no request, and must be the
same tree (every inode's attributes, children and chunk locations). A
damaged or stale file is never used.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from zerostart.estargz import ChunkRef, EStargzError, Writer, read_chunk
from zerostart.imagefs._index import Node, Tree
from zerostart.imagefs._indexcache import MAGIC, index_image, index_path, load

MANIFEST = "sha256:" + "ab" * 32


class MemoryReader:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs, self.requests = blobs, 0

    def read(self, digest: str, start: int, end: int) -> bytes:
        self.requests += 1
        return self.blobs[digest][start:end]


def _layer(entries: list[tuple[str, Any]], chunk_size: int = 64) -> tuple[bytes, dict[str, Any]]:
    out = io.BytesIO()
    w = Writer(out, chunk_size=chunk_size)
    for name, what in entries:
        info = tarfile.TarInfo(name)
        info.mtime = 1_700_000_000
        if what == "dir":
            info.type, info.mode = tarfile.DIRTYPE, 0o750
            w.add(info)
        elif isinstance(what, tuple):  # ("sym"|"hard", target)
            info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
            info.linkname = what[1]
            w.add(info)
        else:
            info.size, info.mode, info.uid = len(what), 0o640, 1000
            info.pax_headers = {"SCHILY.xattr.user.k": "v"} if name.endswith("x.txt") else {}
            w.add(info, what)
    blob = w.close()
    data = out.getvalue()
    desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": blob.digest,
        "size": len(data),
        "annotations": blob.annotations(),
    }
    return data, desc


def _image() -> tuple[MemoryReader, dict[str, Any]]:
    base, d1 = _layer(
        [
            ("etc", "dir"),
            ("etc/hostname", b"zerostart\n"),
            ("etc/gone", b"x"),
            ("app", "dir"),
            ("app/big.bin", bytes(range(256)) * 3),  # 12 chunks of 64 bytes
            ("app/x.txt", b"with an xattr"),
            ("app/link", ("sym", "big.bin")),
            ("app/hard", ("hard", "app/big.bin")),
        ]
    )
    top, d2 = _layer([("etc/.wh.gone", b""), ("etc/hostname", b"replaced\n")])
    return MemoryReader({d1["digest"]: base, d2["digest"]: top}), {"layers": [d1, d2]}


def _rows(tree: Tree) -> dict[int, tuple[Any, ...]]:
    def row(n: Node) -> tuple[Any, ...]:
        kids = None if n.children is None else {k: c.ino for k, c in n.children.items()}
        chunks = [
            (*x[:5], x.entry and ChunkRef(*(getattr(x.entry, f) for f in ChunkRef._fields)))
            for x in n.extents
        ]
        return (n.ino, n.kind, n.mode, n.uid, n.gid, n.mtime_ns, n.size, n.link, n.rdev,
                dict(n.xattrs), n.nlink, kids, chunks)  # fmt: skip

    return {ino: row(n) for ino, n in tree.inodes.items()}


def test_a_later_mount_reads_the_same_tree_back_without_a_request(tmp_path: Path) -> None:
    reader, manifest = _image()
    layers, tree, cached = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    assert not cached and reader.requests >= 2  # one tail per layer at least
    assert index_path(tmp_path, MANIFEST).is_file()
    before = reader.requests
    layers2, tree2, cached2 = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    assert cached2 and reader.requests == before
    assert _rows(tree2) == _rows(tree)
    assert layers2 == layers
    assert tree2.root is tree2.inodes[1]
    big = tree2.root.children[b"app"].children[b"big.bin"]  # type: ignore[index]
    assert big is tree2.root.children[b"app"].children[b"hard"] and big.nlink == 2  # type: ignore[index]
    assert b"gone" not in tree2.root.children[b"etc"].children  # type: ignore[index]
    assert len(big.extents) == 12 and all(isinstance(x.entry, ChunkRef) for x in big.extents)


def test_a_cached_chunk_reference_still_verifies_the_bytes(tmp_path: Path) -> None:
    reader, manifest = _image()
    index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    layers, tree, _ = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    x = tree.root.children[b"app"].children[b"big.bin"].extents[3]  # type: ignore[index]
    assert x.entry is not None
    raw = reader.blobs[layers[x.layer].digest][x.start : x.end]
    assert read_chunk(x.entry, raw) == (bytes(range(256)) * 3)[192:256]
    forged = x.entry._replace(chunk_digest="sha256:" + "00" * 32)  # type: ignore[union-attr]
    with pytest.raises(EStargzError, match="digest"):
        read_chunk(forged, raw)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # cut short
        lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:],  # one bit of the payload
        lambda b: b"ZSIDX00\n" + b[len(MAGIC) :],  # another version
        lambda b: b"",
    ],
)
def test_a_damaged_index_is_removed_and_built_again(tmp_path: Path, damage: Any) -> None:
    reader, manifest = _image()
    _, tree, _ = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    path = index_path(tmp_path, MANIFEST)
    path.write_bytes(damage(path.read_bytes()))
    assert load(path) is None and not path.exists()
    _, tree2, cached = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    assert not cached and _rows(tree2) == _rows(tree)


def test_an_index_whose_whole_fetched_layer_is_gone_is_not_used(tmp_path: Path) -> None:
    from zerostart.imagefs._fetch import Layer
    from zerostart.imagefs._indexcache import save

    tar = tmp_path / "layer.tar"
    tar.write_bytes(b"")
    reader, manifest = _image()
    layers, tree, _ = index_image(reader, MANIFEST, manifest, tmp_path)  # type: ignore[arg-type]
    path = index_path(tmp_path, MANIFEST)
    save(path, [*layers, Layer(2, "sha256:" + "cd" * 32, 10, local_path=tar)], tree)
    assert load(path) is not None
    tar.unlink()
    assert load(path) is None


@pytest.mark.parametrize("digest", ["", "sha256:", "sha256:../../x", "../x:ab", "sha256:ab/cd"])
def test_the_index_file_name_comes_only_from_a_well_formed_digest(
    tmp_path: Path, digest: str
) -> None:
    with pytest.raises(ValueError, match="not a digest"):
        index_path(tmp_path, digest)
