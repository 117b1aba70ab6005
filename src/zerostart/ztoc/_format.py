"""The zTOC: a layer's tar entries and its gzip checkpoints, encoded, decoded and validated.

Binary format (version 1), all integers little-endian::

    MAGIC (8 bytes)  zlib-compressed body

    body:  header   <IQQQII   version, span_bytes, blob_size, out_size, n_checkpoints, n_entries
           checkpoint * n     <QQB H 32s   in_bits, out_offset, flags, window_len, span sha256
                              + window_len bytes of window
           entry * n          <BIIIqQQII HHH  kind, mode, uid, gid, mtime_s, size, offset,
                              dev_major, dev_minor, name_len, link_len, n_xattrs
                              + name + link + n_xattrs * (<HI key_len, value_len, key, value)

``in_bits`` is where inflation resumes, in bits from the start of the blob
(zlib's ``zran.c``: ``8 * bytes consumed - unused bits of the last byte``;
version 1 takes checkpoints on byte boundaries only, see ``_build.py``);
``out_offset`` the uncompressed offset there; the window is the 32 KiB of
uncompressed data before it (deflate's back-references reach that far,
RFC 1951 section 3.2.5). Flag 1 marks the start of a gzip member (byte
aligned, no window: a header follows). The sha256 is that of the span's
uncompressed bytes, ``[out_offset, next checkpoint's out_offset)`` (or the end
of the stream), so every span read by range is verified before use; the
index itself is verified by its descriptor digest in the referrer manifest.

Everything in a zTOC fetched from a registry is untrusted:
:func:`decode` refuses names with ``..``, absolute names, NUL bytes, symlinks
whose relative target climbs above the image root, hard links to unclean
names, offsets past the blob or the stream, checkpoints out of order, and
counts or sizes past the limits below, before any of it is used.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from zerostart.errors import ZerostartError

MAGIC = b"ZSZTOC1\n"
VERSION = 1
WINDOW_BYTES = 32 * 1024  # deflate's history (RFC 1951, 3.2.5)
# 1 MiB, not SOCI's 4 MiB, by measurement (docs/lazy-images.md, bench/results/zran_index.json):
# a python:slim-like image's start fetched 71 % of the layer at 1 MiB, 86 % at 4 MiB; the zTOC,
# fetched whole at mount, is 1.2 % of the layer at 1 MiB (2.3 % at 512 KiB, 4.3 % at 256 KiB).
DEFAULT_SPAN_BYTES = 1024 * 1024
MIN_SPAN_BYTES = 64 * 1024
# Limits on what a zTOC may declare: a layer of 10^6 files, 2^20 spans (4 TiB of
# compressed data at 4 MiB), a body of 512 MiB. A hostile count fails here, before
# any allocation.
MAX_ENTRIES = 1 << 20
MAX_CHECKPOINTS = 1 << 20
MAX_BODY_BYTES = 512 * 1024 * 1024
MAX_NAME_BYTES = 4096
MAX_XATTRS = 64
MAX_XATTR_BYTES = 64 * 1024
FLAG_MEMBER_START = 1
KINDS = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")

_HEADER = struct.Struct("<IQQQII")
_CHECKPOINT = struct.Struct("<QQBH32s")
_ENTRY = struct.Struct("<BIIIqQQIIHHH")
_XATTR = struct.Struct("<HI")


class ZtocError(ZerostartError):
    """A zTOC is malformed, hostile, or does not match its layer."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where inflation can resume: bit offset in the blob, uncompressed offset, 32 KiB window."""

    in_bits: int
    out_offset: int
    window: bytes
    member_start: bool
    span_digest: bytes  # sha256 of the span's uncompressed bytes (32 bytes)

    @property
    def first_byte(self) -> int:
        """The first blob byte a resume needs (the partly consumed one when not aligned)."""
        return self.in_bits // 8


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry: ``offset`` is where its data starts in the uncompressed tar stream."""

    name: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    offset: int = 0
    link: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Ztoc:
    """A layer's index: ``blob_size`` compressed bytes inflate to ``out_size`` bytes of tar."""

    span_bytes: int
    blob_size: int
    out_size: int
    checkpoints: tuple[Checkpoint, ...]
    entries: tuple[Entry, ...]

    def span_end(self, i: int) -> int:
        """Uncompressed end of span ``i``."""
        cps = self.checkpoints
        return cps[i + 1].out_offset if i + 1 < len(cps) else self.out_size

    def span_range(self, i: int) -> tuple[int, int]:
        """The blob bytes ``[start, end)`` that span ``i`` inflates from."""
        cps = self.checkpoints
        end = (cps[i + 1].in_bits + 7) // 8 if i + 1 < len(cps) else self.blob_size
        return cps[i].first_byte, end


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode(z: Ztoc) -> bytes:
    """The zTOC's bytes (deterministic: the same index gives the same digest)."""
    parts = [
        _HEADER.pack(
            VERSION, z.span_bytes, z.blob_size, z.out_size, len(z.checkpoints), len(z.entries)
        )
    ]
    for c in z.checkpoints:
        flags = FLAG_MEMBER_START if c.member_start else 0
        parts.append(_CHECKPOINT.pack(c.in_bits, c.out_offset, flags, len(c.window), c.span_digest))
        parts.append(c.window)
    for e in z.entries:
        name, link = _b(e.name), _b(e.link)
        parts.append(
            _ENTRY.pack(
                KINDS.index(e.kind),
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.size,
                e.offset,
                e.dev_major,
                e.dev_minor,
                len(name),
                len(link),
                len(e.xattrs),
            )
        )
        parts += [name, link]
        for key, value in e.xattrs:
            k = _b(key)
            parts += [_XATTR.pack(len(k), len(value)), k, value]
    return MAGIC + zlib.compress(b"".join(parts), 6)


def _body(data: bytes) -> bytes:
    if not data.startswith(MAGIC):
        raise ZtocError("not a zTOC of version 1 (bad magic)")
    d = zlib.decompressobj()
    try:
        body = d.decompress(data[len(MAGIC) :], MAX_BODY_BYTES)
    except zlib.error as exc:
        raise ZtocError(f"zTOC body is not zlib data: {exc}") from exc
    if d.unconsumed_tail:
        raise ZtocError(f"zTOC body inflates past {MAX_BODY_BYTES} bytes; refused")
    if not d.eof or d.unused_data:
        raise ZtocError("zTOC body is cut short or has trailing bytes")
    return body


def decode(data: bytes, *, blob_size: int | None = None) -> Ztoc:
    """Parse and validate a zTOC (untrusted bytes); ``blob_size``: the layer descriptor's size.

    Raises :class:`ZtocError` naming the first problem (see the module docstring).
    """
    body = _body(data)
    try:
        return _parse(body, blob_size)
    except struct.error as exc:
        raise ZtocError(f"zTOC is cut short: {exc}") from exc


def _parse(body: bytes, blob_size: int | None) -> Ztoc:
    version, span, size, out_size, n_cp, n_ent = _HEADER.unpack_from(body, 0)
    pos = _HEADER.size
    if version != VERSION:
        raise ZtocError(f"zTOC version {version}; this zerostart reads {VERSION}")
    if blob_size is not None and size != blob_size:
        raise ZtocError(f"zTOC is for a blob of {size} bytes, the layer has {blob_size}")
    if n_cp > MAX_CHECKPOINTS or n_ent > MAX_ENTRIES:
        raise ZtocError(f"zTOC declares {n_cp} checkpoints and {n_ent} entries; over the limits")
    # Each record is at least its fixed part: a count the body cannot hold is refused now.
    if n_cp * _CHECKPOINT.size + n_ent * _ENTRY.size > len(body) - pos:
        raise ZtocError(f"zTOC declares {n_cp} checkpoints, {n_ent} entries: more than it holds")
    if n_cp == 0:
        raise ZtocError("zTOC has no checkpoint")
    checkpoints: list[Checkpoint] = []
    for i in range(n_cp):
        in_bits, out_off, flags, wlen, digest = _CHECKPOINT.unpack_from(body, pos)
        pos += _CHECKPOINT.size
        window = body[pos : pos + wlen]
        pos += wlen
        if len(window) != wlen or wlen > WINDOW_BYTES:
            raise ZtocError(f"checkpoint {i}: window of {wlen} bytes")
        start = bool(flags & FLAG_MEMBER_START)
        if in_bits % 8:
            raise ZtocError(f"checkpoint {i}: not on a byte boundary (version 1 needs it)")
        if start and wlen:
            raise ZtocError(f"checkpoint {i}: a member start has no window")
        if in_bits // 8 >= size or out_off > out_size:
            raise ZtocError(f"checkpoint {i}: offset past the blob or the stream")
        if checkpoints and (
            in_bits <= checkpoints[-1].in_bits or out_off < checkpoints[-1].out_offset
        ):
            raise ZtocError(f"checkpoint {i}: out of order")
        if i == 0 and (in_bits, out_off, start) != (0, 0, True):
            raise ZtocError("checkpoint 0 must be the first member's start")
        checkpoints.append(Checkpoint(in_bits, out_off, window, start, digest))
    entries = []
    for i in range(n_ent):
        fields = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        kind_i, mode, uid, gid, mtime, esize, offset, major, minor, nlen, llen, nx = fields
        if kind_i >= len(KINDS) or nlen > MAX_NAME_BYTES or llen > MAX_NAME_BYTES:
            raise ZtocError(f"entry {i}: bad kind or name length")
        name = body[pos : pos + nlen].decode("utf-8", "surrogateescape")
        pos += nlen
        link = body[pos : pos + llen].decode("utf-8", "surrogateescape")
        pos += llen
        if nx > MAX_XATTRS:
            raise ZtocError(f"entry {name!r}: {nx} xattrs; over the limit")
        xattrs = []
        for _ in range(nx):
            klen, vlen = _XATTR.unpack_from(body, pos)
            pos += _XATTR.size
            if klen > MAX_NAME_BYTES or vlen > MAX_XATTR_BYTES:
                raise ZtocError(f"entry {name!r}: xattr too large")
            key = body[pos : pos + klen].decode("utf-8", "surrogateescape")
            value = body[pos + klen : pos + klen + vlen]
            pos += klen + vlen
            xattrs.append((key, value))
        if pos > len(body):
            raise ZtocError(f"zTOC is cut short in entry {i}")
        kind = KINDS[kind_i]
        entry = Entry(
            name, kind, mode & 0o7777, uid, gid, mtime, esize, offset, link, major, minor,
            tuple(xattrs),
        )  # fmt: skip
        check_entry(entry, out_size)
        entries.append(entry)
    if pos != len(body):
        raise ZtocError(f"zTOC has {len(body) - pos} bytes after its last entry")
    return Ztoc(span, size, out_size, tuple(checkpoints), tuple(entries))


def check_entry(e: Entry, out_size: int) -> None:
    """Refuse an entry a mount must not show (names, links, offsets); see the module docstring."""
    from zerostart.estargz import resolve_in_root
    from zerostart.paths import PathEscapeError, relative_name

    try:
        clean = relative_name(e.name)  # absolute names are refused, not stripped
        if e.kind == "hardlink" and (not e.link or relative_name(e.link) != e.link):
            raise PathEscapeError(e.link, "is not a clean relative name")
    except PathEscapeError as exc:
        raise ZtocError(f"entry {e.name!r}: {exc}; refused") from exc
    if clean != e.name or not clean:
        raise ZtocError(f"entry {e.name!r}: not a clean relative name; refused")
    relative = e.kind == "symlink" and not e.link.startswith("/")
    if relative and resolve_in_root(e.name, e.link) is None:
        raise ZtocError(f"symlink {e.name!r} -> {e.link!r} climbs above the image root")
    if e.kind == "reg" and (e.offset < 0 or e.size < 0 or e.offset + e.size > out_size):
        raise ZtocError(f"entry {e.name!r}: data {e.offset}+{e.size} past the stream's end")
