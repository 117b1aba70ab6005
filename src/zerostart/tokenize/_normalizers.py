"""Normalisers other than BERT's, with tokenizers' alignment rules (normalizer.rs).

Each takes ``(text, align)`` and returns the new text and its alignment to the
original characters (``_base.Align``). Built from a ``tokenizer.json``
``normalizer`` entry by ``build_normalizer``; the charsmap of ``Precompiled``
lives in ``tokenizer.bin`` (section ``charsmap``), not in the JSON spec.

Runtime module: standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

from zerostart.errors import TokenizerError
from zerostart.tokenize import _unicode_tables
from zerostart.tokenize._base import Align, Normalizer
from zerostart.tokenize._compiled import CompiledFile
from zerostart.tokenize._normalize import _CCC_UNKNOWN, _SPACE, _CharTable, _lower
from zerostart.tokenize._precompiled import Precompiled

_Form = Literal["NFC", "NFD", "NFKC", "NFKD"]
_NFD_KEPT = frozenset(_unicode_tables.NFD_KEPT)
_NFKD_KEPT = frozenset(_unicode_tables.NFD_KEPT + _unicode_tables.NFKD_KEPT)


def _at(align: Align, k: int) -> int:
    return k if align is None else align[k]


class Replace:
    """``Replace``: every match of a literal or a (simple) regex becomes ``content``.

    tokenizers' ``NormalizedString::replace``: the content's characters are
    inserted after removing the match, so they share the alignment of the
    match's last character.
    """

    def __init__(self, pattern: re.Pattern[str], content: str, literal: str | None) -> None:
        self._re = pattern
        self._content = content
        # A substring every match holds: a text without it is left as it is, without
        # running the pattern (for SentencePiece's " {2,}": two spaces).
        self._required = literal if literal is not None else required_substring(pattern.pattern)

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        if self._required is not None and self._required not in text:
            return text, align
        out: list[str] = []
        new: list[int] = []
        last = 0
        n = len(self._content)
        for m in self._re.finditer(text):
            start, end = m.span()
            out.append(text[last:start])
            new += range(last, start) if align is None else align[last:start]
            out.append(self._content)
            new += [_at(align, end - 1)] * n
            last = end
        if not out:
            return text, align
        out.append(text[last:])
        new += range(last, len(text)) if align is None else align[last:]
        return "".join(out), new


class Lowercase:
    """``Lowercase``: Rust's per-character ``to_lowercase`` (no final-sigma rule)."""

    def __init__(self) -> None:
        self._table = _CharTable(lambda cp: _lower(chr(cp)))

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        if text.isascii():
            return text.lower(), align
        out = text.translate(self._table)
        if len(out) == len(text):  # lowercasing never deletes, so equal length is 1:1
            return out, align
        table = self._table
        new: list[int] = []
        for k, ch in enumerate(text):
            new += [_at(align, k)] * len(table[ord(ch)])
        return out, new


class Strip:
    """``Strip``: drop leading / trailing whitespace (Rust's ``char::is_whitespace``)."""

    def __init__(self, left: bool, right: bool) -> None:
        self._left, self._right = left, right

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        start, end = 0, len(text)
        if self._left:
            while start < end and ord(text[start]) in _SPACE:
                start += 1
        if self._right:
            while end > start and ord(text[end - 1]) in _SPACE:
                end -= 1
        if (start, end) == (0, len(text)):
            return text, align
        return text[start:end], list(range(start, end)) if align is None else align[start:end]


class UnicodeForm:
    """``NFC`` / ``NFD`` / ``NFKC`` / ``NFKD`` as `tokenizers` applies them, with its alignments.

    `tokenizers` normalises with the ``unicode-normalization-alignments`` crate,
    whose tables are older than Python 3.11's ``unicodedata`` (Unicode 14): it
    lacks the decompositions of U+11938 (canonical) and of 72 compatibility
    characters added since Unicode 12 (``_unicode_tables.NFD_KEPT`` /
    ``NFKD_KEPT``), gives the combining marks added since then class 0
    (``CCC_UNKNOWN_RANGES``), and so never composes into U+11938. Every code
    point is checked against `tokenizers` (tests/unit/test_tokenizer_forms.py).

    The crate tags each output character with a change, which
    ``NormalizedString::transform`` turns into alignments: a decomposition's
    first character consumes its original (0), the others are inserted (+1);
    the canonical reordering moves tags with their characters; a composition
    merges the tags of the two characters it joins (a + b - 1). A character
    with change <= 0 takes the next original's index and consumes 1 - change
    originals; an inserted one repeats the last consumed index.

    A text that ``unicodedata.is_normalized`` calls normal is normal for the
    crate too (its decompositions and compositions are a subset of Python's,
    and its unknown marks only split runs that are already sorted): returned
    as is, which is nearly every text.
    """

    def __init__(self, form: str) -> None:
        forms: dict[str, _Form] = {"NFC": "NFC", "NFD": "NFD", "NFKC": "NFKC", "NFKD": "NFKD"}
        if form not in forms:
            raise TokenizerError(f"normalizer {form!r}")
        self._form = forms[form]
        self._compose = form.endswith("C")
        kept = _NFKD_KEPT if form.startswith("NFK") else _NFD_KEPT
        decompose: _Form = "NFKD" if form.startswith("NFK") else "NFD"
        self._table = _CharTable(
            lambda cp: chr(cp) if cp in kept else unicodedata.normalize(decompose, chr(cp))
        )

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        if text.isascii() or unicodedata.is_normalized(self._form, text):
            return text, align
        table = self._table
        chars: list[str] = []
        changes: list[int] = []
        for ch in text:
            d = table[ord(ch)]
            chars += d
            changes += [0] + [1] * (len(d) - 1)
        _reorder(chars, changes)
        if self._compose:
            chars, changes = _recompose(chars, changes)
        new: list[int] = []
        cursor = 0  # next original character
        for change in changes:
            if change > 0:
                new.append(cursor - 1 if cursor else 0)
            else:
                new.append(cursor)
                cursor += 1 - change
        return "".join(chars), new if align is None else [align[i] for i in new]


def _ccc(ch: str) -> int:
    """The crate's canonical combining class (0 for the marks it predates)."""
    c = unicodedata.combining(ch)
    return 0 if c and ord(ch) in _CCC_UNKNOWN else c


def _reorder(chars: list[str], changes: list[int]) -> None:
    """Canonical ordering: each run of non-zero classes sorted by class, stably, tags along."""
    k, n = 0, len(chars)
    while k < n:
        if _ccc(chars[k]) == 0:
            k += 1
            continue
        end = k
        while end < n and _ccc(chars[end]) != 0:
            end += 1
        run = sorted(zip(chars[k:end], changes[k:end], strict=True), key=lambda e: _ccc(e[0]))
        chars[k:end] = [c for c, _ in run]
        changes[k:end] = [t for _, t in run]
        k = end


def _compose_pair(a: str, b: str) -> str | None:
    """The primary composite of a + b, if the crate has it."""
    out = unicodedata.normalize("NFC", a + b)
    if len(out) != 1 or ord(out) in _NFD_KEPT:
        return None
    return out


def _recompose(chars: list[str], changes: list[int]) -> tuple[list[str], list[int]]:
    """Canonical composition (UAX #15) over decomposed, reordered text, merging tags."""
    out: list[str] = []
    tags: list[int] = []
    starter = -1  # index in out of the last starter, -1 before the first one
    last = -1  # class of the last character kept after that starter (-1: none)
    for ch, tag in zip(chars, changes, strict=True):
        cc = _ccc(ch)
        if starter >= 0 and (last == -1 or last < cc):
            done = _compose_pair(out[starter], ch)
            if done is not None:
                out[starter] = done
                tags[starter] += tag - 1
                continue
        if cc == 0:
            starter, last = len(out), -1
        else:
            last = cc if starter >= 0 else last
        out.append(ch)
        tags.append(tag)
    return out, tags


class Chain:
    """``Sequence``: normalisers applied in order."""

    def __init__(self, parts: Sequence[Normalizer]) -> None:
        self._parts = tuple(parts)

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        for part in self._parts:
            text, align = part.normalize(text, align)
        return text, align


def regex_is_simple(pattern: str) -> bool:
    """True for the regexes Python's ``re`` and tokenizers' Oniguruma read alike.

    Literal characters, ``.``-free quantifiers and escapes of punctuation: what
    converted SentencePiece tokenizers use (``" {2,}"``). Anything else is
    refused at convert time rather than guessed.
    """
    if (
        not pattern
        or re.fullmatch(r"(?:[^\\.\[\](){}*+?|^$]|\\[^\w\s]|[*+?]|\{\d+(?:,\d*)?\})+", pattern)
        is None
    ):
        return False
    try:
        return re.compile(pattern).fullmatch("") is None  # an empty match differs between engines
    except re.error:
        return False


_ATOM_RE = re.compile(r"(\\.|[^\\*+?{])((?:[*+?]|\{\d+(?:,\d*)?\})*)")


def required_substring(pattern: str) -> str | None:
    """The longest run of one character that every match of a simple regex holds, or None.

    ``pattern`` passes ``regex_is_simple``: atoms (a character or an escaped
    punctuation mark), each with at most one quantifier. An atom repeated at
    least ``m`` times (no quantifier or ``+``: 1; ``{m}``, ``{m,}``, ``{m,n}``:
    m) puts m copies of its character in a row into every match. ``" {2,}"``
    gives ``"  "``; ``"a*"`` gives None.
    """
    atoms = _ATOM_RE.findall(pattern)
    if "".join(a + q for a, q in atoms) != pattern:
        return None
    best = ""
    for atom, quantifier in atoms:
        if quantifier in ("", "+"):
            m = 1
        elif (q := re.fullmatch(r"\{(\d+)(?:,\d*)?\}", quantifier)) is not None:
            m = int(q.group(1))
        else:
            m = 0  # *, ?, lazy or stacked quantifiers
        if m > len(best):
            best = atom[-1] * m
    return best or None


def build_normalizer(spec: dict[str, Any] | None, tables: CompiledFile | None) -> Normalizer | None:
    """The normaliser for a ``tokenizer.json`` ``normalizer`` entry (None for none)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        parts = [build_normalizer(s, tables) for s in spec["normalizers"]]
        return Chain([p for p in parts if p is not None])
    if kind == "Precompiled":
        if tables is None or not tables.has("charsmap"):
            raise TokenizerError("Precompiled normalizer without its charsmap section")
        return Precompiled(tables.section("charsmap"))
    if kind == "Replace":
        pattern = spec["pattern"]
        if "String" in pattern:
            literal = str(pattern["String"])
            if not literal:
                raise TokenizerError("Replace with an empty pattern")
            return Replace(re.compile(re.escape(literal)), str(spec["content"]), literal)
        regex = str(pattern["Regex"])
        if not regex_is_simple(regex):
            raise TokenizerError(f"Replace with the regex {regex!r}")
        return Replace(re.compile(regex), str(spec["content"]), None)
    if kind == "Lowercase":
        return Lowercase()
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return UnicodeForm(str(kind))
    if kind == "Strip":
        return Strip(bool(spec.get("strip_left", True)), bool(spec.get("strip_right", True)))
    raise TokenizerError(f"normalizer {kind!r}")
