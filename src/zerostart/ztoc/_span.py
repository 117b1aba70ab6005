"""Inflating one span of a layer from its checkpoint, with no byte before it (pure Python).

Checkpoints sit on byte boundaries (see ``_build.py`` for why), so a span's
bytes are a raw deflate stream that ``zlib.decompressobj(wbits=-15,
zdict=window)`` resumes: the window as its preset dictionary is what zlib's
``inflateSetDictionary`` does in ``zran.c``; no ``inflatePrime`` is needed, so
the mount daemon needs no ctypes. bench/zran_index.py measures this against
``inflatePrime`` + ``inflateSetDictionary`` through ctypes on the same spans
(docs/lazy-images.md).
"""

from __future__ import annotations

import hashlib
import zlib

from zerostart.ztoc._format import Checkpoint, ZtocError
from zerostart.ztoc._zstd import inflate_zstd, is_zstd


def inflate_span(cp: Checkpoint, raw: bytes, length: int) -> bytes:
    """The ``length`` uncompressed bytes of the span starting at ``cp``, verified.

    ``raw``: the blob's bytes from ``cp.first_byte`` to the span's end
    (:meth:`Ztoc.span_range`). Raises ZtocError when they do not inflate to
    ``length`` bytes whose sha256 is the checkpoint's.
    """
    try:
        if cp.member_start and is_zstd(raw[:4]):  # whole zstd frames (_zstd.py)
            out = inflate_zstd(raw, length)
        else:
            if cp.member_start:
                d = zlib.decompressobj(zlib.MAX_WBITS | 16)
            else:
                d = zlib.decompressobj(-zlib.MAX_WBITS, zdict=cp.window)
            out = d.decompress(raw, length)
    except zlib.error as exc:
        raise ZtocError(f"span at bit {cp.in_bits} does not inflate: {exc}") from exc
    if len(out) != length:
        raise ZtocError(f"span at bit {cp.in_bits} inflates to {len(out)} bytes, not {length}")
    if hashlib.sha256(out).digest() != cp.span_digest:
        raise ZtocError(f"span at bit {cp.in_bits} does not match its digest")
    return out
