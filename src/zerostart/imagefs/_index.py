"""What an image's files are, in our terms: layer entries, chunk extents, inodes.

Each layer arrives as a list of :class:`LayerEntry` (from its eStargz table of
contents, its zTOC, or from scanning a plain layer that had to be fetched
whole); imagefs/_layerindex.py keeps each layer's entries as a compact binary
index and imagefs/_tree.py merges the layers, name by name, into
:class:`Node` s as they are looked up. A regular file's bytes are described by
:class:`Extent` s: which layer, which chunk, and where that chunk sits in the
file.
"""

from __future__ import annotations

import bisect
import stat
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
    """One inode of the merged image, made when first looked up (imagefs/_tree.py).

    ``children``: for a folder, the children looked up so far (all of them once
    ``listed``); None for anything else. ``stack``: a folder's records, top layer
    first, as ``(layer, record)`` (what a lookup in it searches). ``path``: the
    first name it was found under (no leading ``/``).
    """

    __slots__ = (
        "children",
        "extents",
        "gid",
        "ino",
        "kind",
        "link",
        "listed",
        "mode",
        "mtime_ns",
        "nlink",
        "path",
        "rdev",
        "size",
        "stack",
        "uid",
        "xattrs",
    )

    ino: int
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    link: bytes
    rdev: int
    xattrs: dict[str, bytes]
    extents: tuple[Extent, ...]
    nlink: int
    children: dict[bytes, Node] | None
    listed: bool
    path: str
    stack: tuple[tuple[int, int], ...]


def normalize(path: str) -> str:
    """``./a//b/`` -> ``a/b``; the root is ``""``. Refuses ``..`` and NUL (checked again here).

    A leading ``/`` names the image's root, as in tar (:func:`zerostart.paths.relative_name`).
    """
    try:
        return relative_name(path, absolute="strip")
    except PathEscapeError as exc:
        raise ImageIndexError(f"entry {exc}; refused") from exc


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
