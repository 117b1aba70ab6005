"""The merged view of an image's layers: one tree of inodes, built from the layers' indexes alone.

Theory of operation
-------------------
Each layer arrives as a list of :class:`LayerEntry` (from its eStargz table of
contents, or from scanning a plain layer that had to be fetched whole). The
layers are applied bottom first with the OCI image spec's overlay rules
(image-spec ``layer.md``, "Whiteouts"):

* ``dir/.wh.NAME`` hides ``dir/NAME`` of the layers *below*;
* ``dir/.wh..wh..opq`` hides every child ``dir`` had in the layers below;
* whiteouts never hide entries of their own layer, so each layer is applied in
  two passes: first its whiteouts against the tree so far, then its entries;
* an entry replaces what was at its path, except that a directory over a
  directory keeps the lower one's children (the upper one's attributes win);
* a hard link shares its target's inode (``st_nlink`` counts the names).

The result answers ``lookup``/``getattr``/``readdir``/``readlink`` with no
I/O. A regular file's bytes are described by :class:`Extent` s: which layer,
which chunk, and where that chunk sits in the file.
"""

from __future__ import annotations

import bisect
import posixpath
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from zerostart.errors import ZerostartError
from zerostart.estargz import Chunk
from zerostart.paths import PathEscapeError, relative_name

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Entries of the eStargz format itself, not of the image (docs/estargz.md in stargz-snapshotter).
FORMAT_ENTRIES = frozenset({"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"})
KINDS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
ROOT_INODE = 1


class ImageIndexError(ZerostartError):
    """A layer's index describes something the filesystem refuses to mount."""


class Extent(NamedTuple):
    """One chunk of a regular file (a tuple: an image has ~10^5 of them, built at mount).

    ``file_offset``/``size``: where the chunk's uncompressed bytes sit in the
    file. ``start``/``end``: the compressed bytes to fetch in the layer blob
    (``entry.offset``/``entry.next_offset``), or for a layer fetched whole,
    the offsets in its local uncompressed tar. ``entry``: the chunk's TOC
    entry (its ``chunk_digest`` names it in the cache), None for a layer
    fetched whole (verified as one blob).
    """

    layer: int
    file_offset: int
    size: int
    start: int
    end: int
    entry: Chunk | None = None

    @property
    def digest(self) -> str | None:
        return self.entry.chunk_digest if self.entry is not None else None


@dataclass(slots=True)
class LayerEntry:
    """One entry of one layer, in the layer's own terms (``path`` without leading ``/``)."""

    path: str
    kind: str  # a key of KINDS, or "hardlink"
    mode: int = 0o644  # permission bits (with setuid/setgid/sticky)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    link: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    extents: tuple[Extent, ...] = ()


class Node:
    """One inode of the merged tree."""

    __slots__ = (
        "children",
        "extents",
        "gid",
        "ino",
        "kind",
        "link",
        "mode",
        "mtime_ns",
        "nlink",
        "rdev",
        "size",
        "uid",
        "xattrs",
    )

    def __init__(self, e: LayerEntry) -> None:
        self.ino = 0
        self.kind = e.kind
        self.mode = KINDS[e.kind] | (e.mode & 0o7777)
        self.uid, self.gid, self.mtime_ns = e.uid, e.gid, e.mtime_ns
        self.size = (
            e.size if e.kind == "reg" else len(e.link.encode()) if e.kind == "symlink" else 0
        )
        self.link = e.link.encode()
        self.rdev = (e.dev_major << 8) | e.dev_minor
        self.xattrs = dict(e.xattrs)
        self.extents = e.extents
        self.nlink = 1
        self.children: dict[bytes, Node] | None = {} if e.kind == "dir" else None


def normalize(path: str) -> str:
    """``./a//b/`` -> ``a/b``; the root is ``""``. Refuses ``..`` and NUL (checked again here).

    A leading ``/`` names the image's root, as in tar (:func:`zerostart.paths.relative_name`).
    """
    try:
        return relative_name(path, absolute="strip")
    except PathEscapeError as exc:
        raise ImageIndexError(f"entry {exc}; refused") from exc


class Tree:
    """The merged tree and its inode table."""

    def __init__(self) -> None:
        self.root = Node(LayerEntry("", "dir", mode=0o755))
        self.inodes: dict[int, Node] = {}
        self._dirs: dict[str, Node] = {}  # parent path -> directory, within one layer's apply

    @classmethod
    def from_inodes(cls, inodes: dict[int, Node]) -> Tree:
        """A tree already merged and numbered (the cached index, imagefs/_indexcache.py)."""
        tree = cls.__new__(cls)
        tree.root, tree.inodes, tree._dirs = inodes[ROOT_INODE], inodes, {}
        return tree

    def _find(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            if node.children is None:
                return None
            nxt = node.children.get(part.encode())
            if nxt is None:
                return None
            node = nxt
        return node

    def _parent_dir(self, path: str) -> Node:
        """The directory ``path`` lives in, created (0755) where a layer left it implicit."""
        parent = path.rpartition("/")[0]
        cached = self._dirs.get(parent)
        if cached is not None and cached.children is not None:
            return cached
        node = self.root
        for part in path.split("/")[:-1]:
            assert node.children is not None
            key = part.encode()
            nxt = node.children.get(key)
            if nxt is None or nxt.children is None:
                nxt = Node(LayerEntry(part, "dir", mode=0o755))
                node.children[key] = nxt
            node = nxt
        self._dirs[parent] = node
        return node

    def _whiteout(self, path: str) -> None:
        base = posixpath.basename(path)
        parent = self._find(posixpath.dirname(path))
        if parent is None or parent.children is None:
            return
        if base == OPAQUE_MARKER:
            parent.children.clear()
        else:
            parent.children.pop(base[len(WHITEOUT_PREFIX) :].encode(), None)

    def _add(self, e: LayerEntry) -> None:
        if not e.path:  # the layer's root directory: its attributes, our children
            keep = self.root.children
            self.root = Node(e) if e.kind == "dir" else self.root
            self.root.children = keep
            return
        parent = self._parent_dir(e.path)
        assert parent.children is not None
        key = posixpath.basename(e.path).encode()
        old = parent.children.get(key)
        if e.kind == "hardlink":
            target = self._find(normalize(e.link))
            if target is None or target.kind == "dir":
                raise ImageIndexError(
                    f"hard link {e.path!r} -> {e.link!r}: no such file earlier in the image"
                )
            target.nlink += 1
            parent.children[key] = target
            return
        node = Node(e)
        if e.kind == "dir" and old is not None and old.children is not None:
            node.children = old.children
        parent.children[key] = node
        if e.kind == "dir":
            self._dirs[e.path] = node
        elif old is not None and old.children is not None:
            self._dirs.clear()  # a directory became a file: forget what lay under it

    def apply(self, entries: Sequence[LayerEntry]) -> None:
        """Apply one layer (see the module docstring for the two passes)."""
        self._dirs.clear()
        for e in entries:
            if e.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                self._whiteout(e.path)
        self._dirs.clear()  # whiteouts may have removed directories
        for e in entries:
            if not e.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                self._add(e)

    def number(self) -> None:
        """Give every inode a number (root is 1), depth first in name order: stable across mounts."""
        self.inodes.clear()
        stack = [self.root]
        self.root.ino = ROOT_INODE
        self.inodes[ROOT_INODE] = self.root
        seen = {id(self.root)}
        while stack:
            node = stack.pop()
            assert node.children is not None
            for name in sorted(node.children, reverse=True):
                child = node.children[name]
                if id(child) in seen:  # a hard link: already numbered
                    continue
                seen.add(id(child))
                child.ino = len(self.inodes) + 1
                self.inodes[child.ino] = child
                if child.children is not None:
                    stack.append(child)


def merge(layers: Iterable[Sequence[LayerEntry]]) -> Tree:
    """Apply the layers bottom first; the tree's format entries (TOC, landmarks) are dropped."""
    tree = Tree()
    for entries in layers:
        tree.apply([e for e in entries if e.path not in FORMAT_ENTRIES])
    tree.number()
    return tree


def extents_for(node: Node, offset: int, length: int) -> list[Extent]:
    """The extents of ``node`` that overlap ``[offset, offset + length)``, in file order."""
    end = min(offset + length, node.size)
    xs = node.extents
    # Extents are in file order: start at the last one beginning at or before ``offset``
    # (a 434 MB library has 1,700 extents at 256 KiB chunks; a scan per 128 KiB read adds up).
    i = max(0, bisect.bisect_right(xs, offset, key=_file_offset) - 1)
    out = []
    for x in xs[i:]:
        if x.file_offset >= end:
            break
        if x.file_offset + x.size > offset:
            out.append(x)
    return out


def _file_offset(x: Extent) -> int:
    return x.file_offset
