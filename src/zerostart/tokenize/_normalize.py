"""BERT's normaliser and pre-tokeniser, with alignments back to the original text.

Theory of operation. `tokenizers`' BertNormalizer runs four passes over the whole
string (clean text, space out CJK ideographs, NFD + drop non-spacing marks,
lowercase) and tracks, for every normalised character, which original character
it came from. Every pass except canonical reordering inside NFD works one
character at a time, so the result for a character depends on that character
alone: we compute it once per character (`map_char`) and keep it in a
`str.translate` table, so that normalising is one C-level `translate` call.

Offsets need the alignment only when some character changes length (is dropped,
or becomes several). Such characters are known in advance from the Unicode
tables, so one regex search decides between the fast path (alignment is the
identity) and a per-character loop that builds the alignment. A text whose
decomposition has combining marks that NFD would reorder goes through the exact
pass-by-pass path (`_normalize_staged`), which is slow and rare.

The pre-tokeniser then splits the normalised text on whitespace (dropped) and
punctuation (each mark its own word); a single regex does both.

Runtime module: standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable

from zerostart.model.manifest import TokenizerSettings
from zerostart.tokenize import _unicode_tables as tables

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
# Hangul syllables decompose algorithmically into two or three jamo.
HANGUL_RANGES: tuple[tuple[int, int], ...] = ((0xAC00, 0xD7A3),)
# Lowercasing that changes length (U+0130 İ -> i + U+0307) in Unicode up to 16.
LOWER_EXPANDING = (0x130,)


class _RangeSet:
    """Membership in sorted inclusive ranges, by bisection."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = sorted(ranges)
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]

    @property
    def empty(self) -> bool:
        return not self._starts

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

# One match per pre-token: a run of non-space, non-punctuation characters, or a
# single punctuation character. `re` checks a character class's astral ranges
# one by one for every character, which triples the cost on ordinary text, so
# there are three versions of the same split and `find_words` picks the cheapest
# one that is exact for the text at hand.
_BMP_PUNCT = [r for r in tables.PUNCT_RANGES if r[1] <= 0xFFFF]
_ASTRAL_PUNCT = [r for r in tables.PUNCT_RANGES if r[0] > 0xFFFF]
assert all(r[1] <= 0xFFFF or r[0] > 0xFFFF for r in tables.PUNCT_RANGES)
assert all(r[1] <= 0xFFFF for r in tables.SPACE_RANGES)
_ASCII_PUNCT = [r for r in tables.PUNCT_RANGES if r[1] < 0x80]
_ASCII_SPACE = [r for r in tables.SPACE_RANGES if r[1] < 0x80]
_ASCII_WORD_RE = re.compile(
    f"[^{_char_class(_ASCII_SPACE + _ASCII_PUNCT)}]+|[{_char_class(_ASCII_PUNCT)}]"
)
_BMP_WORD_RE = re.compile(
    f"[^{_char_class([*tables.SPACE_RANGES, *_BMP_PUNCT])}]+|[{_char_class(_BMP_PUNCT)}]"
)
_WORD_RE = re.compile(
    f"(?:[^{_char_class([*tables.SPACE_RANGES, *_BMP_PUNCT, (0x10000, 0x10FFFF)])}]+"
    f"|(?![{_char_class(_ASTRAL_PUNCT)}])[\U00010000-\U0010ffff])+"
    f"|[{_char_class(_BMP_PUNCT)}]|[{_char_class(_ASTRAL_PUNCT)}]"
)
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


def find_words(norm: str) -> list[str]:
    """BertPreTokenizer: the words of normalised text, in order (whitespace dropped)."""
    if norm.isascii():
        return _ASCII_WORD_RE.findall(norm)
    if _ASTRAL_RE.search(norm) is None:
        return _BMP_WORD_RE.findall(norm)
    return _WORD_RE.findall(norm)


_ASCII_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _bmp(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]


def _astral(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF]


def _bmp_class(ranges: Iterable[tuple[int, int]]) -> re.Pattern[str] | None:
    """A one-character regex for the BMP part of `ranges` (None when empty)."""
    bmp = _bmp(ranges)
    return re.compile(f"[{_char_class(bmp)}]") if bmp else None


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

    def __init__(self, compute: Callable[[int], str]) -> None:
        super().__init__()
        self._compute = compute
        for cp in range(128):
            self[cp] = compute(cp)

    def __missing__(self, cp: int) -> str:
        if len(self) >= CHAR_CACHE_SIZE_CHARS:
            ascii_part = {cp: self[cp] for cp in range(128)}
            self.clear()
            self.update(ascii_part)
        value = self[cp] = self._compute(cp)
        return value


class Normalizer:
    """BertNormalizer + BertPreTokenizer for one set of settings."""

    def __init__(self, settings: TokenizerSettings) -> None:
        self.clean_text = settings.clean_text
        self.handle_chinese_chars = settings.handle_chinese_chars
        self.lowercase = settings.lowercase
        # Hugging Face's rule: strip_accents unset follows lowercase.
        self.strip_accents = (
            settings.lowercase if settings.strip_accents is None else settings.strip_accents
        )
        self._table = _CharTable(self.map_char)

        # Characters whose normalised form is not exactly one character.
        changing: list[tuple[int, int]] = []
        if self.clean_text:
            changing += tables.OTHER_RANGES
        if self.handle_chinese_chars:
            changing += CJK_RANGES
        if self.lowercase:
            changing += [(cp, cp) for cp in LOWER_EXPANDING]
            changing += [(cp, cp) for cp, s in tables.LOWER_OVERRIDES.items() if len(s) != 1]
        reorder: list[tuple[int, int]] = []
        if self.strip_accents:
            changing += tables.MARK_RANGES
            changing += HANGUL_RANGES
            changing += tables.STRIP_EXPANDING_RANGES
            reorder = list(tables.REORDER_RANGES)
        # A class with astral ranges makes `re` test each of them for every
        # character, so the regexes hold the BMP part and astral characters (rare)
        # are checked one by one against a range set.
        self._changing_bmp = _bmp_class(changing)
        self._changing_astral = _RangeSet(_astral(changing))
        self._reorder_bmp = _bmp_class(reorder)
        self._reorder_astral = _RangeSet(_astral(reorder))
        # Runs of length-changing BMP characters, or any single astral character.
        self._changing_re = re.compile(
            (f"[{_char_class(_bmp(changing))}]+|" if _bmp(changing) else "")
            + "[\\U00010000-\\U0010ffff]"
        )

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

    def needs_alignment(self, text: str) -> bool:
        """True if normalising `text` changes its length somewhere (or may reorder)."""
        return self._has(text, self._changing_bmp, self._changing_astral) or self._needs_reorder(
            text
        )

    def _needs_reorder(self, text: str) -> bool:
        return self._has(text, self._reorder_bmp, self._reorder_astral)

    @staticmethod
    def _has(text: str, bmp: re.Pattern[str] | None, astral: _RangeSet) -> bool:
        if bmp is not None and bmp.search(text):
            return True
        if astral.empty:
            return False
        return any(ord(m.group()) in astral for m in _ASTRAL_RE.finditer(text))

    # -- whole text ---------------------------------------------------------
    def normalize(self, text: str) -> tuple[str, list[int] | None]:
        """Normalised text and, per normalised character, its original index.

        The alignment is None when it is the identity (the common case).
        """
        if text.isascii():
            if not self.clean_text or _ASCII_CONTROL_RE.search(text) is None:
                return (text.lower() if self.lowercase else text), None
        elif not self.needs_alignment(text):
            return text.translate(self._table), None
        elif self.strip_accents and self._needs_reorder(text):
            return self._normalize_staged(text)
        # Length changes: translate in C, then build the alignment stretch by
        # stretch, touching in Python only the characters that change length.
        table = self._table
        norm = text.translate(table)
        align: list[int] = []
        prev = 0
        for m in self._changing_re.finditer(text):
            start, end = m.span()
            align.extend(range(prev, start))
            for i in range(start, end):
                n = len(table[ord(text[i])])
                if n == 1:
                    align.append(i)
                elif n:
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
