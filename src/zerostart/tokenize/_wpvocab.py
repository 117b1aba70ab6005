"""WordPiece's vocabulary in ``tokenizer.bin``: written by convert, mapped by the worker.

Reading vocab.txt and building its ``{token: id}`` dict is the whole of a
WordPiece tokenizer's load: 12-18 ms for BERT's 30,522 tokens on a 2-core
AMD EPYC at load average ~1 (most of it hashing 30k fresh strings into the
dict, which no serialisation can skip: ``marshal.loads`` of the dict costs the
same). That was the largest phase of a warm slot's assignment (issue 19). So
``zerostart convert`` also writes the vocabulary as tables that the worker maps
and looks up where they lie: loading is a header parse (~0.1 ms), and each
lookup hashes the token's UTF-8 bytes and probes the mapped table (~0.6 us
against a dict's ~0.1 us); the tokenizer memoises whole words and word pieces
(``_tokenizer.py``, ``_wordpiece.py``), so only a word's first sighting pays it.

Sections (``_compiled.py``'s file; ``MappedVocab``'s names for the pieces)::

    pieces          B      every token's UTF-8 bytes, end to end, in id order
    piece_offsets   I      n + 1 offsets: token i is pieces[offsets[i]:offsets[i + 1]]
    wp_slots        i      open addressing, 2**k slots (the smallest 2**k >= 2n):
                           slot = crc32(utf8) & (2**k - 1), linear probing; the id, -1 empty

``meta["model"]``: ``{"type": "WordPiece", "vocab_size": n, "longest": the longest
token in characters, "hash": "crc32"}``. A token that appears twice in vocab.txt
keeps its last id for lookups (as the dict did), and both ids decode to it.

Runtime module: standard library only (``binascii`` is on the worker's path already).
"""

from __future__ import annotations

import os
from array import array
from binascii import crc32
from collections.abc import Sequence
from typing import Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._compiled import CompiledFile, Section, write

HASH = "crc32"  # binascii.crc32 (zlib's CRC-32) of the token's UTF-8 bytes
EMPTY = -1


def _slot_count(n: int) -> int:
    size = 8
    while size < 2 * n:  # load factor <= 1/2: ~1.4 probes per hit on BERT's vocabulary
        size *= 2
    return size


def compile_wordpiece(vocab: Sequence[str]) -> tuple[dict[str, Any], dict[str, Section]]:
    """(meta, sections) of ``tokenizer.bin`` for a WordPiece vocabulary (id = position)."""
    if not vocab:
        raise TokenizerError("the vocabulary is empty")
    encoded = [t.encode("utf-8") for t in vocab]
    offsets = array("I", [0])
    for b in encoded:
        offsets.append(offsets[-1] + len(b))
    last = dict(zip(vocab, range(len(vocab)), strict=True))  # duplicates: the last id wins
    size = _slot_count(len(vocab))
    mask = size - 1
    slots = array("i", [EMPTY]) * size
    for i in last.values():
        h = crc32(encoded[i]) & mask
        while slots[h] != EMPTY:
            h = (h + 1) & mask
        slots[h] = i
    meta = {
        "type": "WordPiece",
        "vocab_size": len(vocab),
        "longest": max(map(len, vocab)),
        "hash": HASH,
    }
    return meta, {"pieces": b"".join(encoded), "piece_offsets": offsets, "wp_slots": slots}


def write_wordpiece_tables(path: str | os.PathLike[str], vocab: Sequence[str]) -> None:
    """Write ``tokenizer.bin`` for ``vocab`` at ``path`` (``zerostart convert``, the canary)."""
    meta, sections = compile_wordpiece(vocab)
    write(path, {"model": meta}, sections)


class MappedWordPieceVocab:
    """The vocabulary of a WordPiece ``tokenizer.bin``, looked up where it is mapped.

    ``get(token)`` -> id or None; ``id_to_token(i)`` -> token (IndexError outside
    0..vocab_size-1). Raises TokenizerError naming the file when the tables are
    not a WordPiece vocabulary or do not fit together.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tables = CompiledFile(path)  # keeps the mapping alive
        meta = self._tables.meta.get("model", {})
        try:
            if meta.get("type") != "WordPiece" or meta.get("hash") != HASH:
                raise ValueError(f"model {meta.get('type')!r} hashed {meta.get('hash')!r}")
            self.vocab_size = int(meta["vocab_size"])
            self.longest = int(meta["longest"])
            # bytes.startswith needs a bytes object: one copy of ~0.2 MB, ~20 us
            self._blob = bytes(self._tables.section("pieces"))
            self._offsets = self._tables.section("piece_offsets")
            self._slots = self._tables.section("wp_slots")
            size = len(self._slots)
            if (
                len(self._offsets) != self.vocab_size + 1
                or self._offsets[-1] != len(self._blob)
                or size < 2 * self.vocab_size
                or size & (size - 1)
            ):
                raise ValueError("section sizes do not fit together")
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenizerError(
                f"{self.path}: not a WordPiece vocabulary table: {exc}",
                hint="re-run zerostart convert",
            ) from exc
        self._mask = size - 1

    def get(self, token: str) -> int | None:
        """The id of ``token``, None if it is not in the vocabulary."""
        b = token.encode("utf-8")
        n = len(b)
        slots, offsets, blob, mask = self._slots, self._offsets, self._blob, self._mask
        h = crc32(b) & mask
        while (i := slots[h]) >= 0:
            start = offsets[i]
            if offsets[i + 1] - start == n and blob.startswith(b, start):
                return i
            h = (h + 1) & mask
        return None

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise IndexError(i)
        return self._blob[self._offsets[i] : self._offsets[i + 1]].decode("utf-8")
