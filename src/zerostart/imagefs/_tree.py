"""The merged view of an image's layers, made one name at a time as the kernel looks names up.

Theory of operation
-------------------
Each layer is a :class:`~zerostart.imagefs._layerindex.LayerIndex` (its own
files, sorted per folder). Nothing is merged at mount: a folder's
:class:`Node` holds its *stack*, the records of that folder in each layer
that shows it, top layer first; ``lookup(folder, name)`` searches the stack
top down with the OCI image spec's overlay rules (image-spec ``layer.md``,
"Whiteouts"):

* a whiteout record for ``name`` (``dir/.wh.NAME``) hides ``name`` in the
  layers below it; an ``OPAQUE`` folder (``dir/.wh..wh..opq``, or ``.wh.x``
  and ``x/`` in one layer) hides what the layers below had under it;
  whiteouts never hide entries of their own layer (settled when the layer
  index is written);
* the topmost non-folder wins; folders over folders merge, and the upper
  one's attributes win (a folder a layer only implies keeps the attributes of
  the one below it); a folder hides a file below it and vice versa;
* a hard link shares its target's inode; targets are resolved when the view is
  made (hard links are few), against the layers up to the link's own, and
  ``st_nlink`` counts the names.

A node's inode number is ``base[layer] + record`` of its top record (the root
is 1): the same on every mount of the same layers, with no numbering pass.
Nodes are kept once made; the kernel only ever names an inode it was given.
Nodes are made under a lock: the FUSE event loop looks names up while the
prefetch thread may look up a chunk profile's paths.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Iterable, Sequence

from zerostart.imagefs._index import (
    KINDS,
    ROOT_INODE,
    Extent,
    ImageIndexError,
    LayerEntry,
    Node,
    normalize,
)
from zerostart.imagefs._layerindex import (
    DIR,
    HARDLINK,
    IMPLICIT,
    OPAQUE,
    SYMLINK,
    WHITEOUT,
    LayerIndex,
)
from zerostart.imagefs._layerindex import (
    KINDS as CODES,
)
from zerostart.imagefs._layerwrite import encode

log = logging.getLogger(__name__)

Rec = tuple[int, int]  # (layer, record)
MAX_LINK_HOPS = 8


class Tree:
    """The image's files, over its layers' indexes (bottom layer first)."""

    def __init__(self, layers: Sequence[LayerIndex]) -> None:
        self.layers = list(layers)
        self.base: list[int] = []
        nxt = ROOT_INODE + 1
        for li in self.layers:
            self.base.append(nxt)
            nxt += li.entries
        self.entries = sum(li.entries for li in self.layers)
        self.total_bytes = sum(int(li.meta.get("total_bytes", 0)) for li in self.layers)
        self.nodes: dict[int, Node] = {}
        self._lock = threading.RLock()
        stack: list[Rec] = []
        for n in reversed(range(len(self.layers))):
            stack.append((n, 0))
            if self.layers[n].flags[0] & OPAQUE:
                break
        self.root = self._dir(tuple(stack), "", ino=ROOT_INODE)
        self._links: dict[Rec, Rec] = {}
        self._nlink: dict[Rec, int] = {}
        self._resolve_hardlinks()

    # -- hard links -------------------------------------------------------------

    def _resolve_hardlinks(self) -> None:
        for n, li in enumerate(self.layers):
            kinds = bytes(li.kind)
            i = kinds.find(HARDLINK)
            while i >= 0:
                self._links[(n, i)] = self._target((n, i), 0)
                i = kinds.find(HARDLINK, i + 1)
        for target in self._links.values():
            self._nlink[target] = self._nlink.get(target, 1) + 1

    def _target(self, rec: Rec, hops: int) -> Rec:
        n, i = rec
        link = self.layers[n].link_of(i).decode("utf-8", "surrogateescape")
        found = self._resolve(link, top=n)
        if found is None or hops > MAX_LINK_HOPS:
            raise ImageIndexError(f"hard link -> {link!r}: no such file earlier in the image")
        if self.layers[found[0]].kind[found[1]] == HARDLINK:
            return self._target(found, hops + 1)
        return found

    def _resolve(self, path: str, *, top: int) -> Rec | None:
        """The non-folder record at ``path`` in the layers up to ``top`` (no node made)."""
        stack = tuple((n, i) for n, i in self.root.stack if n <= top)
        parts = path.split("/")
        for k, part in enumerate(parts):
            dirs, found = self._merge(stack, part.encode("utf-8", "surrogateescape"))
            if k == len(parts) - 1:
                return found
            if not dirs:
                return None
            stack = tuple(dirs)
        return None

    # -- the merge, one name at a time ----------------------------------------------

    def _merge(self, stack: Iterable[Rec], name: bytes) -> tuple[list[Rec], Rec | None]:
        """The folder records (top first) or the one other record ``name`` has under ``stack``."""
        dirs: list[Rec] = []
        for n, d in stack:
            li = self.layers[n]
            j = li.find(d, name)
            if j is None:
                continue
            k = li.kind[j]
            if k == WHITEOUT:
                break
            if k == DIR:
                dirs.append((n, j))
                if li.flags[j] & OPAQUE:
                    break
            elif dirs:
                break  # a folder hides the file below it
            else:
                return dirs, (n, j)
        return dirs, None

    def lookup(self, parent: Node, name: bytes) -> Node | None:
        """``name`` in folder ``parent``, made on first use; None when absent (or not a folder)."""
        children = parent.children
        if children is None:
            return None
        hit = children.get(name)
        if hit is not None or parent.listed:
            return hit
        with self._lock:
            return self._lookup(parent, children, name)

    def _lookup(self, parent: Node, children: dict[bytes, Node], name: bytes) -> Node | None:
        hit = children.get(name)  # made by another thread while this one waited
        if hit is not None:
            return hit
        dirs, found = self._merge(parent.stack, name)
        path = (parent.path + "/" if parent.path else "") + name.decode("utf-8", "surrogateescape")
        if dirs:
            node = self._dir(tuple(dirs), path)
        elif found is not None:
            node = self._file(self._links.get(found, found), path)
        else:
            return None
        children[name] = node
        return node

    def listdir(self, parent: Node) -> dict[bytes, Node]:
        """Every child of folder ``parent`` (made now if not yet), as ``{name: node}``."""
        children = parent.children
        assert children is not None
        with self._lock:
            self._list(parent)
        return children

    def _list(self, parent: Node) -> None:
        if not parent.listed:
            seen: set[bytes] = set()
            for n, d in parent.stack:
                li = self.layers[n]
                for j in li.children(d):
                    name = li.names[j]
                    if name not in seen:
                        seen.add(name)
                        self.lookup(parent, name)
            parent.listed = True

    def find(self, path: str) -> Node | None:
        """The node at image path ``path`` (``a/b``; the root is ``""``), or None."""
        node: Node | None = self.root
        for part in path.split("/") if path else ():
            if node is None:
                return None
            node = self.lookup(node, part.encode("utf-8", "surrogateescape"))
        return node

    def node(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def extents_before(self, layer: int, end: int) -> list[Extent]:
        """Layer ``layer``'s chunks that end at or before blob offset ``end`` (its landmark
        region), files hidden by upper layers included; a walk of the layer's records."""
        li, reg = self.layers[layer], CODES.index("reg")
        out: list[Extent] = []
        chunk, c_end = li.chunk, li.c_end
        for i, path in li.walk():
            if li.kind[i] == reg and chunk[i] < chunk[i + 1] and c_end[chunk[i]] <= end:
                out.extend(x for x in li.extents_of(layer, i, path) if x.end <= end)
        return out

    # -- nodes --------------------------------------------------------------------

    def _dir(self, stack: tuple[Rec, ...], path: str, ino: int = 0) -> Node:
        top = stack[0] if stack else (0, 0)
        ino = ino or self.base[top[0]] + top[1]
        node = self.nodes.get(ino)
        if node is not None:
            return node
        attrs = next((r for r in stack if not self.layers[r[0]].flags[r[1]] & IMPLICIT), top)
        node = self._make(ino, attrs, path, stat.S_IFDIR)
        node.children, node.listed, node.stack = {}, False, stack
        node.nlink = 2
        return node

    def _file(self, rec: Rec, path: str) -> Node:
        n, i = rec
        ino = self.base[n] + i
        node = self.nodes.get(ino)
        if node is not None:
            return node
        li = self.layers[n]
        code = li.kind[i]
        node = self._make(ino, rec, path, KINDS[CODES[code]])
        node.children, node.listed, node.stack = None, False, ()
        node.nlink = self._nlink.get(rec, 1)
        if code == SYMLINK:
            node.link = li.link_of(i)
            node.size = len(node.link)
        elif code != CODES.index("reg"):
            node.size = 0
        node.extents = li.extents_of(n, i, path) if code == CODES.index("reg") else ()
        return node

    def _make(self, ino: int, rec: Rec, path: str, fmt: int) -> Node:
        n, i = rec
        li = self.layers[n] if self.layers else None
        node = Node.__new__(Node)
        node.ino, node.path = ino, path
        node.kind = CODES[li.kind[i]] if li is not None else "dir"
        node.mode = fmt | (li.mode[i] if li is not None else 0o755)
        node.uid = li.uid[i] if li is not None else 0
        node.gid = li.gid[i] if li is not None else 0
        node.mtime_ns = li.mtime[i] if li is not None else 0
        node.size = li.size[i] if li is not None else 0
        node.rdev = li.rdev[i] if li is not None else 0
        node.link = b""
        node.xattrs = li.xattrs_of(i) if li is not None else {}
        node.extents = ()
        self.nodes[ino] = node
        return node


def merge(layers: Iterable[Sequence[LayerEntry]]) -> Tree:
    """The view of layers given as entry lists (bottom first), their indexes built in memory."""
    indexes = []
    for n, entries in enumerate(layers):
        digest = f"memory:{n}"
        data = encode(entries, {"layer": digest, "bound": 1 << 62, "size": 0, "out_size": 0})
        indexes.append(LayerIndex(data, layer=digest))
    return Tree(indexes)


__all__ = ["Tree", "merge", "normalize"]
