"""``tokenizer.bin``: a tokenizer's tables in one file the worker maps and uses as is.

Reading a 250,000-piece vocabulary from JSON costs the better part of a second
in Python, and even building a dict of it from a list costs tens of
milliseconds. So ``zerostart convert`` writes the tables as flat arrays
(the piece strings, their scores, a trie over their UTF-8 bytes, the
normaliser's charsmap, ...) into one file, and the worker ``mmap``s it and reads
the arrays through ``memoryview``s: loading is a header parse, and nothing is
built before or during the first encode (see docs/tokenizer.md for the numbers).

Layout (little-endian)::

    0   8 bytes   magic b"ZSTOKBIN"
    8   u32       format version (1)
    12  u32       header length H in bytes
    16  H bytes   header: UTF-8 JSON {"meta": {...}, "sections": {name: [offset, length, format]}}
    ... sections, each at an offset that is a multiple of 8; ``format`` is a
        ``memoryview.cast`` code ("B" bytes, "i" int32, "I" uint32, "d" float64,
        "Q" uint64)

Runtime module (the reader; ``write`` is used by ``zerostart convert``):
standard library only.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Mapping
from typing import Any, TypeAlias

from zerostart.bundle.manifest import TOKENIZER_LIB_NAME
from zerostart.errors import TokenizerError

MAGIC = b"ZSTOKBIN"
# The native inner loops, beside tokenizer.bin in a bundle (``_native.py``).
NATIVE_LIB_NAME = TOKENIZER_LIB_NAME
FORMAT_VERSION = 1
ALIGN_BYTES = 8  # every section starts on an 8-byte boundary (float64 arrays)
_HEAD = struct.Struct("<8sII")
_FORMATS = {"B": 1, "i": 4, "I": 4, "d": 8, "Q": 8}

Section: TypeAlias = "bytes | array[Any]"  # what ``write`` takes: raw bytes or a typed array


def write(
    path: str | os.PathLike[str], meta: Mapping[str, Any], sections: Mapping[str, Section]
) -> None:
    """Write ``sections`` (name -> bytes or array) and ``meta`` (JSON-able) to ``path``."""
    if sys.byteorder != "little":  # the arrays are written in host order
        raise TokenizerError("tokenizer.bin is written on little-endian machines only")
    layout: dict[str, list[Any]] = {}
    blobs: list[tuple[int, bytes]] = []
    # Two passes: the header's length decides where the first section starts.
    for _ in range(2):
        header = json.dumps({"meta": dict(meta), "sections": layout}, sort_keys=True).encode()
        offset = _align(_HEAD.size + len(header) + ALIGN_BYTES)  # slack for the 2nd pass
        layout = {}
        blobs = []
        for name, data in sections.items():
            fmt = data.typecode if isinstance(data, array) else "B"
            if fmt not in _FORMATS or (isinstance(data, array) and data.itemsize != _FORMATS[fmt]):
                raise TokenizerError(f"section {name!r}: unsupported array type {fmt!r}")
            raw = data.tobytes() if isinstance(data, array) else bytes(data)
            layout[name] = [offset, len(raw), fmt]
            blobs.append((offset, raw))
            offset = _align(offset + len(raw))
    header = json.dumps({"meta": dict(meta), "sections": layout}, sort_keys=True).encode()
    start = blobs[0][0] if blobs else _align(_HEAD.size + len(header))
    if _HEAD.size + len(header) > start:
        raise TokenizerError("tokenizer.bin header outgrew its slot")  # cannot happen: slack
    with open(path, "wb") as f:
        f.write(_HEAD.pack(MAGIC, FORMAT_VERSION, len(header)))
        f.write(header)
        for offset, raw in blobs:
            f.write(b"\0" * (offset - f.tell()))
            f.write(raw)


def _align(n: int) -> int:
    return -(-n // ALIGN_BYTES) * ALIGN_BYTES


class CompiledFile:
    """A mapped ``tokenizer.bin``: ``meta`` and typed views of its sections.

    Raises TokenizerError naming the file if it is missing, truncated or not
    this format. The mapping lives as long as this object (or any view of it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if sys.byteorder != "little":
            raise TokenizerError(
                f"{self.path}: tokenizer.bin is read on little-endian machines only"
            )
        try:
            with open(self.path, "rb") as f:
                # ACCESS_COPY (a private mapping, shared with the page cache until written,
                # which nothing does): ctypes can take its address for the native loops.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise TokenizerError(f"{self.path}: cannot map the tokenizer tables: {exc}") from exc
        view = memoryview(self._map).toreadonly()
        try:
            magic, version, size = _HEAD.unpack_from(view)
            if magic != MAGIC:
                raise ValueError("not a zerostart tokenizer.bin")
            if version != FORMAT_VERSION:
                raise ValueError(f"format version {version}, this zerostart reads {FORMAT_VERSION}")
            header = json.loads(bytes(view[_HEAD.size : _HEAD.size + size]))
            self.meta: dict[str, Any] = header["meta"]
            self._sections: dict[str, list[Any]] = header["sections"]
            for name, (offset, length, fmt) in self._sections.items():
                if offset % ALIGN_BYTES or offset + length > len(view) or fmt not in _FORMATS:
                    raise ValueError(f"section {name!r} lies outside the file or is misaligned")
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(
                f"{self.path}: corrupt tokenizer tables: {exc}", hint="re-run zerostart convert"
            ) from exc
        self._view = view
        self._base: int | None = None

    def section(self, name: str) -> memoryview:
        """The section as a typed memoryview (``format`` of its entry)."""
        try:
            offset, length, fmt = self._sections[name]
        except KeyError:
            raise TokenizerError(
                f"{self.path}: no section {name!r}", hint="re-run zerostart convert"
            ) from None
        return self._view[offset : offset + length].cast(fmt)

    def has(self, name: str) -> bool:
        return name in self._sections

    def address(self, name: str) -> int:
        """The section's address in this process (for the native loops; valid while self lives)."""
        if self._base is None:
            import ctypes  # only with the native library, which needs it anyway

            self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self.section(name)  # a missing section raises here
        return self._base + int(self._sections[name][0])


class MappedVocab:
    """The piece table every compiled model shares: id -> piece and piece -> id, mapped.

    Sections ``pieces`` + ``piece_offsets`` (the pieces' UTF-8 bytes, end to
    end) and ``trie_first`` / ``trie_labels`` / ``trie_value`` (a byte trie:
    node ``n``'s children are ``first[n]..first[n+1]``, sorted by label; value
    -1 where no piece ends), as ``_unigram.build_trie`` writes them.
    """

    def __init__(self, tables: CompiledFile, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._blob = tables.section("pieces")
        self._offsets = tables.section("piece_offsets")
        self._first = tables.section("trie_first")
        self._labels = bytes(tables.section("trie_labels"))  # bytes.find needs a bytes object
        self._value = tables.section("trie_value")

    def id_to_token(self, i: int) -> str | None:
        if not 0 <= i < self.vocab_size:
            return None
        return bytes(self._blob[self._offsets[i] : self._offsets[i + 1]]).decode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        node = 0
        first, find = self._first, self._labels.find
        for byte in token.encode("utf-8"):
            node = find(byte, first[node], first[node + 1])
            if node < 0:
                return None
        v = self._value[node] if node else -1
        return v if v >= 0 else None
