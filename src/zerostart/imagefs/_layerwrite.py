"""Writing one layer's index (the format: :mod:`zerostart.imagefs._layerindex`).

:func:`encode` turns a layer's entries (our terms, already validated: from an
eStargz TOC, a zTOC, or a tar fetched whole) into the file a later mount maps:
the layer's tree settled in the layer's own terms (later tar entries replace
earlier ones; whiteouts and opaque markers become records and flags; folders
the layer only implies become records), laid out breadth first, one column at
a time. Runtime module (the mount daemon writes the index of a layer it had to
read from its TOC): standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

from zerostart.imagefs._index import (
    FORMAT_ENTRIES,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    ImageIndexError,
    LayerEntry,
    normalize,
)
from zerostart.imagefs._layerindex import (
    BODY_AT,
    COLUMNS,
    DIGEST_BYTES,
    DIR,
    HARDLINK,
    HEAD,
    HEAD_AT,
    IMPLICIT,
    KIND_CODE,
    MAGIC,
    OPAQUE,
    REG,
    SUM_AT,
    SYMLINK,
    VERSION,
    WHITEOUT,
    XATTR,
    layout,
)


class _Dir:
    __slots__ = ("children", "entry", "opaque", "whiteouts")

    def __init__(self, entry: LayerEntry | None) -> None:
        self.entry = entry
        self.children: dict[bytes, _Dir | LayerEntry] = {}
        self.whiteouts: set[bytes] = set()
        self.opaque = False


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _tree(entries: Sequence[LayerEntry]) -> _Dir:
    """The layer's entries as nested folders (a later entry replaces an earlier one, as in tar)."""
    root = _Dir(None)
    dirs: dict[str, _Dir] = {"": root}
    for e in entries:
        if e.path in FORMAT_ENTRIES:
            continue
        if not e.path:
            if e.kind == "dir":
                root.entry = e
            continue
        parent_path, _, base = e.path.rpartition("/")
        parent = dirs.get(parent_path)
        if parent is None:
            parent = root
            for part in parent_path.split("/"):
                nxt = parent.children.get(_b(part))
                if not isinstance(nxt, _Dir):
                    nxt = parent.children[_b(part)] = _Dir(None)
                parent = nxt
            dirs[parent_path] = parent
        if base == OPAQUE_MARKER:
            parent.opaque = True
            continue
        if base.startswith(WHITEOUT_PREFIX):
            parent.whiteouts.add(_b(base[len(WHITEOUT_PREFIX) :]))
            continue
        key = _b(base)
        old = parent.children.get(key)
        if e.kind == "dir":
            if isinstance(old, _Dir):
                old.entry = e
            else:
                parent.children[key] = dirs[e.path] = _Dir(e)
        else:
            parent.children[key] = e
            if isinstance(old, _Dir):
                dirs.clear()  # a folder became a file: forget what lay under it
                dirs[""] = root
    return root


def encode(
    entries: Sequence[LayerEntry],
    meta: Mapping[str, Any],
    checkpoints: Sequence[Any] = (),
) -> bytes:
    """The index file of one layer: its ``entries`` (our terms), ``meta`` (JSON-able facts).

    ``checkpoints``: a zTOC layer's :class:`zerostart.ztoc.Checkpoint` s.
    Raises ImageIndexError for chunks of mixed digest algorithms (the file
    holds one fixed-width digest per chunk).
    """
    root = _tree(entries)
    flags = (OPAQUE if root.opaque else 0) | (IMPLICIT if root.entry is None else 0)
    recs: list[tuple[bytes, int, int, LayerEntry | None]] = [(b"", DIR, flags, root.entry)]
    counts = [0]
    queue: deque[tuple[_Dir, int]] = deque([(root, 0)])
    while queue:  # breadth first: each folder's children are contiguous, in name order
        d, at = queue.popleft()
        start = len(recs)
        for name in sorted(set(d.children) | d.whiteouts):
            c = d.children.get(name)
            if c is None:
                recs.append((name, WHITEOUT, 0, None))
            elif isinstance(c, _Dir):
                opaque = c.opaque or name in d.whiteouts  # ".wh.x" and "x/" in one layer
                flags = (OPAQUE if opaque else 0) | (IMPLICIT if c.entry is None else 0)
                queue.append((c, len(recs)))
                recs.append((name, DIR, flags, c.entry))
            else:
                recs.append((name, KIND_CODE[c.kind], 0, c))
            counts.append(0)
        counts[at] = len(recs) - start
    return _pack(recs, counts, meta, checkpoints)


def _offsets(lengths: list[int]) -> array[int]:
    """``[0, l0, l0 + l1, ...]``: where each record's bytes start in a blob, and its end."""
    return array("I", accumulate(lengths, initial=0))


def _xattr_blob(xattrs: Mapping[str, bytes]) -> bytes:
    parts = []
    for key, value in xattrs.items():
        kb = _b(key)
        parts += [XATTR.pack(len(kb), len(value)), kb, value]
    return b"".join(parts)


def _pack(
    recs: list[tuple[bytes, int, int, LayerEntry | None]],
    counts: list[int],
    meta: Mapping[str, Any],
    checkpoints: Sequence[Any],
) -> bytes:
    col: dict[str, array[int]] = {name: array(code) for name, code, _ in COLUMNS if code != "B"}
    child = col["child"]
    child.append(1)
    for n in counts:
        child.append(child[-1] + n)
    # One column at a time (a comprehension each): 36,600 records in ~0.1 s, not a loop of appends.
    ents = [r[3] for r in recs]
    kind, flags = bytes(r[1] for r in recs), bytes(r[2] for r in recs)
    names = [r[0] for r in recs]
    default = {DIR: 0o755}
    col["mode"] = array("I", [e.mode & 0o7777 if e else default.get(k, 0) for _, k, _, e in recs])
    col["uid"] = array("I", [e.uid if e else 0 for e in ents])
    col["gid"] = array("I", [e.gid if e else 0 for e in ents])
    col["size"] = array("Q", [e.size if e and k == REG else 0 for _, k, _, e in recs])
    col["mtime"] = array("q", [e.mtime_ns if e else 0 for e in ents])
    col["rdev"] = array("Q", [(e.dev_major << 8) | e.dev_minor if e else 0 for e in ents])
    link_texts = [b""] * len(recs)
    for i, (_, k, _, e) in enumerate(recs):
        if e is not None and k == SYMLINK:
            link_texts[i] = _b(e.link)
        elif e is not None and k == HARDLINK:
            link_texts[i] = _b(normalize(e.link))
    links = b"".join(link_texts)
    col["link"] = _offsets([len(t) for t in link_texts])
    xattr_blobs = [_xattr_blob(e.xattrs) if e is not None and e.xattrs else b"" for e in ents]
    xattrs = b"".join(xattr_blobs)
    col["xattr"] = _offsets([len(x) for x in xattr_blobs])
    extents = [e.extents if e is not None and k == REG else () for _, k, _, e in recs]
    col["chunk"] = _offsets([len(xs) for xs in extents])
    every = [x for xs in extents for x in xs]
    col["c_fo"] = array("Q", [x.file_offset for x in every])
    col["c_size"] = array("Q", [x.size for x in every])
    col["c_start"] = array("Q", [x.start for x in every])
    col["c_end"] = array("Q", [x.end for x in every])
    refs = [x.entry for x in every if x.entry is not None]
    col["c_inner"] = array("Q", [x.entry.inner_offset if x.entry is not None else 0 for x in every])
    if len(refs) not in (0, len(every)):
        raise ImageIndexError("some chunks of the layer have a digest and some do not")
    algo = refs[0].chunk_digest.partition(":")[0] if refs else ""
    prefix = algo + ":"
    width = DIGEST_BYTES.get(algo, -1)
    try:
        digests = bytes.fromhex("".join(r.chunk_digest.removeprefix(prefix) for r in refs))
    except ValueError:
        digests = b""
    if refs and (
        len(digests) != width * len(refs)
        or not all(r.chunk_digest.startswith(prefix) for r in refs)
    ):
        raise ImageIndexError(f"chunk digests of mixed or unknown kinds ({algo!r})")
    span_sha, windows = bytearray(), bytearray()
    span_flags = bytearray()
    for cp in checkpoints:
        col["s_bits"].append(cp.in_bits)
        col["s_out"].append(cp.out_offset)
        span_flags.append(1 if cp.member_start else 0)
        span_sha += cp.span_digest
        col["s_win"].append(len(windows))
        windows += cp.window
    col["s_win"].append(len(windows))
    doc = dict(meta) | {
        "v": VERSION,
        "byteorder": sys.byteorder,
        "digest_algo": algo,
        "total_bytes": sum(col["size"]),
    }
    meta_bytes = json.dumps(doc, sort_keys=True).encode()
    name_blob = b"\0".join(names) + b"\0"
    counts_n = {
        "E": len(recs),
        "C": len(col["c_fo"]),
        "S": len(checkpoints),
        "W": DIGEST_BYTES[algo] if algo else 0,
        "M": len(meta_bytes),
        "NB": len(name_blob),
        "LB": len(links),
        "XB": len(xattrs),
        "WB": len(windows),
    }
    sections, checked_end, total = layout(counts_n)
    out = bytearray(total)
    out[: len(MAGIC)] = MAGIC
    HEAD.pack_into(
        out, HEAD_AT, *(counts_n[k] for k in ("E", "C", "S", "W", "M", "NB", "LB", "XB", "WB"))
    )
    out[BODY_AT : BODY_AT + len(meta_bytes)] = meta_bytes
    blobs: dict[str, bytes | bytearray] = {
        "kind": kind,
        "flags": flags,
        "digests": digests,
        "s_flags": span_flags,
        "s_sha": span_sha,
        "name_blob": name_blob,
        "links": links,
        "xattrs": xattrs,
        "windows": windows,
    }
    for section, (off, size, _code) in sections.items():
        data = blobs[section] if section in blobs else col[section].tobytes()
        assert len(data) == size, section
        out[off : off + size] = data
    out[SUM_AT:HEAD_AT] = hashlib.sha256(memoryview(out)[HEAD_AT:checked_end]).digest()
    return bytes(out)
