"""eStargz: seekable, verifiable gzip tar layers (writer, reader, validator). Standard library only.

Theory of operation. An eStargz blob (spec: ``docs/estargz.md`` of
containerd/stargz-snapshotter; ours: ``docs/estargz.md``) is an ordinary
``tar+gzip`` layer cut into many gzip members, so that any regular file (or
4 MiB chunk of one) can be fetched with one HTTP range request and
decompressed on its own::

    member 0            tar headers (dirs, links, ...) up to the first file's header
    member at offset A  file a's payload (+ tar padding) + the next headers
    member at offset B  file b's first chunk
    member at offset C  file b's second chunk (+ padding) + the next headers
    ...
    member at TOC       tar header "stargz.index.json" + TOC JSON + padding + end of archive
    footer (51 bytes)   an empty gzip member whose Extra field says "%016x" % TOC offset

The TOC (table of contents) lists every tar entry with its metadata, and for
every file payload or chunk the gzip member's ``offset``, the chunk's place in
the file (``chunkOffset``, ``chunkSize``) and its ``chunkDigest``. The layer
descriptor carries the TOC's digest (:data:`TOC_DIGEST_ANNOTATION`), so a
verified manifest verifies the TOC, and the TOC verifies every chunk.

Files that a workload reads at start-up come first, then
:data:`PREFETCH_LANDMARK`: the range ``[0, landmark offset)`` is the prefetch
(one range request). A blob without such files starts with
:data:`NO_PREFETCH_LANDMARK` instead.

This package is free of network I/O: :class:`Writer` writes to any binary
stream; :func:`parse_footer`, :func:`parse_toc` and :func:`read_chunk` take
bytes and return values, so the builder, the lazy filesystem and the tests use
the same code whether the bytes come from a file or a registry range request.
Every malformed or hostile input raises :class:`EStargzError` naming the entry.
Standard library only. Layout::

    _format.py   constants, TOCEntry, the footer, EStargzError
    _writer.py   Writer, prioritize (imported on first use: the mount path never
                 pays for tarfile)
    _reader.py   parse_toc / open_toc / read_toc -> TOC; read_chunk, verify_chunk
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zerostart.estargz._format import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_GZIP_LEVEL,
    DEFLATE_MAX_RATIO,
    ENTRY_TYPES,
    FOOTER_SIZE,
    LANDMARK_CONTENTS,
    MAX_ENTRY_SIZE,
    MAX_TOC_ENTRIES,
    MAX_TOC_JSON_BYTES,
    MEDIA_TYPE,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TAR_KINDS,
    TOC_DIGEST_ANNOTATION,
    TOC_TAR_NAME,
    TOC_VERSION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    Chunk,
    ChunkRef,
    EStargzError,
    TOCEntry,
    clean_name,
    footer_bytes,
    parse_footer,
)
from zerostart.estargz._reader import (
    TOC,
    open_toc,
    parse_toc,
    read_chunk,
    read_toc,
    resolve_in_root,
    toc_range,
    validate_entries,
    verify_chunk,
)

if TYPE_CHECKING:
    from zerostart.estargz._writer import Writer, WrittenBlob, prioritize

_LAZY = {"Writer", "WrittenBlob", "prioritize"}

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_GZIP_LEVEL",
    "DEFLATE_MAX_RATIO",
    "ENTRY_TYPES",
    "FOOTER_SIZE",
    "LANDMARK_CONTENTS",
    "MAX_ENTRY_SIZE",
    "MAX_TOC_ENTRIES",
    "MAX_TOC_JSON_BYTES",
    "MEDIA_TYPE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TAR_KINDS",
    "TOC",
    "TOC_DIGEST_ANNOTATION",
    "TOC_TAR_NAME",
    "TOC_VERSION",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "Chunk",
    "ChunkRef",
    "EStargzError",
    "TOCEntry",
    "Writer",
    "WrittenBlob",
    "clean_name",
    "footer_bytes",
    "open_toc",
    "parse_footer",
    "parse_toc",
    "prioritize",
    "read_chunk",
    "read_toc",
    "resolve_in_root",
    "toc_range",
    "validate_entries",
    "verify_chunk",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from zerostart.estargz import _writer

        return getattr(_writer, name)
    raise AttributeError(f"module 'zerostart.estargz' has no attribute {name!r}")
