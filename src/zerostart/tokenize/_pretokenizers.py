"""Pre-tokenisers and decoders of the SentencePiece family (tokenizers' metaspace.rs, ...).

A pre-tokeniser takes a normalised segment and its alignment and returns the
text the model reads (maybe rewritten), its alignment, and the words as spans
of it (``_base.PreTokenizer``). A decoder turns tokens back into text.

Runtime module: standard library only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from zerostart.errors import TokenizerError
from zerostart.tokenize import _unicode_tables as tables
from zerostart.tokenize._base import Align
from zerostart.tokenize._normalize import _char_class

PREPEND_SCHEMES = ("always", "first", "never")


class Metaspace:
    """``Metaspace``: spaces become ``replacement``, which may be prepended, then split before it.

    tokenizers' ``prepend``: the added ``▁`` shares the first character's
    alignment. ``split``: each ``▁`` starts a new word (``MergedWithNext``).
    """

    def __init__(self, replacement: str, prepend_scheme: str, split: bool) -> None:
        if len(replacement) != 1:
            raise TokenizerError(f"Metaspace replacement {replacement!r} is not one character")
        if prepend_scheme not in PREPEND_SCHEMES:
            raise TokenizerError(f"Metaspace prepend_scheme {prepend_scheme!r}")
        self.replacement = replacement
        self.prepend_scheme = prepend_scheme
        self._split = split

    @property
    def separator(self) -> str:
        """Where a new word starts ("": nowhere, the segment is one word)."""
        return self.replacement if self._split else ""

    def rewrite(self, text: str, *, at_start: bool) -> tuple[str, bool]:
        """The text with spaces replaced, and whether ``replacement`` was put in front."""
        rep = self.replacement
        text = text.replace(" ", rep)
        scheme = self.prepend_scheme
        if text and text[0] != rep and (scheme == "always" or (scheme == "first" and at_start)):
            return rep + text, True
        return text, False

    def split(
        self, text: str, align: Align, *, at_start: bool
    ) -> tuple[str, Align, list[tuple[int, int]]]:
        rep = self.replacement
        text, prepended = self.rewrite(text, at_start=at_start)
        if not text:
            return text, align, []
        if prepended:
            align = [0, *range(len(text) - 1)] if align is None else [align[0], *align]
        if not self._split:
            return text, align, [(0, len(text))]
        spans = []
        parts = text.split(rep)
        pos = len(parts[0])
        if pos:
            spans.append((0, pos))
        for part in parts[1:]:
            end = pos + 1 + len(part)
            spans.append((pos, end))
            pos = end
        return text, align, spans


@functools.cache
def _words_re() -> re.Pattern[str]:
    """Runs of non-whitespace; compiled on first use (a Unicode class costs ms to compile)."""
    return re.compile(f"[^{_char_class(tables.SPACE_RANGES)}]+")


class WhitespaceSplit:
    """``WhitespaceSplit``: words are the runs between whitespace (Rust's ``is_whitespace``)."""

    def split(
        self, text: str, align: Align, *, at_start: bool
    ) -> tuple[str, Align, list[tuple[int, int]]]:
        return text, align, [m.span() for m in _words_re().finditer(text)]


class MetaspaceDecoder:
    """``Metaspace`` decoder: ``▁`` back to spaces; the first token loses its ``▁``s.

    tokenizers drops every replacement character of the first token (not only
    a leading one) unless ``prepend_scheme`` is ``never``.
    """

    def __init__(self, replacement: str, prepend_scheme: str) -> None:
        self._rep = replacement
        self._strip_first = prepend_scheme != "never"

    def decode(self, tokens: Sequence[str]) -> str:
        rep = self._rep
        out = [t.replace(rep, " ") for t in tokens]
        if out and self._strip_first:
            out[0] = tokens[0].replace(rep, "")
        return "".join(out)


class JoinWithSpaces:
    """No decoder in tokenizer.json: tokenizers joins the tokens with spaces."""

    def decode(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)


def scheme(spec: dict[str, Any]) -> str:
    """``prepend_scheme`` of a Metaspace entry (``add_prefix_space: false`` is the old "never")."""
    value = str(spec.get("prepend_scheme", "always"))
    if spec.get("add_prefix_space") is False:  # the older spelling (tokenizers < 0.19)
        value = "never"
    return value


def metaspace(spec: dict[str, Any]) -> Metaspace:
    return Metaspace(str(spec.get("replacement", "▁")), scheme(spec), bool(spec.get("split", True)))


def metaspace_decoder(spec: dict[str, Any]) -> MetaspaceDecoder:
    return MetaspaceDecoder(str(spec.get("replacement", "▁")), scheme(spec))
