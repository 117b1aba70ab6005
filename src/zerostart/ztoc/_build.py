"""Building a zTOC from a gzip tar layer: one pass of zlib with ``Z_BLOCK``, via ctypes.

Theory of operation
-------------------
A deflate stream can only be entered where a block begins, and only with the
32 KiB of output before that point (the window back-references may reach).
zlib's ``inflate(strm, Z_BLOCK)`` returns at each block boundary, with
``strm.data_type`` telling whether it is at one (bit 128), in the last block
(bit 64) and how many bits of the last input byte are still unused (bits 0-2)
(zlib.h, and Mark Adler's ``examples/zran.c``, which this follows). Python's
:mod:`zlib` does not expose ``Z_BLOCK``, so this module calls the system's
``libz.so.1`` through ctypes; it runs at index build time only, never in a
mount.

The layer is inflated once. At a block boundary that falls on a byte
boundary, where at least ``span_bytes`` of compressed input went by since the
last checkpoint, a checkpoint is taken: ``(bit offset, uncompressed offset,
last 32 KiB of output)``. Why byte boundaries only: a reader can then resume
with Python's own zlib (a raw stream with the window as its dictionary), no
``inflatePrime``; and shifting the bits of an unaligned span into alignment
is *wrong*, because a stored block pads to the byte boundaries of the
original stream (RFC 1951, 3.2.4), which a shift moves. A block ends on a
byte boundary about one time in eight, and always after a stored block (a
flush: pgzip, which umoci uses, flushes every 1 MB block), so a span is at
most a few blocks longer than asked (docs/lazy-images.md has the numbers). Each gzip member
start is a checkpoint too (a concatenation of members is still one layer), so
a span never crosses a member's end. The output stream feeds :mod:`tarfile`
(stream mode), which yields each entry's header and data offset; and a sha256
per span, so a reader can verify what it inflates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from zerostart.estargz import TAR_KINDS  # one tar type table (CONTTYPE is a regular file)
from zerostart.paths import PathEscapeError, relative_name
from zerostart.ztoc._format import (
    DEFAULT_SPAN_BYTES,
    KINDS,
    MIN_SPAN_BYTES,
    WINDOW_BYTES,
    Checkpoint,
    Entry,
    Ztoc,
    ZtocError,
)
from zerostart.ztoc._zstd import frames, is_zstd

IN_BYTES = 256 * 1024  # compressed bytes per read
OUT_BYTES = 256 * 1024  # output buffer per inflate call
Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR, Z_BLOCK = 0, 1, 2, -5, 5
GZIP_WBITS = 15 + 16  # gzip wrapper only (RFC 1952)


class _ZStream(ctypes.Structure):
    _fields_ = [  # zlib.h, struct z_stream_s
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


_LIBZ: ctypes.CDLL | None = None


def libz() -> ctypes.CDLL:
    """The system zlib (``libz.so.1``), loaded once; ZtocError with the fix when absent."""
    global _LIBZ
    if _LIBZ is None:
        name = ctypes.util.find_library("z") or "libz.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise ZtocError(
                f"cannot load zlib ({name}): {exc}", hint="apt-get install zlib1g"
            ) from exc
        lib.zlibVersion.restype = ctypes.c_char_p
        lib.inflateInit2_.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.inflate.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.inflateReset.argtypes = [ctypes.c_void_p]
        lib.inflateEnd.argtypes = [ctypes.c_void_p]
        _LIBZ = lib
    return _LIBZ


class _Indexer:
    """Inflates a gzip stream, taking checkpoints; yields the output as it comes."""

    def __init__(self, read: Callable[[int], bytes], span_bytes: int) -> None:
        self.read, self.span_bytes = read, span_bytes
        self.checkpoints: list[Checkpoint] = []
        self.in_size = self.out_size = 0
        self._hash = hashlib.sha256()
        self._tail = b""
        self._pending: tuple[int, int, bytes, bool] | None = None

    def _checkpoint(self, in_bits: int, start: bool) -> None:
        if self._pending is not None:
            self._close_span()
        window = b"" if start else self._tail
        self._pending = (in_bits, self.out_size, window, start)
        self._hash = hashlib.sha256()

    def _close_span(self) -> None:
        assert self._pending is not None
        in_bits, out_off, window, start = self._pending
        self.checkpoints.append(Checkpoint(in_bits, out_off, window, start, self._hash.digest()))
        self._pending = None

    def outputs(self) -> Iterator[bytes]:
        lib = libz()
        strm = _ZStream()
        version = lib.zlibVersion()
        if lib.inflateInit2_(ctypes.byref(strm), GZIP_WBITS, version, ctypes.sizeof(strm)) != Z_OK:
            raise ZtocError("inflateInit2 failed")
        inbuf = ctypes.create_string_buffer(IN_BYTES)
        outbuf = ctypes.create_string_buffer(OUT_BYTES)
        base = 0  # blob offset of inbuf[0]
        held = 0  # bytes in inbuf
        last_in = 0
        self._checkpoint(0, True)
        try:
            while True:
                if strm.avail_in == 0:
                    data = self.read(IN_BYTES)
                    base += held
                    held = len(data)
                    if not data:
                        raise ZtocError(f"gzip stream cut short at byte {base}")
                    ctypes.memmove(inbuf, data, held)
                    strm.next_in = ctypes.addressof(inbuf)
                    strm.avail_in = held
                strm.next_out = ctypes.addressof(outbuf)
                strm.avail_out = OUT_BYTES
                ret = lib.inflate(ctypes.byref(strm), Z_BLOCK)
                if ret not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
                    msg = strm.msg.decode(errors="replace") if strm.msg else f"code {ret}"
                    raise ZtocError(f"not a valid gzip stream: {msg}")
                n = OUT_BYTES - strm.avail_out
                if n:
                    out = ctypes.string_at(outbuf, n)
                    self._hash.update(out)
                    self.out_size += n
                    self._tail = (self._tail + out)[-WINDOW_BYTES:]
                    yield out
                pos = base + held - strm.avail_in  # input bytes consumed so far
                if ret == Z_STREAM_END:  # a member ended: the blob ends, or another follows
                    if strm.avail_in == 0:
                        data = self.read(IN_BYTES)
                        if not data:
                            self.in_size = pos
                            self._close_span()
                            return
                        base, held = base + held, len(data)
                        ctypes.memmove(inbuf, data, held)
                        strm.next_in = ctypes.addressof(inbuf)
                        strm.avail_in = held
                    lib.inflateReset(ctypes.byref(strm))
                    self._checkpoint(8 * pos, True)
                    last_in = pos
                    continue
                dt = strm.data_type
                aligned = dt & 7 == 0  # no unused bits: the next block starts on a byte
                if dt & 128 and not dt & 64 and aligned and pos - last_in >= self.span_bytes:
                    self._checkpoint(8 * pos, False)
                    last_in = pos
        finally:
            lib.inflateEnd(ctypes.byref(strm))


class _ZstdIndexer(_Indexer):
    """Decompresses a zstd stream frame by frame, taking checkpoints at frame starts (_zstd.py)."""

    def outputs(self) -> Iterator[bytes]:
        last: list[int] = []

        def frame_start(offset: int) -> None:
            if not last or offset - last[0] >= self.span_bytes:
                self._checkpoint(8 * offset, True)
                last[:] = [offset]

        read = self.read

        def counted(n: int) -> bytes:
            data = read(n)
            self.in_size += len(data)
            return data

        for out in frames(counted, frame_start):
            self._hash.update(out)
            self.out_size += len(out)
            yield out
        if not last:
            raise ZtocError("empty zstd stream")
        self._close_span()


class _Stream:
    """A read-only file over an iterator of byte blocks, for tarfile's stream mode."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks, self._buf = blocks, bytearray()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buf += block
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def drain(self) -> None:
        for _ in self._blocks:
            pass


def _entry(m: tarfile.TarInfo) -> Entry | None:
    kind = TAR_KINDS.get(m.type)
    if kind is None:
        return None  # pax/GNU extension headers are folded into the member by tarfile
    try:
        name = relative_name(m.name, absolute="strip")
        link = m.linkname
        if kind == "hardlink":
            link = relative_name(link, absolute="strip")
    except PathEscapeError as exc:
        raise ZtocError(f"layer entry {exc}; refusing to index it") from exc
    if not name:
        return None  # the layer's root folder ("./")
    xattrs = tuple(
        (k[len("SCHILY.xattr.") :], v.encode("utf-8", "surrogateescape"))
        for k, v in sorted(m.pax_headers.items())
        if k.startswith("SCHILY.xattr.")
    )
    return Entry(
        name=name,
        kind=kind,
        mode=m.mode & 0o7777,
        uid=m.uid,
        gid=m.gid,
        mtime=int(m.mtime),
        size=m.size if kind == "reg" else 0,
        offset=m.offset_data if kind == "reg" else 0,
        link=link if kind in ("symlink", "hardlink") else "",
        dev_major=m.devmajor if kind in ("char", "block") else 0,
        dev_minor=m.devminor if kind in ("char", "block") else 0,
        xattrs=xattrs,
    )


def _ends_unpadded(stream: _Stream, entries: list[Entry], out_size: int) -> bool:
    """A tar that stops right after its last file's data, unpadded and without the two
    end-of-archive blocks (umoci's layers): whole, as Go's archive/tar reads it (a
    partial padding is still an error there, and here)."""
    stream.drain()
    last = entries[-1] if entries else None
    return last is not None and last.kind == "reg" and last.offset + last.size == out_size


def build(f: IO[bytes], span_bytes: int = DEFAULT_SPAN_BYTES) -> Ztoc:
    """The zTOC of the gzip (or zstd) tar layer read from ``f`` (its digest already verified).

    ``span_bytes``: compressed bytes between checkpoints (at least 64 KiB); a
    zstd layer is checkpointed at frame starts only (_zstd.py). Raises
    ZtocError for a stream that is neither, a tar that does not parse, or an
    entry name that climbs out of the image.
    """
    if span_bytes < MIN_SPAN_BYTES:
        raise ZtocError(f"span of {span_bytes} bytes; the least is {MIN_SPAN_BYTES}")
    head = [f.read(4)]

    def read(n: int) -> bytes:  # the sniffed bytes first
        if head[0]:
            out, head[0] = head[0], b""
            return out
        return f.read(n)

    indexer = (_ZstdIndexer if is_zstd(head[0]) else _Indexer)(read, span_bytes)
    stream = _Stream(indexer.outputs())
    entries: list[Entry] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            while True:
                try:
                    m = tar.next()
                except tarfile.ReadError:
                    if _ends_unpadded(stream, entries, indexer.out_size):
                        break
                    raise
                if m is None:
                    break
                e = _entry(m)
                if e is not None:
                    entries.append(e)
    except tarfile.TarError as exc:
        raise ZtocError(f"not a tar layer: {exc}") from exc
    stream.drain()  # the end-of-archive blocks and any padding: every span is hashed
    assert all(e.kind in KINDS for e in entries)
    return Ztoc(
        span_bytes,
        indexer.in_size,
        indexer.out_size,
        tuple(indexer.checkpoints),
        tuple(entries),
    )
