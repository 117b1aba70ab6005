"""SentencePiece Unigram (the XLM-R family) as `tokenizers` runs it, over mapped tables.

Theory of operation. A word is cut by Viterbi over its UTF-8 bytes
(tokenizers' ``Unigram::encode_optimized``, after SentencePiece's
``unigram_model.cc``): walking from each character start, every vocabulary
piece that begins there is found by following the trie of piece bytes; the best
path score at each end position is kept (a later candidate must be strictly
better, so on ties the earlier start and the shorter piece win). A character
with no piece of its own length gets the unknown piece at ``min_score - 10``.
Consecutive unknown pieces are fused into one token whose text is the original
text; that token's id is the piece of that text if there is one, else its
bytes as ``<0xXX>`` pieces (``byte_fallback``), else ``unk_id``.

Tables (``tokenizer.bin`` sections, written by ``compile_unigram``):

* ``pieces`` + ``piece_offsets``: piece ``i`` is UTF-8 bytes
  ``pieces[piece_offsets[i]:piece_offsets[i + 1]]``; ``scores``: float64 per piece;
* the trie, nodes numbered breadth first, root 0: the children of node ``k``
  are nodes ``trie_first[k] .. trie_first[k + 1] - 1``, child ``j``'s byte is
  ``trie_labels[j]`` (children sorted by byte, found with ``bytes.find``), and
  ``trie_value[j]`` is the piece ending there (-1: none). A piece string given
  twice maps to its last id, as in tokenizers' ``token_to_ids``.

Native loops. When the bundle carries ``tokenizer.so`` (``_native.py``), the
same segmentation runs in C on the same mapped arrays (``kernels/cpu/zs_tok.c``,
which follows this code rule for rule): per word for ``pieces``, and for a
whole Metaspace segment at once in ``encode_words`` (words, ids, character and
original offsets in one call; where the interpreter exports the C API functions
it needs, the C appends to the lists itself, else the Python side turns its
arrays into lists). The Python code below stays the reference and the
fallback, and handles what the C leaves to it (unknown text spelled in
``byte_fallback`` pieces; the error for a character without a piece).

Runtime module: standard library only (``compile_unigram`` is the build half).
"""

from __future__ import annotations

import functools
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._base import Align, Pieces
from zerostart.tokenize._compiled import CompiledFile, MappedVocab, Section
from zerostart.tokenize._encoding import Tokens

if TYPE_CHECKING:
    from zerostart.tokenize._native import NativeLib

# tokenizers' K_UNK_PENALTY (models/unigram/model.rs): an unknown character costs
# this much less than the rarest piece.
UNK_PENALTY = 10.0
# Distinct words kept with their pieces (each ~0.5 KB: a few MB at most).
WORD_CACHE_SIZE_WORDS = 16384
_ZEROS = array("i", [0])  # repeated into the native calls' output arrays
_ZERO64 = array("q", [0, 0])
_ZERO_BYTES = array("B", [0])


def compile_unigram(
    vocab: Sequence[tuple[str, float]], *, unk_id: int | None, byte_fallback: bool
) -> tuple[dict[str, Any], dict[str, Section]]:
    """(meta, sections) of ``tokenizer.bin`` for a Unigram vocabulary (piece, score) by id."""
    if not vocab:
        raise TokenizerError("a Unigram model needs at least one piece")
    if unk_id is not None and not 0 <= unk_id < len(vocab):
        raise TokenizerError(f"unk_id {unk_id} is outside the vocabulary (0..{len(vocab) - 1})")
    blob = bytearray()
    offsets = array("I", [0])
    scores = array("d")
    keys: dict[bytes, int] = {}
    for i, (piece, score) in enumerate(vocab):
        raw = piece.encode("utf-8")
        blob += raw
        offsets.append(len(blob))
        scores.append(float(score))
        keys[raw] = i  # a repeated piece keeps its last id, as tokenizers' token_to_ids
    first, labels, value = build_trie(keys)
    meta: dict[str, Any] = {
        "vocab_size": len(vocab),
        "unk_id": unk_id,
        "byte_fallback": byte_fallback,
        "min_score": min(scores),
    }
    sections: dict[str, Section] = {
        "pieces": bytes(blob),
        "piece_offsets": offsets,
        "scores": scores,
        "trie_first": first,
        "trie_labels": bytes(labels),
        "trie_value": value,
    }
    return meta, sections


def build_trie(keys: dict[bytes, int]) -> tuple[array[int], bytearray, array[int]]:
    """Breadth-first trie arrays (first, labels, value) over non-empty byte keys."""
    items = sorted(keys.items())
    ks = [k for k, _ in items]
    vs = [v for _, v in items]
    first = array("i")
    labels = bytearray(b"\0")  # the root has no label
    value = array("i", [-1])
    queue: deque[tuple[int, int, int]] = deque([(0, len(ks), 0)])
    while queue:
        lo, hi, depth = queue.popleft()  # keys[lo:hi] all continue the node's prefix
        first.append(len(labels))
        i = lo
        while i < hi:
            byte = ks[i][depth]
            j = i + 1
            while j < hi and ks[j][depth] == byte:
                j += 1
            labels.append(byte)
            if len(ks[i]) == depth + 1:  # sorted: the key ending here comes first
                value.append(vs[i])
                queue.append((i + 1, j, depth + 1))
            else:
                value.append(-1)
                queue.append((i, j, depth + 1))
            i = j
    first.append(len(labels))
    return first, labels, value


class Unigram(MappedVocab):
    """The Unigram model over a mapped ``tokenizer.bin``; see the module docstring."""

    def __init__(
        self, tables: CompiledFile, meta: dict[str, Any], native: NativeLib | None = None
    ) -> None:
        super().__init__(tables, int(meta["vocab_size"]))
        unk = meta.get("unk_id")
        self.unk_id: int | None = None if unk is None else int(unk)
        self.byte_fallback = bool(meta.get("byte_fallback"))
        self._unk_score = float(meta["min_score"]) - UNK_PENALTY
        self._scores = tables.section("scores")
        if len(self._offsets) != self.vocab_size + 1 or len(self._scores) != self.vocab_size:
            raise TokenizerError(f"{tables.path}: Unigram tables do not match vocab_size")
        self.native = native
        self._encode_py: Callable[..., int] | None = None
        if native is not None:
            import ctypes

            from zerostart.tokenize._native import UnigramTables

            self._root = array("i", [-1]) * 256
            self._native_tables = UnigramTables(
                tables.address("trie_first"),
                tables.address("trie_labels"),
                tables.address("trie_value"),
                tables.address("scores"),
                len(self._value),
                self.vocab_size,
                -1 if self.unk_id is None else self.unk_id,
                int(self.byte_fallback),
                self._unk_score,
                self._root.buffer_info()[0],
            )
            if len(self._first) != len(self._value) + 1 or len(self._labels) != len(self._value):
                raise TokenizerError(f"{tables.path}: the Unigram trie arrays differ in length")
            address = ctypes.addressof(self._native_tables)
            if bad := native.unigram_check(address):
                raise TokenizerError(
                    f"{tables.path}: corrupt Unigram trie (entry {bad - 1})",
                    hint="re-run zerostart convert",
                )
            self._segment = functools.partial(native.unigram_segment, address)
            self._encode_py = (
                None
                if native.unigram_encode_py is None
                else functools.partial(native.unigram_encode_py, address)
            )
        self.pieces: Callable[[str], Pieces] = functools.lru_cache(WORD_CACHE_SIZE_WORDS)(
            self._pieces if native is None else self._pieces_native
        )

    # -- segmentation, native --------------------------------------------------
    def _pieces_native(self, word: str) -> Pieces:
        data = word.encode("utf-8")
        n = len(data)
        out = _ZEROS * (6 * n)
        words = array("q", _ZERO64)
        found = self._segment(data, n, b"", 0, None, 0, 0, out.buffer_info()[0], n,
                              words.buffer_info()[0], None)  # fmt: skip
        if found < 0:
            return self._pieces(word)  # byte fallback, or the error: the Python code's
        cs, ce = out[n : n + found], out[2 * n : 2 * n + found]
        return (
            tuple(out[:found]),
            tuple(map(word.__getitem__, map(slice, cs, ce))),
            tuple(zip(cs, ce, strict=True)),
        )

    def encode_words(
        self,
        text: str,
        align: Align,
        prepended: bool,
        sep: bytes,
        base: int,
        word: int,
        seq: Tokens,
    ) -> int | None:
        """Append the tokens of a pre-tokenised segment to ``seq`` in one native call.

        ``text``: the segment as the model reads it, a new word starting at each
        ``sep`` (UTF-8; b"": one word); ``align``: each character's original index
        (None: the identity) before ``prepended`` characters were put in front
        (they align to the first one); ``base``: the segment's offset in the
        input; ``word``: the index of its first word. Returns the next word
        index, or None when this segment needs the Python path (no library,
        byte fallback spelling, a character without a piece).
        """
        if self.native is None:
            return None
        data = text.encode("utf-8")
        n = len(data)
        aligned = None if align is None else array("i", align)
        if self._encode_py is not None:  # appends to seq's lists itself
            found = self._encode_py(
                data,
                n,
                sep,
                len(sep),
                None if aligned is None else aligned.buffer_info()[0],
                prepended,
                base,
                word,
                seq.ids,
                seq.tokens,
                seq.offsets,
                seq.word_ids,
            )
            return None if found < 0 else word + found
        out = _ZEROS * (6 * n)
        words = array("q", _ZERO64)
        # The token strings come back joined by NUL bytes (one decode, one split) unless
        # the text holds a NUL itself.
        joined = _ZERO_BYTES * (2 * n) if "\0" not in text else None
        found = self._segment(
            data,
            n,
            sep,
            len(sep),
            None if aligned is None else aligned.buffer_info()[0],
            int(prepended),
            base,
            out.buffer_info()[0],
            n,
            words.buffer_info()[0],
            None if joined is None else joined.buffer_info()[0],
        )
        if found < 0:
            return None
        seq.ids += out[:found]
        if joined is not None:
            if found:  # "".split gives one empty string, not none
                seq.tokens += str(memoryview(joined)[: words[1]], "utf-8").split("\0")
        else:
            seq.tokens += map(
                text.__getitem__, map(slice, out[n : n + found], out[2 * n : 2 * n + found])
            )
        seq.offsets += zip(out[3 * n : 3 * n + found], out[4 * n : 4 * n + found], strict=True)
        w = out[5 * n : 5 * n + found]
        seq.word_ids += map(word.__add__, w) if word else w
        return word + words[0]

    # -- segmentation, Python ----------------------------------------------------
    def _pieces(self, word: str) -> Pieces:
        data = word.encode("utf-8")
        n = len(data)
        is_ascii = n == len(word)
        first, find, value, scores = self._first, self._labels.find, self._value, self._scores
        unk_id, unk_score = self.unk_id, self._unk_score
        best = [0.0] * (n + 1)
        start_at = [-1] * (n + 1)
        best_id = [0] * (n + 1)
        pos = 0
        while pos < n:
            if is_ascii:
                mblen = 1
            else:
                lead = data[pos]
                mblen = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            here = best[pos]
            single = False
            node = 0
            end = pos
            while end < n:
                node = find(data[end], first[node], first[node + 1])
                if node < 0:
                    break
                end += 1
                v = value[node]
                if v >= 0:
                    cand = here + scores[v]
                    if start_at[end] < 0 or cand > best[end]:
                        best[end] = cand
                        start_at[end] = pos
                        best_id[end] = v
                    if end - pos == mblen:
                        single = True
            if not single:
                if unk_id is None:
                    raise TokenizerError(
                        f"{word[:40]!r}: the Unigram model has no piece for a character "
                        "and no unknown token"
                    )
                end = pos + mblen
                cand = here + unk_score
                if start_at[end] < 0 or cand > best[end]:
                    best[end] = cand
                    start_at[end] = pos
                    best_id[end] = unk_id
            pos += mblen
        # Back from the end, fusing runs of unknown pieces into one token.
        spans: list[tuple[int, int, int]] = []  # (start, end, id; -1 = fused unknown text)
        end = n
        fused_end = -1
        while end > 0:
            start = start_at[end]
            i = best_id[end]
            if i == unk_id:
                if fused_end < 0:
                    fused_end = end
            else:
                if fused_end >= 0:
                    spans.append((end, fused_end, -1))
                    fused_end = -1
                spans.append((start, end, i))
            end = start
        if fused_end >= 0:
            spans.append((0, fused_end, -1))
        spans.reverse()
        if is_ascii:
            char_at: Sequence[int] = range(n + 1)
        else:
            char_at = [0] * (n + 1)
            k = 0
            for ci, ch in enumerate(word):
                size = len(ch.encode("utf-8"))
                for b in range(k, k + size):
                    char_at[b] = ci
                k += size
            char_at[n] = len(word)
        ids: list[int] = []
        tokens: list[str] = []
        out_spans: list[tuple[int, int]] = []
        for start, end, i in spans:
            cs, ce = char_at[start], char_at[end]
            text = word[cs:ce]
            if i < 0:
                found = self.token_to_id(text)
                if found is None and self.byte_fallback:
                    byte_ids = [self.token_to_id(f"<0x{b:02X}>") for b in data[start:end]]
                    if None not in byte_ids:
                        ids += byte_ids  # type: ignore[arg-type]
                        tokens += [f"<0x{b:02X}>" for b in data[start:end]]
                        out_spans += [(cs, ce)] * len(byte_ids)
                        continue
                i = found if found is not None else unk_id  # type: ignore[assignment]
            ids.append(i)
            tokens.append(text)
            out_spans.append((cs, ce))
        return tuple(ids), tuple(tokens), tuple(out_spans)
