"""The BPE model: merges applied by rank, per pre-tokenised piece, memoised.

Theory of operation (Hugging Face `tokenizers`, ``models/bpe/word.rs``). A
piece starts as one symbol per byte character. Of all adjacent pairs that have a
merge, the one with the lowest rank is merged, the leftmost first among equal
ranks; repeat until no pair has a merge. `tokenizers` keeps the candidates in a
heap keyed by (rank, position) and skips stale entries; with a vocabulary whose
ids name distinct strings that is exactly "merge the lowest (rank, position)
pair of the current symbols", which we do with a scan for short pieces and with
the same heap for long ones (a 10,000-byte run without spaces would otherwise
cost a quadratic number of scans).

A merge is looked up as ``by_left[left_id].get(right_id)``; its value is
``rank * KEY_BASE + new_id``, so comparing values compares ranks. ``by_left``
builds the small dict of one left id's merges from the mapped arrays the first
time that id is looked up: nothing is built at load (one dict of all 47,000
merges of a RoBERTa-sized vocabulary cost 12 ms at best and up to 90 ms on the
shared 2-core VM of docs/tokenizer.md), and a text only touches the left ids
of the pieces it has not seen before.

Tables (``tokenizer.bin`` sections, written by ``compile_bpe``):

* ``pieces`` + ``piece_offsets``: token ``i`` is UTF-8 bytes
  ``pieces[piece_offsets[i]:piece_offsets[i + 1]]``; the trie over them
  (``trie_first``, ``trie_labels``, ``trie_value``, as ``_unigram.build_trie``)
  answers ``token_to_id`` without building a dict;
* merges sorted by (left, right): left id ``l``'s are entries
  ``merge_starts[l] .. merge_starts[l + 1] - 1`` of ``merge_rights`` (uint32,
  the right ids) and ``merge_values`` (uint64, rank and new id as above);
* ``byte_ids``: uint32 x 256, the id of each byte's character.

Native loops. When the bundle carries ``tokenizer.so`` and the model does not
set ``ignore_merges``, ``encode_text`` does ByteLevel's split, these merges and
the tokens' offsets for a whole segment in one C call (``zs_bpe_encode_py`` in
``kernels/cpu/zs_tok.c``, which follows this code and ``_bytelevel.py``); the
code here stays the reference and the fallback.

Runtime module: standard library only.
"""

from __future__ import annotations

import functools
import heapq
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._base import Align, Pieces
from zerostart.tokenize._bytelevel import BYTE_TO_CHAR
from zerostart.tokenize._compiled import CompiledFile, MappedVocab, Section
from zerostart.tokenize._encoding import Tokens

if TYPE_CHECKING:
    from zerostart.tokenize._native import NativeLib

# Ids fit in 32 bits (the compiled file stores them as uint32).
KEY_BASE = 1 << 32
# Pieces up to this many symbols are merged by scanning; longer ones with a heap.
SCAN_MAX_SYMBOLS = 48
# Memoised pieces; cleared when full (the same bound `tokenizers` uses: 10,000).
CACHE_SIZE_PIECES = 10_000
# `tokenizers` does not memoise pieces of this many bytes or more; neither do we.
CACHE_MAX_PIECE_BYTES = 256


MergeTable = Callable[[int], dict[int, int]]  # left id -> {right id: rank * KEY_BASE + new id}


def merge(ids: list[int], lengths: list[int], by_left: MergeTable) -> None:
    """Apply the merges to ``ids`` (symbol ids) and ``lengths`` (their byte lengths), in place."""
    if len(ids) > SCAN_MAX_SYMBOLS:
        _merge_heap(ids, lengths, by_left)
        return
    while len(ids) > 1:
        best = -1
        best_value = 0
        for i in range(len(ids) - 1):
            v = by_left(ids[i]).get(ids[i + 1])
            if v is not None and (best < 0 or v < best_value):
                best, best_value = i, v
        if best < 0:
            return
        ids[best] = best_value % KEY_BASE
        lengths[best] += lengths[best + 1]
        del ids[best + 1], lengths[best + 1]


def _merge_heap(ids: list[int], lengths: list[int], by_left: MergeTable) -> None:
    """The same result as the scan, in O(n log n): a heap of (value, position) and a linked list."""
    n = len(ids)
    nxt = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(v, i) for i in range(n - 1) if (v := by_left(ids[i]).get(ids[i + 1])) is not None]
    heapq.heapify(heap)
    while heap:
        value, i = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or j >= n or by_left(ids[i]).get(ids[j]) != value:
            continue  # stale: one side has merged since this entry was pushed
        ids[i] = value % KEY_BASE
        lengths[i] += lengths[j]
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prev[k] = i
        p = prev[i]
        if p >= 0 and (v := by_left(ids[p]).get(ids[i])) is not None:
            heapq.heappush(heap, (v, p))
        if k < n and (v := by_left(ids[i]).get(ids[k])) is not None:
            heapq.heappush(heap, (v, i))
    kept = [i for i in range(n) if alive[i]]
    ids[:] = [ids[i] for i in kept]
    lengths[:] = [lengths[i] for i in kept]


class _MergesByLeft(dict[int, dict[int, int]]):
    """left id -> its merges, each built from the mapped arrays on first lookup."""

    def __init__(self, starts: memoryview, rights: memoryview, values: memoryview) -> None:
        super().__init__()
        self._starts, self._rights, self._values = starts, rights, values

    def __missing__(self, left: int) -> dict[int, int]:
        lo, hi = self._starts[left], self._starts[left + 1]
        found = self[left] = dict(zip(self._rights[lo:hi], self._values[lo:hi], strict=True))
        return found


def compile_bpe(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], *, ignore_merges: bool
) -> tuple[dict[str, Any], dict[str, Section]]:
    """(meta, sections) of ``tokenizer.bin`` for a byte-level BPE vocabulary and its merges.

    Raises TokenizerError for what a byte-level BPE cannot be: ids that are not
    0..n-1, a byte character missing from the vocabulary (`tokenizers` would
    drop or ``unk`` that byte; we refuse), a merge of unknown tokens or whose
    result is not in the vocabulary.
    """
    n = len(vocab)
    by_id: list[str | None] = [None] * n
    for token, i in vocab.items():
        if not isinstance(i, int) or not 0 <= i < n or by_id[i] is not None:
            raise TokenizerError(
                f"BPE vocabulary ids are not 0..{n - 1} once each ({token!r}: {i!r})"
            )
        by_id[i] = token
    missing = [c for c in BYTE_TO_CHAR if c not in vocab]
    if missing:
        raise TokenizerError(
            f"a byte-level BPE vocabulary without the byte characters {missing[:8]}"
        )
    blob = bytearray()
    offsets = array("I", [0])
    keys: dict[bytes, int] = {}
    for i, name in enumerate(by_id):
        raw = str(name).encode("utf-8")
        blob += raw
        offsets.append(len(blob))
        keys[raw] = i
    from zerostart.tokenize._unigram import build_trie  # build time only

    first, labels, value = build_trie(keys)
    entries: dict[tuple[int, int], int] = {}
    for rank, (left, right) in enumerate(merges):
        a, b, new = vocab.get(left), vocab.get(right), vocab.get(left + right)
        if a is None or b is None or new is None:
            raise TokenizerError(
                f"merge {rank} ({left!r}, {right!r}) names a token not in the vocabulary"
            )
        if (a, b) in entries:  # tokenizers keeps the later rank; a file that relies on it is odd
            raise TokenizerError(f"merge {rank} ({left!r}, {right!r}) is listed twice")
        entries[a, b] = rank * KEY_BASE + new
    starts = array("I", [0] * (n + 1))
    rights = array("I")
    values = array("Q")
    for (a, b), v in sorted(entries.items()):
        starts[a + 1] += 1
        rights.append(b)
        values.append(v)
    for i in range(n):
        starts[i + 1] += starts[i]
    meta: dict[str, Any] = {"vocab_size": n, "merges": len(merges), "ignore_merges": ignore_merges}
    sections: dict[str, Section] = {
        "pieces": bytes(blob),
        "piece_offsets": offsets,
        "trie_first": first,
        "trie_labels": bytes(labels),
        "trie_value": value,
        "merge_starts": starts,
        "merge_rights": rights,
        "merge_values": values,
        "byte_ids": array("I", [vocab[c] for c in BYTE_TO_CHAR]),
    }
    return meta, sections


class BPE(MappedVocab):
    """Byte-level BPE over a mapped ``tokenizer.bin`` (``_base.Model``); words are byte characters."""

    def __init__(
        self, tables: CompiledFile, meta: dict[str, Any], native: NativeLib | None = None
    ) -> None:
        super().__init__(tables, int(meta["vocab_size"]))
        starts = tables.section("merge_starts")
        rights, values = tables.section("merge_rights"), tables.section("merge_values")
        byte_ids = tables.section("byte_ids")
        if (
            len(self._offsets) != self.vocab_size + 1
            or len(starts) != self.vocab_size + 1
            or len(rights) != len(values)
            or len(rights) != int(meta["merges"])
            or starts[-1] != len(rights)
            or len(byte_ids) != len(BYTE_TO_CHAR)
        ):
            raise TokenizerError(f"{tables.path}: BPE tables do not match their header")
        self._by_left = _MergesByLeft(starts, rights, values).__getitem__
        self._char_ids = {c: byte_ids[b] for b, c in enumerate(BYTE_TO_CHAR)}
        self._ignore_merges = bool(meta.get("ignore_merges"))
        # A hit is a C-level dict lookup (no Python frame): most words are hits.
        self._cache = _PieceCache(self._merge_word)
        self.pieces: Callable[[str], Pieces] = self._cache.__getitem__
        self._encode_py: Callable[..., int] | None = None
        if native is not None and native.bpe_encode_py is not None and not self._ignore_merges:
            self._native_init(tables, meta, native)

    @property
    def native_ready(self) -> bool:
        """True when ``encode_text`` runs in C (the library loaded and this model suits it)."""
        return self._encode_py is not None

    def _native_init(self, tables: CompiledFile, meta: dict[str, Any], native: NativeLib) -> None:
        import ctypes

        from zerostart.tokenize._native import BpeTables

        ranges, counts = _class_ranges()
        self._native_keep = ranges  # the struct holds its address
        self._native_tables = BpeTables(
            tables.address("pieces"),
            tables.address("piece_offsets"),
            tables.address("merge_starts"),
            tables.address("merge_rights"),
            tables.address("merge_values"),
            tables.address("byte_ids"),
            ranges.buffer_info()[0],
            self.vocab_size,
            int(meta["merges"]),
            len(tables.section("pieces")),
            *counts,
        )
        address = ctypes.addressof(self._native_tables)
        if bad := native.bpe_check(address):
            raise TokenizerError(
                f"{tables.path}: corrupt BPE tables (entry {bad - 1})",
                hint="re-run zerostart convert",
            )
        assert native.bpe_encode_py is not None
        self._encode_py = functools.partial(native.bpe_encode_py, address)

    def encode_text(
        self,
        text: str,
        align: Align,
        base: int,
        word: int,
        seq: Tokens,
        *,
        add_prefix_space: bool,
        use_regex: bool,
    ) -> int | None:
        """ByteLevel's split and the merges of a whole segment in one native call.

        ``text``: the segment after the normaliser; ``align``: each character's
        original index (None: the identity); ``base``: the segment's offset in
        the input; ``word``: the index of its first word. Appends to ``seq``'s
        lists and returns the next word index, or None (nothing appended) when
        the library cannot do it and the Python path must.
        """
        if self._encode_py is None:
            return None
        data = text.encode("utf-8")
        aligned = None if align is None else array("i", align)
        found = self._encode_py(
            data,
            len(data),
            None if aligned is None else aligned.buffer_info()[0],
            base,
            word,
            add_prefix_space,
            use_regex,
            seq.ids,
            seq.tokens,
            seq.offsets,
            seq.word_ids,
        )
        return None if found < 0 else word + found

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- segmentation ---------------------------------------------------------
    def _merge_word(self, word: str) -> Pieces:
        """One word's tokens (``pieces`` memoises this); ``word`` is byte characters."""
        if self._ignore_merges and (whole := self.token_to_id(word)) is not None:
            return (whole,), (word,), ((0, len(word)),)
        char_ids = self._char_ids
        ids = [char_ids[c] for c in word]
        lengths = [1] * len(ids)
        merge(ids, lengths, self._by_left)
        spans = []
        pos = 0
        for n in lengths:
            spans.append((pos, pos + n))
            pos += n
        token = self.id_to_token
        return tuple(ids), tuple(str(token(i)) for i in ids), tuple(spans)


_RANGES: tuple[array[int], tuple[int, int, int]] | None = None


def _class_ranges() -> tuple[array[int], tuple[int, int, int]]:
    """The letter, number and space ranges of ``_bytelevel_tables`` as one uint32 array (once)."""
    global _RANGES
    if _RANGES is None:
        from zerostart.tokenize import _bytelevel_tables as t

        parts = (t.LETTER_RANGES, t.NUMBER_RANGES, t.SPACE_RANGES)
        flat = array("I", [x for part in parts for pair in part for x in pair])
        _RANGES = flat, (len(parts[0]), len(parts[1]), len(parts[2]))
    return _RANGES


class _PieceCache(dict[str, Pieces]):
    """word -> its tokens, computed on first sight; cleared when full."""

    def __init__(self, compute: Callable[[str], Pieces]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, word: str) -> Pieces:
        result = self._compute(word)
        if len(word) < CACHE_MAX_PIECE_BYTES:
            if len(self) >= CACHE_SIZE_PIECES:
                self.clear()
            self[word] = result
        return result
