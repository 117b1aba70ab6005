"""zstd layers in a zTOC: checkpoints at frame starts, so a span is whole frames.

A zstd frame cannot be entered in the middle: besides the window (up to
8 MiB for the usual levels, not 32 KiB as in deflate), a block may reuse the
entropy tables and repeat offsets of the blocks before it (RFC 8878,
sections 3.1.1.3 and 3.1.1.5), and libzstd has no public call that restores
that state (zran.c's ``inflatePrime`` + ``inflateSetDictionary`` have no
zstd counterpart). Frames, though, are independent. So a zstd layer is
indexed at frame starts only: the layer is decompressed once, frame by
frame, and a checkpoint (flagged as a member start, no window) is taken at
the start of a frame where at least ``span_bytes`` of compressed input went by
since the last one. A span is then a run of whole frames, which
:func:`inflate_zstd` decompresses with nothing before it.

What that gives depends on the writer: ``pzstd`` (and zstd:chunked, one
frame per file or chunk) writes many frames, so spans are near the asked
size; the ``zstd`` CLI and Go's klauspost/compress, which containerd and
buildah use for ``tar+zstd``, write one frame, so the whole layer is one span
(:func:`build` reports that; the mount then reads it as one range, verified).
Skippable frames (pzstd's size headers, zstd:chunked's manifest) are frames
too and carry no output.

Needs the ``zstandard`` module (``pip install 'zerostart[imagefs]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zerostart.ztoc._format import ZtocError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MASK = 0xFFFFFFF0  # skippable frames: magic 0x184D2A50-0x184D2A5F (RFC 8878, 3.1.2)
SKIPPABLE_MAGIC = 0x184D2A50
IN_BYTES = 256 * 1024


def is_zstd(head: bytes) -> bool:
    """Whether a blob that starts with ``head`` is a zstd stream (a frame or a skippable frame)."""
    if head[:4] == ZSTD_MAGIC:
        return True
    return len(head) >= 4 and int.from_bytes(head[:4], "little") & SKIPPABLE_MASK == SKIPPABLE_MAGIC


def _zstandard() -> Any:
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ZtocError(
            "a zstd layer needs the zstandard module", hint="pip install 'zerostart[imagefs]'"
        ) from exc
    return zstandard


def inflate_zstd(raw: bytes, length: int) -> bytes:
    """The first ``length`` bytes (and no more) that the whole frames in ``raw`` decompress to."""
    z = _zstandard()
    try:
        with z.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as r:
            out: bytes = r.read(length + 1)
    except z.ZstdError as exc:
        raise ZtocError(f"span is not zstd frames: {exc}") from exc
    return out


def frames(read: Any, on_frame_start: Any) -> Iterator[bytes]:
    """Decompress a zstd stream frame by frame, yielding output blocks.

    ``on_frame_start(offset)`` is called with the blob offset of each frame
    before any of its output is yielded. Raises ZtocError for a stream that
    is not zstd or ends inside a frame.
    """
    z = _zstandard()
    dctx = z.ZstdDecompressor()
    pos = 0  # blob offset of buf[0]
    buf = b""
    while True:
        if not buf:
            buf = read(IN_BYTES)
            if not buf:
                return
        on_frame_start(pos)
        d = dctx.decompressobj()
        while True:
            try:
                out = d.decompress(buf)
            except z.ZstdError as exc:
                raise ZtocError(f"not a valid zstd stream at byte {pos}: {exc}") from exc
            if out:
                yield out
            if d.eof:
                rest = d.unused_data
                pos += len(buf) - len(rest)
                buf = rest
                break
            pos += len(buf)
            buf = read(IN_BYTES)
            if not buf:
                raise ZtocError(f"zstd stream cut short at byte {pos}")
