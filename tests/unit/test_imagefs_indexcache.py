"""Each layer's kept index (imagefs/_indexcache.py, _layerindex.py): what a later mount maps.

Real eStargz layers written by our writer, served from memory by a stand-in
for the registry's range reader: the first index is built from each TOC and
kept per layer digest; the second comes back from the files with no request,
and must be the same tree (every path's attributes, children and chunk
locations). A kept file that is damaged, of another layer, or that describes
something a mount must not show (even with a correct checksum) is removed,
and the layer indexed again from its TOC.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zerostart.estargz import ChunkRef, EStargzError, Writer, read_chunk
from zerostart.imagefs._index import ImageIndexError, LayerEntry, Node
from zerostart.imagefs._indexcache import index_image, layer_index_path, load
from zerostart.imagefs._layerindex import HEAD, HEAD_AT, SUM_AT, LayerIndex, layout
from zerostart.imagefs._layers import open_layers
from zerostart.imagefs._layerwrite import encode
from zerostart.imagefs._tree import Tree

MANIFEST = "sha256:" + "ab" * 32


class MemoryReader:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs, self.requests = blobs, 0

    def read(self, digest: str, start: int, end: int) -> bytes:
        self.requests += 1
        return self.blobs[digest][start:end]

    def read_all(self, digest: str, size: int, sink: Callable[[bytes], object]) -> None:
        self.requests += 1
        sink(self.blobs[digest])


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
    top, d2 = _layer([("etc/.wh.gone", b""), ("etc/hostname", b"replaced\n"), ("opt/a/b", b"i")])
    return MemoryReader({d1["digest"]: base, d2["digest"]: top}), {"layers": [d1, d2]}


def _rows(tree: Tree) -> dict[str, tuple[Any, ...]]:
    """Every path's node, as plain values (the whole tree, listed from the root)."""

    def row(n: Node) -> tuple[Any, ...]:
        kids = None if n.children is None else sorted(tree.listdir(n))
        chunks = [
            (*x[:5], x.entry and ChunkRef(*(getattr(x.entry, f) for f in ChunkRef._fields)))
            for x in n.extents
        ]
        return (n.ino, n.kind, n.mode, n.uid, n.gid, n.mtime_ns, n.size, n.link, n.rdev,
                dict(n.xattrs), n.nlink, kids, chunks)  # fmt: skip

    out, todo = {}, [("", tree.root)]
    while todo:
        path, node = todo.pop()
        out[path] = row(node)
        for name, child in tree.listdir(node).items() if node.children is not None else ():
            todo.append((f"{path}/{name.decode()}", child))
    return out


def _index(reader: MemoryReader, manifest: dict[str, Any], cache: Path) -> tuple[Any, Tree, bool]:
    return index_image(reader, MANIFEST, manifest, cache)  # type: ignore[arg-type]


def test_a_later_mount_maps_the_same_tree_back_without_a_request(tmp_path: Path) -> None:
    reader, manifest = _image()
    layers, tree, cached = _index(reader, manifest, tmp_path)
    assert not cached and reader.requests >= 2  # one tail per layer at least
    for desc in manifest["layers"]:
        assert layer_index_path(tmp_path, desc["digest"]).is_file()
    before = reader.requests
    layers2, tree2, cached2 = _index(reader, manifest, tmp_path)
    assert cached2 and reader.requests == before
    assert len(tree2.nodes) == 1  # only the root exists until something is looked up
    assert _rows(tree2) == _rows(tree)
    assert [(la.digest, la.size, la.prefetch_end) for la in layers2] == [
        (la.digest, la.size, la.prefetch_end) for la in layers
    ]
    big = tree2.find("app/big.bin")
    assert big is not None and big is tree2.find("app/hard") and big.nlink == 2
    assert tree2.find("etc/gone") is None and tree2.find("opt/a/b") is not None
    hostname = tree2.find("etc/hostname")
    assert hostname is not None and hostname.size == len(b"replaced\n")
    assert len(big.extents) == 12 and all(isinstance(x.entry, ChunkRef) for x in big.extents)
    assert big.xattrs == {} and tree2.find("app/x.txt").xattrs == {"user.k": b"v"}  # type: ignore[union-attr]


def test_a_first_mount_removes_the_per_manifest_files_of_before(tmp_path: Path) -> None:
    old = tmp_path / "index" / ("sha256-" + "ab" * 32 + ".idx")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"ZSIDX01\n" + bytes(100))
    reader, manifest = _image()
    _index(reader, manifest, tmp_path)
    assert not old.exists() and len(list(old.parent.glob("layers/*.lix"))) == 2


def test_a_layer_shared_by_two_images_is_indexed_once(tmp_path: Path) -> None:
    reader, manifest = _image()
    _index(reader, {"layers": manifest["layers"][:1]}, tmp_path)
    before = reader.requests
    _, _, cached = _index(reader, manifest, tmp_path)
    assert not cached and reader.requests - before <= 2  # the second layer's tail (+ TOC) only
    assert _index(reader, manifest, tmp_path)[2]


def test_a_cached_chunk_reference_still_verifies_the_bytes(tmp_path: Path) -> None:
    reader, manifest = _image()
    _index(reader, manifest, tmp_path)
    layers, tree, _ = _index(reader, manifest, tmp_path)
    big = tree.find("app/big.bin")
    assert big is not None
    x = big.extents[3]
    assert x.entry is not None
    raw = reader.blobs[layers[x.layer].digest][x.start : x.end]
    assert read_chunk(x.entry, raw) == (bytes(range(256)) * 3)[192:256]
    forged = x.entry._replace(chunk_digest="sha256:" + "00" * 32)  # type: ignore[union-attr]
    with pytest.raises(EStargzError, match="digest"):
        read_chunk(forged, raw)


def _sections(data: bytes) -> tuple[dict[str, tuple[int, int, str]], int, int]:
    """The file's sections (offset, bytes, typecode), checked end and size, from its header."""
    counts = HEAD.unpack_from(data, HEAD_AT)
    return layout(dict(zip(("E", "C", "S", "W", "M", "NB", "LB", "XB", "WB"), counts, strict=True)))


def _set(data: bytes, column: str, at: int, value: Any, width: int) -> bytes:
    """Item ``at`` (< 0: from the end) of ``column`` set to ``value`` (or ``value(old, item
    before)``), the file resealed."""
    start, size, _ = _sections(data)[0][column]
    off = start + width * (at if at >= 0 else size // width + at)
    old, prev = (int.from_bytes(data[o : o + width], "little") for o in (off, off - width))
    new = value(old, prev) if callable(value) else value
    return _reseal(data[:off] + new.to_bytes(width, "little") + data[off + width :])


def _reseal(data: bytes) -> bytes:
    """``data`` with its checksum made right again (what a writer of the cache folder could do)."""
    checked_end = _sections(data)[1]
    return data[:SUM_AT] + hashlib.sha256(data[HEAD_AT:checked_end]).digest() + data[HEAD_AT:]


def _entries(reader: MemoryReader, desc: dict[str, Any], tmp: Path) -> list[LayerEntry]:
    return open_layers(reader, [desc], tmp)[1][0]  # type: ignore[arg-type]


def _rebuilt(
    tmp_path: Path, forge: Callable[[bytes, MemoryReader, dict[str, Any]], bytes], why: str
) -> None:
    """Forge the base layer's kept index; the next index must refuse it, say why, and rebuild."""
    reader, manifest = _image()
    _, tree, _ = _index(reader, manifest, tmp_path)
    want = _rows(tree)
    desc = manifest["layers"][0]
    path = layer_index_path(tmp_path, desc["digest"])
    path.write_bytes(forge(path.read_bytes(), reader, desc))
    with pytest.raises(Exception, match=why):
        LayerIndex(path.read_bytes(), layer=desc["digest"], expect={"toc": _toc(desc)})
    assert load(tmp_path, 0, desc) is None and not path.exists()
    path.write_bytes(forge(_kept(reader, manifest, tmp_path, path), reader, desc))
    _, tree2, cached = _index(reader, manifest, tmp_path)
    assert not cached and _rows(tree2) == want
    assert load(tmp_path, 0, desc) is not None  # kept again, rebuilt from the TOC


def _kept(reader: MemoryReader, manifest: dict[str, Any], tmp: Path, path: Path) -> bytes:
    _index(reader, manifest, tmp)
    return path.read_bytes()


def _toc(desc: dict[str, Any]) -> str:
    return str(desc["annotations"]["containerd.io/snapshot/stargz/toc.digest"])


def _reencode(edit: Callable[[list[LayerEntry], dict[str, Any]], None]) -> Any:
    def forge(data: bytes, reader: MemoryReader, desc: dict[str, Any]) -> bytes:
        meta = dict(LayerIndex(data, layer=desc["digest"]).meta)
        entries = _entries(reader, desc, Path(str(meta.get("local_path", "/nonexistent"))).parent)
        edit(entries, meta)
        return encode(entries, meta)

    return forge


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        (lambda b, r, d: b[:-10], "cut short"),
        (lambda b, r, d: b[:300] + bytes([b[300] ^ 1]) + b[301:], "checksum"),
        (lambda b, r, d: b"ZSLIX00\n" + b[8:], "version"),
        (lambda b, r, d: b"", "version"),
    ],
    ids=["truncated", "one-bit", "other-version", "empty"],
)
def test_a_damaged_index_is_refused_and_built_again(tmp_path: Path, forge: Any, why: str) -> None:
    _rebuilt(tmp_path, forge, why)


def _column_edit(column: str, at: int, value: int, width: int) -> Any:
    """Set one item of a column of the base layer's index, and reseal the file."""
    return lambda data, reader, desc: _set(data, column, at, value, width)


def _name_edit(old: bytes, new: bytes) -> Callable[[bytes, MemoryReader, dict[str, Any]], bytes]:
    def forge(data: bytes, reader: MemoryReader, desc: dict[str, Any]) -> bytes:
        assert len(old) == len(new) and data.count(old) == 1
        return _reseal(data.replace(old, new))

    return forge


def _escaping_chunk(entries: list[LayerEntry], meta: dict[str, Any]) -> None:
    e = next(e for e in entries if e.path == "app/big.bin")
    e.extents = (*e.extents[:-1], e.extents[-1]._replace(end=meta["size"] + 4096))


def _other_toc(entries: list[LayerEntry], meta: dict[str, Any]) -> None:
    meta["toc"] = "sha256:" + "00" * 32


def _other_layer_meta(entries: list[LayerEntry], meta: dict[str, Any]) -> None:
    meta["layer"] = "sha256:" + "11" * 32


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        (_reencode(_other_layer_meta), "the index of layer"),
        (_reencode(_other_toc), "toc is"),
        (_reencode(lambda es, m: es.append(LayerEntry("etc/../x", "reg"))), r"'\.\.' name"),
        (_name_edit(b"\0hostname\0", b"\0/etc/pas\0"), "holds '/'"),
        (_reencode(_escaping_chunk), "outside the layer"),
        (
            _reencode(lambda es, m: es.append(LayerEntry("app/up", "symlink", link="../../x"))),
            "climbs above the image root",
        ),
        (_name_edit(b'"v": 1', b'"v": 2'), "another version"),
        (_name_edit(b'"little"', b'"big"   '), "byte order"),
        (_name_edit(b'"sha256"', b'"sha512"'), "digest width"),
        (_column_edit("kind", 0, 1, 1), "no folder"),
        (_column_edit("kind", 1, 9, 1), "no known kind"),
        (_column_edit("chunk", 5, 0, 4), "chunk offsets"),
        (_column_edit("link", 0, 1, 4), "record offsets"),
        (_name_edit(b"app/big.bin", b"../etc/pass"), "hard link to"),
        (_name_edit(b"app/big.bin", b"app//big.bi"), "not a clean name"),
    ],
    ids=[
        "other-layer",
        "other-toc",
        "dotdot-name",
        "absolute-name",
        "chunk-past-layer",
        "symlink-out",
        "meta-version",
        "byte-order",
        "digest-width",
        "root-not-a-folder",
        "unknown-kind",
        "chunk-offsets",
        "link-offsets",
        "hardlink-climbs",
        "hardlink-unclean",
    ],
)
def test_a_hostile_or_malformed_index_with_a_good_checksum_is_refused_and_built_again(
    tmp_path: Path, forge: Any, why: str
) -> None:
    _rebuilt(tmp_path, forge, why)


@pytest.mark.parametrize(("record", "start"), [(2, 1), (1, 1)], ids=["out-of-order", "orphans"])
def test_folder_offsets_that_do_not_form_a_tree_are_refused(
    tmp_path: Path, record: int, start: int
) -> None:
    """``etc``'s children start at 1 (offsets go down: it would hold ``app`` and itself), or
    ``app``'s do (in order, but the root then holds nothing: every record is an orphan)."""
    reader, manifest = _image()
    _index(reader, manifest, tmp_path)
    desc = manifest["layers"][0]
    data = layer_index_path(tmp_path, desc["digest"]).read_bytes()
    assert LayerIndex(data, layer=desc["digest"]).child[1] > 1
    with pytest.raises(ImageIndexError, match="not a tree"):
        LayerIndex(_set(data, "child", record, start, 4), layer=desc["digest"])


@pytest.mark.parametrize("digest", ["", "sha256:", "sha256:../../x", "../x:ab", "sha256:ab/cd"])
def test_the_index_file_name_comes_only_from_a_well_formed_digest(
    tmp_path: Path, digest: str
) -> None:
    with pytest.raises(ValueError, match="not a digest"):
        layer_index_path(tmp_path, digest)


def _ztoc_layer(tmp: Path) -> tuple[dict[str, Any], Any, Path]:
    """A plain gzip layer of two members, its zTOC, and its kept index (as a first mount keeps it)."""
    import gzip
    import random

    from zerostart.imagefs._indexcache import _meta, save
    from zerostart.imagefs._zran import open_zran
    from zerostart.ztoc._build import build

    rng = random.Random(5)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(4):
            data = rng.randbytes(90_000)
            info = tarfile.TarInfo(f"app/f{i}.bin")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    blob = gzip.compress(raw[:150_000], mtime=0) + gzip.compress(raw[150_000:], mtime=0)
    z = build(io.BytesIO(blob), 64 * 1024)
    desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }
    layer, entries = open_zran(0, desc, z)
    path = layer_index_path(tmp, desc["digest"])
    save(path, encode(entries, _meta(layer, desc, z), z.checkpoints))
    return desc, z, path


def test_a_ztoc_layer_keeps_its_span_checkpoints(tmp_path: Path) -> None:
    desc, z, _ = _ztoc_layer(tmp_path)
    kept = load(tmp_path, 0, desc)
    assert kept is not None
    layer, li = kept
    assert layer.spans is not None and layer.spans.z.checkpoints == z.checkpoints
    assert (layer.spans.z.out_size, layer.spans.z.blob_size) == (z.out_size, z.blob_size)
    tree = Tree([li])
    node = tree.find("app/f2.bin")
    assert node is not None and node.size == 90_000 and node.extents[0].entry is None


def _span_forge(column: str, at: int, value: Callable[[int, int], int]) -> Callable[[bytes], bytes]:
    return lambda data: _set(data, column, at, value, 8)


@pytest.mark.parametrize(
    ("column", "at", "value"),
    [
        ("s_win", 2, lambda old, prev: prev),  # window 1's bytes become window 2's too
        ("s_bits", 2, lambda old, prev: 0),
        ("s_bits", 1, lambda old, prev: old + 4),
        ("s_bits", 0, lambda old, prev: 8),
        ("s_bits", -1, lambda old, prev: old + (1 << 40)),
        ("s_out", 1, lambda old, prev: 1 << 40),
        ("s_out", -1, lambda old, prev: old + (1 << 40)),
    ],
    ids=[
        "window-over-32k",
        "bits-out-of-order",
        "bits-unaligned",
        "first-not-at-0",
        "bits-past-blob",
        "offsets-out-of-order",
        "offset-past-stream",
    ],
)
def test_hostile_span_checkpoints_are_refused(
    tmp_path: Path, column: str, at: int, value: Callable[[int, int], int]
) -> None:
    desc, z, path = _ztoc_layer(tmp_path)
    assert [len(c.window) for c in z.checkpoints[:3]] == [0, 32768, 32768]
    path.write_bytes(_span_forge(column, at, value)(path.read_bytes()))
    with pytest.raises(ImageIndexError, match="span"):
        LayerIndex(path.read_bytes(), layer=desc["digest"])
    assert load(tmp_path, 0, desc) is None and not path.exists()


def test_malformed_xattrs_fail_the_lookup_not_the_mount(tmp_path: Path) -> None:
    reader, manifest = _image()
    _index(reader, manifest, tmp_path)
    desc = manifest["layers"][0]
    path = layer_index_path(tmp_path, desc["digest"])
    data = path.read_bytes()
    assert data.count(b"user.k") == 1
    forged = _reseal(
        data.replace(b"\x06\x00\x01\x00\x00\x00user.k", b"\x07\x00\x01\x00\x00\x00user.k")
    )
    path.write_bytes(forged)
    _, tree, cached = _index(reader, manifest, tmp_path)
    assert cached and tree.find("app/big.bin") is not None
    with pytest.raises(ImageIndexError, match="xattrs cut short"):
        tree.find("app/x.txt")


def test_a_whole_fetched_layer_is_kept_while_its_tar_is(tmp_path: Path) -> None:
    reader, manifest = _image()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("plain/x")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    blob = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    reader.blobs[digest] = blob
    tar_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest}
    manifest["layers"].append(tar_desc | {"size": len(blob)})
    layers, _, _ = _index(reader, manifest, tmp_path)
    assert layers[2].local_path is not None and layers[2].local_path.is_file()
    layers2, tree, cached = _index(reader, manifest, tmp_path)
    assert cached and layers2[2].local_path == layers[2].local_path
    node = tree.find("plain/x")
    assert node is not None and node.extents[0].end - node.extents[0].start == 3
    layers[2].local_path.unlink()
    assert load(tmp_path, 2, manifest["layers"][2]) is None  # refused, and removed
    assert not layer_index_path(tmp_path, digest).exists()
    assert not _index(reader, manifest, tmp_path)[2] and layers[2].local_path.is_file()
