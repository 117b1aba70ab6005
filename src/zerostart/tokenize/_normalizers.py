"""Normalisers other than BERT's, with tokenizers' alignment rules (normalizer.rs).

Each takes ``(text, align)`` and returns the new text and its alignment to the
original characters (``_base.Align``). Built from a ``tokenizer.json``
``normalizer`` entry by ``build_normalizer``; the charsmap of ``Precompiled``
lives in ``tokenizer.bin`` (section ``charsmap``), not in the JSON spec.

Runtime module: standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._base import Align, Normalizer
from zerostart.tokenize._compiled import CompiledFile
from zerostart.tokenize._normalize import _SPACE, _CharTable, _lower
from zerostart.tokenize._precompiled import Precompiled


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
        self._literal = literal

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        if self._literal is not None and self._literal not in text:
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
    if kind == "Strip":
        return Strip(bool(spec.get("strip_left", True)), bool(spec.get("strip_right", True)))
    raise TokenizerError(f"normalizer {kind!r}")
