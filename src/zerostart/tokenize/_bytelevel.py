"""GPT-2's byte-level pre-tokeniser and decoder, as Hugging Face `tokenizers`' ``ByteLevel``.

Theory of operation. ``ByteLevel`` splits text with GPT-2's pattern

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

and then spells each piece's UTF-8 bytes with one printable character per byte
(GPT-2's ``bytes_to_unicode``: ``" "`` is ``"Ġ"``, ``"\\n"`` is ``"Ċ"``). Python's
`re` has no ``\\p{L}``; a class of every letter compiles in pure Python (tens of
ms on the cold-start path) and tests astral ranges one by one. So we classify
each character once (letter, number, whitespace, other: the Oniguruma classes
`tokenizers` uses, from the generated `_bytelevel_tables.py`) and ``translate``
the text to an ASCII stand-in of the same length (a non-ASCII letter becomes
``a``, a number ``0``, whitespace ``\\t``, anything else ``!``; ASCII stays
itself, so the contractions still match). The pattern with ASCII classes runs
on the stand-in; since the pattern matches at every position, its pieces tile
the text and their lengths give the spans in the original.

Runtime module: standard library only.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

from zerostart.tokenize import _bytelevel_tables as tables
from zerostart.tokenize._base import Align

# A translate table holds one entry per distinct character seen; past this many
# entries it is cleared so an adversary sending every code point cannot grow it
# without bound (recomputing an entry costs about a microsecond).
CHAR_CACHE_SIZE_CHARS = 16384

# The ASCII pattern: GPT-2's, with the classes spelled for the stand-in text
# (and the contractions' common apostrophe factored out: the same matches).
# Oniguruma's \s is Unicode White_Space: in ASCII only \t \n \v \f \r and space
# (not U+001C..U+001F, which Python's str.isspace() includes).
_SPACE = "\t\n\x0b\x0c\r "
SPLIT_RE = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+"
    rf"| ?[^{_SPACE}A-Za-z0-9]+|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+"
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> character table (openai/gpt-2 ``encoder.py``, ``bytes_to_unicode``).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes take the
    characters from U+0100 on, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR: tuple[str, ...] = tuple(_bytes_to_unicode())
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
SPACE_CHAR = BYTE_TO_CHAR[ord(" ")]  # "Ġ"
# Latin-1 decoding turns each byte into the code point of the same value; this
# table then spells it GPT-2's way. One translate per piece, in C.
_LATIN1_TO_BYTE_CHARS = {b: c for b, c in enumerate(BYTE_TO_CHAR) if chr(b) != c}


_ASCII_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def to_byte_chars(piece: str) -> str:
    """A piece's UTF-8 bytes, one GPT-2 byte character each: ``" é"`` -> ``"ĠÃ©"``.

    ASCII text without control characters other than tab and newline (nearly
    all of it) takes three ``str.replace``: ``translate`` to non-ASCII
    characters goes through a dict per character, several times slower.
    """
    if piece.isascii() and _ASCII_CONTROL_RE.search(piece) is None:
        return piece.replace(" ", "\u0120").replace("\n", "\u010a").replace("\t", "\u0109")
    return piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


class _Ranges:
    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = sorted(ranges)
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]

    def __contains__(self, cp: int) -> bool:
        i = bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self._ends[i]


_LETTER = _Ranges(tables.LETTER_RANGES)
_NUMBER = _Ranges(tables.NUMBER_RANGES)
_WHITESPACE = _Ranges(tables.SPACE_RANGES)


def char_class(cp: int) -> str:
    """The stand-in for a code point: ``a`` letter, ``0`` number, ``\\t`` space, ``!`` other."""
    if cp in _LETTER:
        return "a"
    if cp in _NUMBER:
        return "0"
    if cp in _WHITESPACE:
        return "\t"
    return "!"


class _StandIn(dict[int, str]):
    """The translate table to the ASCII stand-in, filled per character on first sight."""

    def __missing__(self, cp: int) -> str:
        if len(self) >= CHAR_CACHE_SIZE_CHARS:
            self.clear()
        c = self[cp] = chr(cp) if cp < 128 else char_class(cp)  # ASCII stands for itself
        return c


_STAND_IN = _StandIn()


def split(text: str) -> list[str]:
    """GPT-2's pieces of ``text``, in order; they concatenate back to ``text``."""
    if text.isascii():
        return SPLIT_RE.findall(text)
    ends = list(accumulate(map(len, SPLIT_RE.findall(text.translate(_STAND_IN)))))
    return list(map(text.__getitem__, map(slice, [0, *ends], ends)))


# Per UTF-8 byte: 1 if it starts a character, 0 for a continuation byte (0x80-0xBF).
# Accumulating these over a text's bytes gives each byte's character index (+1).
_STARTS_CHAR = bytes(0 if 0x80 <= b <= 0xBF else 1 for b in range(256))


class ByteLevel:
    """The ``ByteLevel`` pre-tokenizer (``_base.PreTokenizer``).

    ``add_prefix_space``: a segment not starting with a space gets one, aligned
    to its first character (tokenizers does this for every segment between
    added tokens, not only the first). ``use_regex``: split with GPT-2's
    pattern, else the segment is one word. The returned text is the byte
    characters; its alignment maps each byte to its character's original index.
    """

    def __init__(self, add_prefix_space: bool, use_regex: bool) -> None:
        self.add_prefix_space = add_prefix_space
        self.use_regex = use_regex

    def split(
        self, text: str, align: Align, *, at_start: bool
    ) -> tuple[str, Align, list[tuple[int, int]]]:
        if not text:
            return text, align, []
        prefixed = self.add_prefix_space and text[0] != " "
        if prefixed:
            text = " " + text
        words = split(text) if self.use_regex else [text]
        # Alignment of the (prefixed) characters to the original ones.
        if prefixed:
            align = [align[0], *align] if align is not None else [0, *range(len(text) - 1)]
        if text.isascii():
            out = to_byte_chars(text)
            ends = list(accumulate(map(len, words)))
        else:
            raw = text.encode("utf-8")
            out = raw.decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)
            # Character index of each byte: running count of character starts, minus one.
            of_byte = list(accumulate(raw.translate(_STARTS_CHAR), initial=-1))[1:]
            align = of_byte if align is None else [align[i] for i in of_byte]
            ends = list(accumulate(map(len, map(str.encode, words))))  # UTF-8 lengths
        return out, align, list(zip([0, *ends], ends, strict=False))


def byte_level(spec: dict[str, Any]) -> ByteLevel:
    """tokenizer.json's ``ByteLevel`` pre-tokenizer entry (``trim_offsets`` is the post-processor's)."""
    return ByteLevel(bool(spec.get("add_prefix_space", True)), bool(spec.get("use_regex", True)))


class ByteLevelDecoder:
    """The ``ByteLevel`` decoder (``_base.Decoder``): see ``decode``."""

    def decode(self, tokens: Sequence[str]) -> str:
        return decode(tokens)


def decode(tokens: Iterable[str]) -> str:
    """``ByteLevel`` decoder: tokens back to text.

    A token made only of byte characters becomes those bytes; any other token
    (an added token such as ``<mask>``) its own UTF-8. The bytes are decoded
    with U+FFFD for invalid sequences, one per maximal invalid subpart, which
    is what Rust's ``String::from_utf8_lossy`` and Python's ``"replace"`` both do.
    """
    out = bytearray()
    table = CHAR_TO_BYTE
    for t in tokens:
        try:
            out += bytes([table[c] for c in t])
        except KeyError:
            out += t.encode("utf-8")
    return out.decode("utf-8", errors="replace")
