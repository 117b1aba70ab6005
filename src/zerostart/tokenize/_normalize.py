"""BERT's normaliser and pre-tokeniser, with alignments back to the original text.

Theory of operation. `tokenizers`' BertNormalizer runs four passes over the whole
string (clean text, space out CJK ideographs, NFD + drop non-spacing marks,
lowercase) and tracks, for every normalised character, which original character
it came from. Every pass except canonical reordering inside NFD works one
character at a time, so the result for a character depends on that character
alone: we compute it once per character (`map_char`) and keep it in a
`str.translate` table, so that normalising is one C-level `translate` call.

Offsets need the alignment only when some character changes length (is dropped,
or becomes several). A second translate table maps each character to a one-
character marker ("." keeps its length, "x" changes it, "r" may be reordered by
NFD), so one more `translate` says whether the alignment is the identity (the
fast path) and where the changes are. A text whose decomposition has combining
marks that NFD would reorder goes through the exact pass-by-pass path
(`_normalize_staged`), which is slow and rare.

The pre-tokeniser then splits the normalised text on whitespace (dropped) and
punctuation (each mark its own word): a regex for ASCII text, and for the rest a
translate that pads punctuation with spaces followed by `str.split`. Regexes
with big Unicode classes are avoided on purpose: `re` compiles them in pure
Python (tens of milliseconds on the cold-start path) and matches their astral
ranges one by one.

Runtime module: standard library only.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from zerostart.tokenize import _unicode_tables as tables

if TYPE_CHECKING:  # the worker imports the manifest itself; we only need the type
    from zerostart.bundle.manifest import TokenizerSettings

# A translate table holds one entry per distinct character seen; an adversary
# sending every code point would otherwise grow it to ~100 MB. Past this many
# entries it is cleared (recomputing an entry costs a few microseconds).
CHAR_CACHE_SIZE_CHARS = 16384

# BERT's "Chinese character" blocks (CJK ideographs, not kana or hangul), as in
# the original BERT code and tokenizers' `is_chinese_char`.
CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0x2F800, 0x2FA1F),
)


class _RangeSet:
    """Membership in sorted inclusive ranges, by bisection."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = sorted(ranges)
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]

    def __contains__(self, cp: int) -> bool:
        i = bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self._ends[i]


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A regex character-class body for inclusive code point ranges."""
    parts = []
    for a, b in sorted(ranges):
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


_OTHER = _RangeSet(tables.OTHER_RANGES)
_MARK = _RangeSet(tables.MARK_RANGES)
_CJK = _RangeSet(CJK_RANGES)
_CCC_UNKNOWN = _RangeSet(tables.CCC_UNKNOWN_RANGES)
_NFD_KEPT = frozenset(tables.NFD_KEPT)
# Whitespace as Rust's char::is_whitespace (the pre-tokeniser) sees it.
_SPACE = _RangeSet(tables.SPACE_RANGES)

# Pre-tokenising. ASCII text: one match per word. Other text: pad punctuation
# with spaces and split on whitespace; Python's whitespace is Rust's plus
# U+001C..U+001F, which only survive normalisation when clean_text is off.
_ASCII_PUNCT = [r for r in tables.PUNCT_RANGES if r[1] < 0x80]
_ASCII_SPACE = [r for r in tables.SPACE_RANGES if r[1] < 0x80]
_ASCII_WORD_RE = re.compile(
    f"[^{_char_class(_ASCII_SPACE + _ASCII_PUNCT)}]+|[{_char_class(_ASCII_PUNCT)}]"
)
_ISOLATE_PUNCT = {cp: f" {chr(cp)} " for a, b in tables.PUNCT_RANGES for cp in range(a, b + 1)}
_NOT_RUST_SPACE_RE = re.compile("[\x1c-\x1f]")


def find_words(norm: str) -> tuple[list[str], list[tuple[int, int]]]:
    """BertPreTokenizer: the words of normalised text and their spans, in order."""
    if _NOT_RUST_SPACE_RE.search(norm) is not None:
        matches = list(_slow_word_re().finditer(norm))
    elif norm.isascii():
        matches = list(_ASCII_WORD_RE.finditer(norm))
    else:
        words = norm.translate(_ISOLATE_PUNCT).split()
        # Words come in order with only whitespace between them, so the first
        # occurrence from `pos` is the word itself.
        spans = []
        pos = 0
        find = norm.find
        for w in words:
            start = find(w, pos)
            pos = start + len(w)
            spans.append((start, pos))
        return words, spans
    return [m.group() for m in matches], [m.span() for m in matches]


@functools.cache
def _slow_word_re() -> re.Pattern[str]:
    """The full split as one regex, for text that keeps U+001C..U+001F (rare)."""
    seps = _char_class((*tables.SPACE_RANGES, *tables.PUNCT_RANGES))
    return re.compile(f"[^{seps}]+|[{_char_class(tables.PUNCT_RANGES)}]")


_ASCII_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _crate_ccc(ch: str) -> int:
    """Canonical combining class as tokenizers' NFD knows it (0 for marks it predates)."""
    ccc = unicodedata.combining(ch)
    return 0 if ccc and ord(ch) in _CCC_UNKNOWN else ccc


def _nfd(ch: str) -> str:
    """NFD of one character, except where tokenizers' older tables do not decompose."""
    return ch if ord(ch) in _NFD_KEPT else unicodedata.normalize("NFD", ch)


def _lower(ch: str) -> str:
    """Rust's char::to_lowercase: per character, so no final-sigma rule."""
    return tables.LOWER_OVERRIDES.get(ord(ch)) or ch.lower()


class _CharTable(dict[int, str]):
    """`str.translate` table filled on first sight of each character."""

    __slots__ = ("_compute",)

    def __init__(
        self, compute: Callable[[int], str], ascii_part: dict[int, str] | None = None
    ) -> None:
        """``ascii_part``: the entries of U+0000..U+007F if known, else computed here."""
        super().__init__(ascii_part or {})
        self._compute = compute
        if ascii_part is None:
            for cp in range(128):
                self[cp] = compute(cp)

    def __missing__(self, cp: int) -> str:
        if len(self) >= CHAR_CACHE_SIZE_CHARS:
            ascii_part = {cp: self[cp] for cp in range(128)}
            self.clear()
            self.update(ascii_part)
        value = self[cp] = self._compute(cp)
        return value


# Markers of the length-class table: one character per input character.
_SAME_LENGTH = "."
_CHANGES_LENGTH = "x"
_MAY_REORDER = "r"
_CHANGED_RUN_RE = re.compile("x+")
_REORDER = _RangeSet(tables.REORDER_RANGES)


# (clean_text, handle_chinese_chars, lowercase, strip_accents) -> the ASCII entries of
# Normalizer's two tables (never changed: each table copies them)
_ASCII_PARTS: dict[tuple[bool, bool, bool, bool], tuple[dict[int, str], dict[int, str]]] = {}


class Normalizer:
    """BertNormalizer for one set of settings, with alignments to the original text."""

    def __init__(self, settings: TokenizerSettings) -> None:
        self.clean_text = settings.clean_text
        self.handle_chinese_chars = settings.handle_chinese_chars
        self.lowercase = settings.lowercase
        # Hugging Face's rule: strip_accents unset follows lowercase.
        self.strip_accents = (
            settings.lowercase if settings.strip_accents is None else settings.strip_accents
        )
        # The ASCII entries, filled up front, depend on the options only: computed once per
        # process for each set of them (0.6 ms; a warm slot's canary has paid it for BERT's).
        key = (self.clean_text, self.handle_chinese_chars, self.lowercase, self.strip_accents)
        ascii_parts = _ASCII_PARTS.get(key)
        if ascii_parts is None:
            self._table = _CharTable(self.map_char)
            self._marks = _CharTable(self._mark)
            _ASCII_PARTS[key] = (dict(self._table), dict(self._marks))
        else:
            self._table = _CharTable(self.map_char, ascii_parts[0])
            self._marks = _CharTable(self._mark, ascii_parts[1])

    # -- one character ------------------------------------------------------
    def map_char(self, cp: int) -> str:
        """What BertNormalizer turns this one character into (maybe '' or several)."""
        ch = chr(cp)
        if self.clean_text:
            if cp in _OTHER:
                return ""
            if cp in _SPACE:  # after _OTHER: U+000B, U+000C, U+0085 are dropped as controls
                return " "
        if self.handle_chinese_chars and cp in _CJK:
            ch = f" {ch} "
        if self.strip_accents:
            ch = "".join(d for c in ch for d in _nfd(c) if ord(d) not in _MARK)
        if self.lowercase:
            ch = "".join(_lower(c) for c in ch)
        return ch

    def _mark(self, cp: int) -> str:
        if self.strip_accents and cp in _REORDER:
            return _MAY_REORDER
        return _SAME_LENGTH if len(self._table[cp]) == 1 else _CHANGES_LENGTH

    def needs_alignment(self, text: str) -> bool:
        """True if normalising `text` changes its length somewhere (or may reorder)."""
        marks = text.translate(self._marks)
        return _CHANGES_LENGTH in marks or _MAY_REORDER in marks

    # -- whole text ---------------------------------------------------------
    def normalize(self, text: str) -> tuple[str, list[int] | None]:
        """Normalised text and, per normalised character, its original index.

        The alignment is None when it is the identity (the common case).
        """
        if text.isascii() and (not self.clean_text or _ASCII_CONTROL_RE.search(text) is None):
            return (text.lower() if self.lowercase else text), None
        marks = text.translate(self._marks)
        if _CHANGES_LENGTH not in marks and _MAY_REORDER not in marks:
            return text.translate(self._table), None
        if _MAY_REORDER in marks:
            return self._normalize_staged(text)
        # Length changes: translate in C, then build the alignment stretch by
        # stretch, touching in Python only the characters that change length.
        table = self._table
        norm = text.translate(table)
        align: list[int] = []
        prev = 0
        for m in _CHANGED_RUN_RE.finditer(marks):
            start, end = m.span()
            align.extend(range(prev, start))
            for i in range(start, end):
                n = len(table[ord(text[i])])
                if n:
                    align.extend([i] * n)
            prev = end
        align.extend(range(prev, len(text)))
        return norm, align

    def _normalize_staged(self, text: str) -> tuple[str, list[int]]:
        """Pass by pass like tokenizers, for text where NFD reorders kept combining marks.

        tokenizers' NFD tags each output character as either consuming the next
        input character (the first of a decomposition) or inserted after it (the
        rest); the canonical sort moves tags with their characters, and then the
        k-th consuming character takes the k-th input's alignment while an inserted
        one repeats the alignment before it. So a reordered mark can end up aligned
        to its neighbour: we replay exactly that.
        """
        cur: list[str] = []
        cur_align: list[int] = []
        for i, ch in enumerate(text):
            cp = ord(ch)
            if self.clean_text:
                if cp in _OTHER:
                    continue
                if cp in _SPACE:
                    ch = " "
            if self.handle_chinese_chars and cp in _CJK:
                # The leading space is inserted: it repeats the previous alignment.
                cur += [" ", ch, " "]
                cur_align += [cur_align[-1] if cur_align else 0, i, i]
            else:
                cur.append(ch)
                cur_align.append(i)
        decomposed: list[tuple[str, bool]] = []  # (character, consumes an input character)
        for ch in cur:
            d = _nfd(ch)
            decomposed.append((d[0], True))
            decomposed += [(e, False) for e in d[1:]]
        k = 0
        while k < len(decomposed):  # canonical ordering of each run of non-zero classes
            if _crate_ccc(decomposed[k][0]) == 0:
                k += 1
                continue
            end = k
            while end < len(decomposed) and _crate_ccc(decomposed[end][0]) != 0:
                end += 1
            decomposed[k:end] = sorted(decomposed[k:end], key=lambda e: _crate_ccc(e[0]))
            k = end
        chars: list[str] = []
        align: list[int] = []
        consumed = 0
        for ch, consumes in decomposed:
            if consumes:
                consumed += 1
            chars.append(ch)
            align.append(cur_align[consumed - 1] if consumed else 0)
        out: list[str] = []
        out_align: list[int] = []
        for ch, i in zip(chars, align, strict=True):
            if ord(ch) in _MARK:
                continue
            piece = _lower(ch) if self.lowercase else ch
            out.append(piece)
            out_align.extend([i] * len(piece))
        return "".join(out), out_align
