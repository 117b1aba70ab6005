"""The merged index of an image, kept on the node: a later mount reads it back in one file.

Theory of operation
-------------------
A first mount fetches every layer's TOC (a range request or two per layer),
parses and validates it (names, sizes, offsets, symlinks: estargz/_reader.py),
turns it into layer entries and merges the layers (_index.py). For an image of
36,600 files that is seconds of Python; all of it is a function of the image
manifest, because the manifest names every layer digest and every TOC digest
(the descriptors' ``containerd.io/snapshot/stargz/toc.digest`` annotation,
checked against the TOC's bytes before it is used). So the merged result is
written once, keyed by the manifest digest, and a later mount of the same
image on this node loads it instead: no TOC request, no JSON, no validation,
no merge.

The file is ``MAGIC | sha256(payload) | payload``, the payload a ``marshal``
of plain tuples (the fastest form CPython reads back: no objects but ints,
strings, bytes, tuples and dicts). It is written atomically (temporary file +
rename) into the node's cache folder (mode 0700, like the chunk cache). The
checksum catches a damaged or cut-short file, which is then removed and the
image indexed again from its TOCs; it is not a defence against someone who
can already write the node's cache as root (the same trust as the mount's own
state folder). Layers fetched whole (no TOC) point at their inflated tar in
the cache; if that file is gone the entry is not used.

Inodes keep their numbers (``Tree.number`` is deterministic), so a process
that saw inode N on one mount sees the same file on the next.

Runtime module (the imagefs daemon): standard library only.
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zerostart.estargz import ChunkRef
from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import Extent, Node, Tree, merge
from zerostart.imagefs._layers import open_layers
from zerostart.imagefs._zran import find_ztocs

if TYPE_CHECKING:
    from zerostart.registry.ranges import BlobReader

log = logging.getLogger("zerostart.imagefs")

MAGIC = b"ZSIDX01\n"  # bump the number when the payload's shape changes
_SUM = 32  # sha256 digest bytes after the magic
_Row = tuple[Any, ...]


def index_image(
    reader: BlobReader, manifest_digest: str, manifest: dict[str, Any], cache_dir: Path
) -> tuple[list[Layer], Tree, bool]:
    """``(layers, tree, cached)`` of the image: the kept index, else built from its TOCs.

    Builds and keeps it when absent (a failure to keep it is logged, never
    raised). Raises ImageIndexError / RegistryError as ``open_layers`` does.
    """
    kept = index_path(cache_dir, manifest_digest)
    hit = load(kept)
    if hit is not None:
        return hit[0], hit[1], True
    ztocs = find_ztocs(reader, manifest_digest, manifest)  # {} unless plain gzip layers
    layers, entries = open_layers(reader, manifest.get("layers", []), cache_dir, ztocs)
    tree = merge(entries)
    if any(la.spans is not None for la in layers):
        return layers, tree, False  # zTOC layers are not kept (yet): their index is rebuilt
    try:
        save(kept, layers, tree)
    except OSError as exc:
        log.warning("could not keep the image index in %s: %s", kept.parent, exc)
    return layers, tree, False


def index_path(cache_dir: Path, manifest_digest: str) -> Path:
    """Where the index of the image with this manifest digest lives (``algo:hex`` -> ``hex.idx``)."""
    algo, _, hexpart = manifest_digest.partition(":")
    if not hexpart or not hexpart.isalnum() or not algo.isalnum():
        raise ValueError(f"not a digest: {manifest_digest!r}")
    return cache_dir / "index" / f"{algo}-{hexpart}.idx"


def _chunk(entry: Any) -> tuple[Any, ...] | None:
    if entry is None:
        return None
    return (
        entry.name,
        entry.offset,
        entry.inner_offset,
        entry.chunk_offset,
        entry.chunk_size,
        entry.chunk_digest,
        entry.next_offset,
    )


def _node_row(node: Node) -> _Row:
    children = (
        None
        if node.children is None
        else tuple((name, child.ino) for name, child in node.children.items())
    )
    extents = tuple((*x[:5], _chunk(x.entry)) for x in node.extents)
    return (
        node.kind,
        node.mode,
        node.uid,
        node.gid,
        node.mtime_ns,
        node.size,
        node.link,
        node.rdev,
        dict(node.xattrs),
        node.nlink,
        children,
        extents,
    )


def save(path: Path, layers: list[Layer], tree: Tree) -> int:
    """Write the index of ``layers`` merged into ``tree``; returns the file's size in bytes.

    Raises OSError when the folder cannot be written (the caller logs it: a
    mount never fails because its index could not be kept).
    """
    layer_rows = tuple(
        (la.index, la.digest, la.size, str(la.local_path or ""), la.prefetch_end, la.note)
        for la in layers
    )
    nodes = tuple(_node_row(tree.inodes[ino]) for ino in range(1, len(tree.inodes) + 1))
    payload = marshal.dumps((layer_rows, nodes))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".idx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(MAGIC) + _SUM + len(payload)


def load(path: Path) -> tuple[list[Layer], Tree] | None:
    """The layers and merged tree kept at ``path``, or None (absent, damaged or stale: removed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("index cache %s unreadable (%s): indexing from the TOCs", path.name, exc)
        return None
    try:
        head, payload = data[: len(MAGIC) + _SUM], data[len(MAGIC) + _SUM :]
        if head[: len(MAGIC)] != MAGIC:
            raise ValueError("not an index of this version")
        if hashlib.sha256(payload).digest() != head[len(MAGIC) :]:
            raise ValueError("checksum mismatch")
        layer_rows, nodes = marshal.loads(payload)
        layers = [
            Layer(i, digest, size, Path(local) if local else None, prefetch_end, note)
            for i, digest, size, local, prefetch_end, note in layer_rows
        ]
        if any(la.local_path is not None and not la.local_path.is_file() for la in layers):
            raise ValueError("a whole-fetched layer's tar is gone from the cache")
        return layers, _tree(nodes)
    except (ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
        log.warning("index cache %s not used (%s): indexing from the TOCs", path.name, exc)
        path.unlink(missing_ok=True)
        return None


def _tree(nodes: tuple[_Row, ...]) -> Tree:
    new, chunk = Node.__new__, ChunkRef._make
    inodes: dict[int, Node] = {}
    folders: list[tuple[Node, tuple[tuple[bytes, int], ...]]] = []
    for ino, row in enumerate(nodes, start=1):
        kind, mode, uid, gid, mtime_ns, size, link, rdev, xattrs, nlink, children, extents = row
        node = new(Node)
        node.ino, node.kind, node.mode, node.uid, node.gid = ino, kind, mode, uid, gid
        node.mtime_ns, node.size, node.link, node.rdev = mtime_ns, size, link, rdev
        node.xattrs, node.nlink, node.children = xattrs, nlink, None
        node.extents = tuple(
            Extent(layer, off, n, start, end, None if c is None else chunk(c))
            for layer, off, n, start, end, c in extents
        )
        if children is not None:
            folders.append((node, children))
        inodes[ino] = node
    for node, children in folders:  # (name, ino) pairs -> the nodes themselves
        node.children = {name: inodes[ino] for name, ino in children}
    return Tree.from_inodes(inodes)
