"""One layer's index as a compact binary file: built once from its TOC, then mapped by every mount.

Theory of operation
-------------------
A layer's files are a tree. :func:`encode` lays that tree out breadth first,
each folder's children together and sorted by name, so that

* the children of record ``i`` are the records ``[child[i], child[i + 1])``
  (one offset array, as in a compressed sparse row matrix), and a lookup is a
  binary search over them (``bisect`` over the name list, in C);
* every record's attributes are one column each (``array``-typed, read as a
  ``memoryview`` cast, never unpacked record by record);
* a regular file's chunks are ``[chunk[i], chunk[i + 1])`` of the chunk columns.

Whiteouts are kept in the layer's own terms (a ``whiteout`` record names what
it hides; a folder that hides what lies below it is flagged ``OPAQUE``);
folders the layer only implies (``a/b/c`` without ``a/b``) are records flagged
``IMPLICIT``, so every path of the merged image has a record in some layer:
inode numbers are ``layer base + record``, the same on every mount. The merge
itself happens per name, at lookup (:mod:`zerostart.imagefs._tree`). The
writer is :mod:`zerostart.imagefs._layerwrite`.

File layout (little-endian, every section 8-byte aligned)::

    MAGIC (8) | sha256 of [40, checked_end) (32) | HEAD <IIIIIQQQQ>:
        entries E, chunks C, spans S, digest bytes W, meta bytes M,
        names NB, links LB, xattrs XB, windows WB
    meta (JSON: layer digest, source and its digest, sizes, note)
    kind u8[E] | flags u8[E] | mode u32[E] | uid u32[E] | gid u32[E]
    size u64[E] | mtime_ns i64[E] | rdev u64[E]
    child u32[E+1] | chunk u32[E+1] | link u32[E+1] | xattr u32[E+1]
    chunk file_offset, size, start, end, inner_offset: u64[C] each | digests W*C
    span in_bits u64[S] | out_offset u64[S] | flags u8[S] | sha256 32*S | window u64[S+1]
    names (NUL after each, the root's empty) | links | xattrs (<HI key value)*
    -- checked_end --
    windows (a zTOC's 32 KiB inflate windows: each span is verified by its own
             sha256 after inflating, so a damaged window is caught on use)

Trust: the checksum catches a damaged or cut-short file. Since a cache folder
may be written by something other than this code, :class:`LayerIndex` also
refuses, before any of it is used and at C speed (bytes searches, one sort
per offset column, ``max`` over the chunk columns): another layer's or another TOC's index, names that
hold ``/`` or are ``.``/``..`` (no absolute or climbing path can be formed),
child/chunk/blob offsets out of order or out of bounds, chunks past the end
of the layer, relative symlinks that climb above the image root and unclean
hard-link targets. A refused file is removed and the layer indexed again from
its TOC (imagefs/_indexcache.py). Runtime module: standard library only.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from zerostart.estargz import ChunkRef, resolve_in_root
from zerostart.imagefs._index import (
    Extent,
    ImageIndexError,
)
from zerostart.paths import PathEscapeError, relative_name
from zerostart.ztoc import Checkpoint

MAGIC = b"ZSLIX01\n"
VERSION = 1
HEAD = struct.Struct("<IIIIIQQQQ")
SUM_AT = len(MAGIC)
HEAD_AT = SUM_AT + 32
BODY_AT = (HEAD_AT + HEAD.size + 7) & ~7
KINDS = ("dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "whiteout")
DIR, REG, SYMLINK, HARDLINK, WHITEOUT = 0, 1, 2, 3, 7
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
OPAQUE, IMPLICIT = 1, 2  # flags
WINDOW_BYTES = 32 * 1024
XATTR = struct.Struct("<HI")
DIGEST_BYTES = {"sha256": 32, "sha384": 48, "sha512": 64}

# (name, typecode, count) per section, counts as functions of the header's numbers.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("kind", "B", "E"),
    ("flags", "B", "E"),
    ("mode", "I", "E"),
    ("uid", "I", "E"),
    ("gid", "I", "E"),
    ("size", "Q", "E"),
    ("mtime", "q", "E"),
    ("rdev", "Q", "E"),
    ("child", "I", "E1"),
    ("chunk", "I", "E1"),
    ("link", "I", "E1"),
    ("xattr", "I", "E1"),
    ("c_fo", "Q", "C"),
    ("c_size", "Q", "C"),
    ("c_start", "Q", "C"),
    ("c_end", "Q", "C"),
    ("c_inner", "Q", "C"),
    ("digests", "B", "WC"),
    ("s_bits", "Q", "S"),
    ("s_out", "Q", "S"),
    ("s_flags", "B", "S"),
    ("s_sha", "B", "S32"),
    ("s_win", "Q", "S1"),
    ("name_blob", "B", "NB"),
    ("links", "B", "LB"),
    ("xattrs", "B", "XB"),
)
_ITEM = {"B": 1, "I": 4, "Q": 8, "q": 8}


def layout(n: Mapping[str, int]) -> tuple[dict[str, tuple[int, int, str]], int, int]:
    """Section -> (offset, bytes, typecode); the checked end; the file's size."""
    counts = {
        "E": n["E"],
        "E1": n["E"] + 1,
        "C": n["C"],
        "WC": n["W"] * n["C"],
        "S": n["S"],
        "S32": 32 * n["S"],
        "S1": n["S"] + 1,
        "NB": n["NB"],
        "LB": n["LB"],
        "XB": n["XB"],
    }
    pos = (BODY_AT + n["M"] + 7) & ~7
    out = {}
    for name, code, count in COLUMNS:
        size = counts[count] * _ITEM[code]
        out[name] = (pos, size, code)
        pos = (pos + size + 7) & ~7
    checked_end = pos
    out["windows"] = (pos, n["WB"], "B")
    return out, checked_end, pos + n["WB"]


def _monotone(xs: Any, first: int, last: int) -> bool:
    """``xs`` starts at ``first``, ends at ``last`` and never decreases (sorting a sorted list
    is one pass in C: 2 ms for 36,600 offsets, half of a ``map`` over the pairs)."""
    values = xs.tolist()
    return bool(values) and values[0] == first and values[-1] == last and values == sorted(values)


class LayerIndex:
    """One layer's index, checked (see the module docstring), read in place from ``buf``.

    ``layer``: the layer digest the caller wants; ``expect``: meta fields that
    must match (the TOC digest the manifest vouches for, the source). Raises
    ImageIndexError naming the first problem. Record 0 is the layer's root.
    """

    def __init__(self, buf: Any, *, layer: str, expect: Mapping[str, Any] | None = None) -> None:
        mv = memoryview(buf)
        if len(mv) < BODY_AT or bytes(mv[: len(MAGIC)]) != MAGIC:
            raise ImageIndexError("not a layer index of this version")
        head = HEAD.unpack_from(mv, HEAD_AT)
        n = dict(zip(("E", "C", "S", "W", "M", "NB", "LB", "XB", "WB"), head, strict=True))
        sections, checked_end, total = layout(n)
        if total != len(mv):
            raise ImageIndexError(f"{len(mv)} bytes where the header says {total}: cut short?")
        if hashlib.sha256(mv[HEAD_AT:checked_end]).digest() != bytes(mv[SUM_AT:HEAD_AT]):
            raise ImageIndexError("checksum mismatch")
        try:
            meta = json.loads(bytes(mv[BODY_AT : BODY_AT + n["M"]]))
        except ValueError as exc:
            raise ImageIndexError(f"meta is not JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("v") != VERSION:
            raise ImageIndexError("meta of another version")
        if meta.get("byteorder") != sys.byteorder:
            raise ImageIndexError("written on a machine of the other byte order")
        if meta.get("layer") != layer:
            raise ImageIndexError(f"the index of layer {meta.get('layer')!r}, not {layer}")
        for key, want in (expect or {}).items():
            if meta.get(key) != want:
                raise ImageIndexError(f"{key} is {meta.get(key)!r}, the image says {want!r}")
        self.meta: dict[str, Any] = meta
        self.entries, self.n_chunks = n["E"], n["C"]
        self.digest_width = n["W"]
        for section, (off, size, code) in sections.items():
            view = mv[off : off + size]
            setattr(self, section, view.cast(code) if code != "B" else view)  # type: ignore[call-overload]
        self._check(n)

    # Columns (memoryviews), set from COLUMNS in __init__.
    kind: Any
    flags: Any
    mode: Any
    uid: Any
    gid: Any
    size: Any
    mtime: Any
    rdev: Any
    child: Any
    chunk: Any
    link: Any
    xattr: Any
    c_fo: Any
    c_size: Any
    c_start: Any
    c_end: Any
    c_inner: Any
    digests: Any
    s_bits: Any
    s_out: Any
    s_flags: Any
    s_sha: Any
    s_win: Any
    name_blob: Any
    links: Any
    xattrs: Any
    windows: Any

    def _check(self, n: Mapping[str, int]) -> None:
        e = n["E"]
        if e < 1 or self.kind[0] != DIR or max(self.kind) >= len(KINDS):
            raise ImageIndexError("a record of no known kind, or a root that is no folder")
        if not _monotone(self.child, 1, e):
            raise ImageIndexError("folder children out of order: not a tree")
        self._ends = self._depths()
        if not _monotone(self.chunk, 0, n["C"]):
            raise ImageIndexError("chunk offsets out of order or out of bounds")
        for col, last in ((self.link, n["LB"]), (self.xattr, n["XB"])):
            if col[0] != 0 or col[e] != last:  # a bad offset between only mis-slices its own
                raise ImageIndexError("record offsets out of bounds")  # record (checked on use)
        blob = bytes(self.name_blob)
        parts = blob.split(b"\0")
        if blob[:1] != b"\0" or len(parts) != e + 1 or parts[-1] != b"":
            raise ImageIndexError("the name table does not hold one name per record")
        if b"/" in blob:
            raise ImageIndexError("a name holds '/' (an absolute or multi-part name); refused")
        if b"\0\0" in blob[1:] or b"\0.\0" in blob or b"\0..\0" in blob:
            raise ImageIndexError("an empty, '.' or '..' name; refused")
        self.names: list[bytes] = parts[:-1]
        if self.n_chunks:
            bound = int(self.meta.get("bound", -1))
            if max(self.c_end) > bound or max(self.c_start) > bound:
                raise ImageIndexError(f"a chunk lies outside the layer's {bound} bytes; refused")
        if self.digest_width != DIGEST_BYTES.get(self.meta.get("digest_algo", ""), 0):
            raise ImageIndexError("digest width does not match its algorithm")
        self._check_links()
        self._check_spans(n)

    def _depths(self) -> list[int]:
        """Where each depth of the breadth-first order ends (record i is at bisect_right(ends, i)).

        With ``child`` non-decreasing from 1 to E, the children of records
        ``[s, e)`` are ``[child[s], child[e])``: depth k+1 ends at ``child[end of
        depth k]``. Every record is reached, once, exactly when these ends climb
        to E; a file whose ends stall there is no tree (a loop no lookup reaches,
        or records that no folder holds) and is refused.
        """
        ends, child = [1], self.child
        while ends[-1] < self.entries:
            nxt = child[ends[-1]]
            if nxt <= ends[-1]:
                raise ImageIndexError("folder children out of order: not a tree")
            ends.append(nxt)
        return ends

    def _check_links(self) -> None:
        kinds = bytes(self.kind)
        ends = self._ends
        i = kinds.find(SYMLINK)
        while i >= 0:
            target = self.link_of(i)
            if not target.startswith(b"/") and b".." in target:
                parent = "d/" * (bisect.bisect_right(ends, i) - 1)
                if resolve_in_root(parent + "l", target.decode("utf-8", "surrogateescape")) is None:
                    raise ImageIndexError(f"symlink -> {target!r} climbs above the image root")
            i = kinds.find(SYMLINK, i + 1)
        i = kinds.find(HARDLINK)
        while i >= 0:
            name = self.link_of(i).decode("utf-8", "surrogateescape")
            try:
                clean = relative_name(name)
            except PathEscapeError as exc:
                raise ImageIndexError(f"hard link to {exc}; refused") from exc
            if not name or clean != name:
                raise ImageIndexError(f"hard link to {name!r}: not a clean name; refused")
            i = kinds.find(HARDLINK, i + 1)

    def _check_spans(self, n: Mapping[str, int]) -> None:
        s = n["S"]
        if not s:
            return
        # A window cut wrong fails its span's sha256 on use: only its size is checked here.
        wins = self.s_win
        out_size = int(self.meta.get("out_size", -1))
        blob_size = int(self.meta.get("size", -1))
        if (
            (self.s_bits[0], self.s_out[0], self.s_flags[0] & 1) != (0, 0, 1)
            or any(b & 7 for b in self.s_bits)
            or not all(map(operator.lt, self.s_bits[:-1], self.s_bits[1:]))
            or not _monotone(self.s_out, 0, self.s_out[-1])
            or self.s_bits[-1] // 8 >= blob_size
            or self.s_out[-1] > out_size
            or any(wins[i + 1] - wins[i] > WINDOW_BYTES for i in range(s))
        ):
            raise ImageIndexError("span checkpoints out of order or out of bounds")

    # -- reading --------------------------------------------------------------

    def find(self, d: int, name: bytes) -> int | None:
        """The record named ``name`` among folder record ``d``'s children, or None."""
        lo, hi = self.child[d], self.child[d + 1]
        i = bisect.bisect_left(self.names, name, lo, hi)
        return i if i < hi and self.names[i] == name else None

    def children(self, d: int) -> range:
        return range(self.child[d], self.child[d + 1])

    def link_of(self, i: int) -> bytes:
        return bytes(self.links[self.link[i] : self.link[i + 1]])

    def xattrs_of(self, i: int) -> dict[str, bytes]:
        pos, end = self.xattr[i], self.xattr[i + 1]
        out: dict[str, bytes] = {}
        blob = self.xattrs
        while pos < end:
            if pos + XATTR.size > end:
                raise ImageIndexError(f"record {i}: xattrs cut short")
            klen, vlen = XATTR.unpack_from(blob, pos)
            pos += XATTR.size
            if pos + klen + vlen > end:
                raise ImageIndexError(f"record {i}: xattrs cut short")
            key = bytes(blob[pos : pos + klen]).decode("utf-8", "surrogateescape")
            out[key] = bytes(blob[pos + klen : pos + klen + vlen])
            pos += klen + vlen
        return out

    def extents_of(self, layer: int, i: int, path: str) -> tuple[Extent, ...]:
        """Record ``i``'s chunks as extents of layer number ``layer`` (``path``: names the chunks)."""
        lo, hi = self.chunk[i], self.chunk[i + 1]
        if lo == hi:
            return ()
        fo, sz, st, en = self.c_fo, self.c_size, self.c_start, self.c_end
        w = self.digest_width
        if not w:
            return tuple(Extent(layer, fo[c], sz[c], st[c], en[c]) for c in range(lo, hi))
        algo, inner, digests = self.meta["digest_algo"] + ":", self.c_inner, self.digests
        return tuple(
            Extent(
                layer,
                fo[c],
                sz[c],
                st[c],
                en[c],
                ChunkRef(
                    path,
                    st[c],
                    inner[c],
                    fo[c],
                    sz[c],
                    algo + bytes(digests[c * w : (c + 1) * w]).hex(),
                    en[c],
                ),
            )
            for c in range(lo, hi)
        )

    def walk(self) -> Iterator[tuple[int, str]]:
        """Every record's index and path, breadth first (the root is ``(0, "")``)."""
        paths = [""]
        yield 0, ""
        child, names = self.child, self.names
        for i in range(self.entries):
            lo, hi = child[i], child[i + 1]
            if lo == hi:
                continue
            while len(paths) <= i:
                paths.append("")
            prefix = paths[i] + "/" if i else ""
            for j in range(lo, hi):
                p = prefix + names[j].decode("utf-8", "surrogateescape")
                while len(paths) <= j:
                    paths.append("")
                paths[j] = p
                yield j, p

    def checkpoints(self) -> tuple[Checkpoint, ...]:
        """A zTOC layer's checkpoints (windows copied out of the file)."""
        wins, sha = self.s_win, self.s_sha
        return tuple(
            Checkpoint(
                self.s_bits[i],
                self.s_out[i],
                bytes(self.windows[wins[i] : wins[i + 1]]),
                bool(self.s_flags[i] & 1),
                bytes(sha[32 * i : 32 * i + 32]),
            )
            for i in range(len(self.s_bits))
        )
