"""SentencePiece's ``precompiled_charsmap`` normaliser, exactly as `tokenizers` applies it.

Theory of operation. The charsmap is a darts-clone double-array trie over UTF-8
keys whose values point into a blob of NUL-terminated replacements
(spm_precompiled). `tokenizers` (normalizers/precompiled.rs) walks the text one
extended grapheme cluster at a time: a cluster shorter than 6 UTF-8 bytes is
looked up whole, and if any key is a prefix of it, the whole cluster becomes
the replacement of the *shortest* such key (so ``"①\\u0301"`` becomes ``"1"``:
the accent goes with it); otherwise each character is looked up alone.

Alignments follow tokenizers' ``transform``: each replacement contributes its
characters with a "change" (0: takes the next original character; +1:
inserted, shares the previous one's; a shrink is charged to the last character
written, which then swallows the following originals). A character deleted
when nothing has been written yet is not charged anywhere, which shifts the
rest of the text's alignments by one: a quirk of `tokenizers` we keep.

Fast paths: the per-character replacement and a one-letter "changes length"
marker are ``str.translate`` tables filled on first sight of each character;
grapheme classes (``_grapheme_tables``) are another, and only a text holding a
character that can join a cluster (combining marks, ZWJ, Hangul jamo, CR LF,
regional indicators, prepended marks) is cut into clusters, by a regex over the
class letters (UAX #29's rules, written as tokens of one letter each). A text
with spaces is pieced together from its words' normalisations, remembered per
word, when no word changes length and no cluster can reach over a space
(``_word``): the same result, without touching each character again.

Runtime module: standard library only.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from zerostart.errors import TokenizerError
from zerostart.tokenize._base import Align
from zerostart.tokenize._grapheme_tables import GRAPHEME_RANGES
from zerostart.tokenize._normalize import _CharTable

# tokenizers looks a cluster up whole only below this many UTF-8 bytes.
CLUSTER_LOOKUP_MAX_BYTES = 5
CLUSTER_CACHE_SIZE = 16384  # distinct multi-character clusters remembered
WORD_CACHE_SIZE = 16384  # distinct space-separated words remembered (cleared when full)
# Grapheme classes (tools/gen_grapheme_tables.py) of characters that join the one before
# them into a cluster: Extend (e, x, k) and ZWJ (z) by GB9, SpacingMark (s) by GB9a.
_ATTACHES_BEFORE = frozenset("exkzs")
# A word's part of a text's normalisation (``Precompiled._word``).
_WordPart = str | tuple[str, list[int]] | bool

_STARTS = [a for a, _, _ in GRAPHEME_RANGES]
_ENDS = [b for _, b, _ in GRAPHEME_RANGES]
_LETTERS = [c for _, _, c in GRAPHEME_RANGES]
_HANGUL_FIRST, _HANGUL_LAST, _HANGUL_T_COUNT = 0xAC00, 0xD7A3, 28


def grapheme_class(cp: int) -> str:
    """The one-letter grapheme class of a code point (see tools/gen_grapheme_tables.py)."""
    if _HANGUL_FIRST <= cp <= _HANGUL_LAST:
        return "A" if (cp - _HANGUL_FIRST) % _HANGUL_T_COUNT == 0 else "B"
    i = bisect_right(_STARTS, cp) - 1
    return _LETTERS[i] if i >= 0 and cp <= _ENDS[i] else "."


_CLASSES = _CharTable(grapheme_class)
# Some cluster has two or more characters only if one of these classes occurs.
_JOINS_RE = re.compile("[eksxzpLVTR]|rn")
# Extended grapheme clusters (UAX #29 GB3-GB13) of two or more characters, over class
# letters. Scanning left to right, each attempt starts on a cluster boundary (the end
# of the last match, or one past a one-character cluster), so the matches are exactly
# the multi-character clusters.
_CORE = r"L*(?:V+|AV*|B)T*|L+|T+|RR|P(?:[ekx]*zP)*|c(?:[kxz]*k[kxz]*c)*|[^Crn]"
# The cores of two or more characters, in _CORE's order (Hangul: L* (V+ | LV V* | LVT) T*).
_CORE_MULTI = (
    r"L+(?:V+|AV*|B)T*|V(?:V+T*|T+)|A(?:V+T*|T+)|BT+|L{2,}|T{2,}|RR|P(?:[ekx]*zP)+"
    r"|c(?:[kxz]*k[kxz]*c)+"
)
_MULTI_RE = re.compile(rf"rn|p+(?:{_CORE})[ekxzs]*|(?:{_CORE_MULTI})[ekxzs]*|(?:{_CORE})[ekxzs]+")
_ASCII_CONTROL_RE = re.compile("[\x00-\x1f\x7f]")
_SAME_LENGTH = "."
_CHANGES_LENGTH = "x"


class Precompiled:
    """The ``Precompiled`` normaliser over a charsmap blob (u32 trie size, trie, replacements)."""

    def __init__(self, charsmap: memoryview | bytes) -> None:
        blob = memoryview(charsmap).cast("B")
        if len(blob) < 4:
            raise TokenizerError("precompiled_charsmap is too short")
        size = int.from_bytes(blob[:4], "little")
        if size % 4 or 4 + size > len(blob):
            raise TokenizerError("precompiled_charsmap: trie size does not fit the blob")
        self._array = blob[4 : 4 + size].cast("I")
        self._normalized = bytes(blob[4 + size :])
        try:
            self._normalized.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"precompiled_charsmap replacements are not UTF-8: {exc}") from exc
        self._chars = _CharTable(self._char)
        self._marks = _CharTable(self._mark)
        self._clusters: dict[str, str | None] = {}
        self._printable_ascii_kept: bool | None = None  # does the map leave " ".."~" alone?
        # word -> its normalisation, or False where the text must be taken whole (``_word``).
        self._words: dict[str, _WordPart] = {}

    def transform(self, chunk: str) -> str | None:
        """The replacement of the shortest charsmap key that starts ``chunk`` (None: none)."""
        array = self._array
        node = _offset(array[0])
        for c in chunk.encode("utf-8"):
            if c == 0:  # spm_precompiled stops at NUL
                return None
            node ^= c
            unit = array[node]
            if unit & 0x800000FF != c:  # label
                return None
            node ^= _offset(unit)
            if (unit >> 8) & 1:  # has_leaf: the first (shortest) match wins
                start = array[node] & 0x7FFFFFFF
                end = self._normalized.find(0, start)
                return self._normalized[start : end if end >= 0 else None].decode("utf-8")
        return None

    def _char(self, cp: int) -> str:
        out = self.transform(chr(cp))
        return chr(cp) if out is None else out

    def _mark(self, cp: int) -> str:
        return _SAME_LENGTH if len(self._chars[cp]) == 1 else _CHANGES_LENGTH

    def _cluster(self, cluster: str) -> str | None:
        try:
            return self._clusters[cluster]
        except KeyError:
            pass
        out = None
        if len(cluster.encode("utf-8")) <= CLUSTER_LOOKUP_MAX_BYTES:
            out = self.transform(cluster)
        if len(self._clusters) >= CLUSTER_CACHE_SIZE:
            self._clusters.clear()
        self._clusters[cluster] = out
        return out

    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        table = self._chars
        if text.isascii() and _ASCII_CONTROL_RE.search(text) is None:
            if self._printable_ascii_kept is None:  # decided on first sight, not at load
                self._printable_ascii_kept = all(table[cp] == chr(cp) for cp in range(0x20, 0x7F))
            if self._printable_ascii_kept:
                return text, align
        if " " in text and table[32] == " ":
            words = text.split(" ")
            outs: list[_WordPart | None] = list(map(self._words.get, words))
            if None in outs:
                outs = [self._word(w) if o is None else o for w, o in zip(words, outs, strict=True)]
            # The first word's changes would be charged as at the text's start (a shrink
            # there is charged nowhere and shifts all that follows): then the text whole.
            if False not in outs and not isinstance(outs[0], tuple):
                if tuple not in map(type, outs):
                    return " ".join(outs), align  # type: ignore[arg-type]
                return _pieced(words, outs, align)  # type: ignore[arg-type]
        return self._normalize_text(text, align)

    def _word(self, word: str) -> _WordPart:
        """A space-free word's part of the text's normalisation, or False: take the text whole.

        A word normalises the same alone as within the text when no grapheme
        cluster can reach over a space around it (its first character does not
        attach to the one before: Extend, ZWJ, SpacingMark, UAX #29 GB9/GB9a;
        its last one is not a Prepend, GB9b) and the space maps to a space.
        Its alignment after a space is the one it gets after an "a" (a cluster
        of its own that maps to itself): a shrink at its start is then charged
        to the character before, as `tokenizers` does within a text. Returns
        the text (same length, same alignment) or (text, alignment within the
        word, as it stands after a space).
        """
        if len(self._words) >= WORD_CACHE_SIZE:
            self._words.clear()
        out: _WordPart = False
        if not word:
            out = word
        elif (
            _CLASSES[ord(word[0])] not in _ATTACHES_BEFORE
            and _CLASSES[ord(word[-1])] != "p"
            and self._chars[ord("a")] == "a"
        ):
            done, moved = self._normalize_text("a" + word, None)
            if len(done) == len(word) + 1 and (moved is None or moved == list(range(len(done)))):
                out = done[1:]
            elif moved is not None and done[:1] == "a" and moved[0] == 0:
                out = (done[1:], [m - 1 for m in moved[1:]])
        self._words[word] = out
        return out

    def _normalize_text(self, text: str, align: Align) -> tuple[str, Align]:
        table = self._chars
        if (  # ASCII has no cluster of two characters but CR LF
            text.isascii()
            and "\r\n" not in text
            and _CHANGES_LENGTH not in text.translate(self._marks)
        ):
            return text.translate(table), align
        specials: list[tuple[int, int, str]] = []  # clusters replaced whole: (start, end, out)
        classes = text.translate(_CLASSES)
        if _JOINS_RE.search(classes) is not None:
            for m in _MULTI_RE.finditer(classes):
                start, end = m.span()
                out = self._cluster(text[start:end])
                if out is not None:
                    specials.append((start, end, out))
        marks = text.translate(self._marks)
        if not specials and _CHANGES_LENGTH not in marks:
            return text.translate(table), align  # one character for one: same alignment
        pieces: list[str] = []
        edits = _Edits()
        pos = 0
        for start, end, out in specials:
            self._chars_between(text, marks, pos, start, pieces, edits)
            pieces.append(out)
            edits.charge(end - start, len(out))
            pos = end
        self._chars_between(text, marks, pos, len(text), pieces, edits)
        return "".join(pieces), edits.realign(align)

    def _chars_between(
        self, text: str, marks: str, a: int, b: int, pieces: list[str], edits: _Edits
    ) -> None:
        """Characters ``text[a:b]`` replaced one by one; Python touches only length changes."""
        table = self._chars
        pieces.append(text[a:b].translate(table))
        pos = a
        while (k := marks.find(_CHANGES_LENGTH, pos, b)) >= 0:
            edits.keep(k - pos)
            edits.charge(1, len(table[ord(text[k])]))
            pos = k + 1
        edits.keep(b - pos)


def _pieced(
    words: list[str], outs: list[str | tuple[str, list[int]]], align: Align
) -> tuple[str, Align]:
    """The text of ``Precompiled._word``'s parts joined by spaces, and its alignment."""
    texts: list[str] = []
    moved: list[int] = []
    pos = 0  # original index of the word's first character
    for word, out in zip(words, outs, strict=True):
        if pos:
            moved.append(pos - 1)  # the space before the word
        if isinstance(out, tuple):
            texts.append(out[0])
            moved += [pos + k for k in out[1]]
        else:
            texts.append(out)
            moved += range(pos, pos + len(out))
        pos += len(word) + 1
    return " ".join(texts), moved if align is None else [align[i] for i in moved]


def _offset(unit: int) -> int:
    """darts-clone's unit offset (spm_precompiled ``ArrayUnit::offset``)."""
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


class _Edits:
    """tokenizers' transformations ``(char, change)`` kept sparse: only non-zero changes.

    ``charge`` is precompiled.rs's ``replace``: ``old`` characters become ``new``
    ones; a growth marks the last new characters as inserted (+1), a shrink is
    charged to the last character written so far (which then swallows the
    following originals), or lost if nothing was written yet. ``realign`` then
    replays ``NormalizedString::transform``: a character with change <= 0 takes
    the next original's alignment and consumes 1 - change originals; an
    inserted one repeats the previous original's.
    """

    __slots__ = ("events", "n")

    def __init__(self) -> None:
        self.n = 0  # characters written so far
        self.events: list[list[int]] = []  # [output index, change], change != 0 when written

    def keep(self, count: int) -> None:
        self.n += count

    def charge(self, old: int, new: int) -> None:
        diff = new - old
        self.n += new
        if diff > 0:
            self.events += [[k, 1] for k in range(self.n - diff, self.n)]
        elif diff < 0 and self.n:
            last = self.n - 1
            if self.events and self.events[-1][0] == last:
                self.events[-1][1] += diff
            else:
                self.events.append([last, diff])

    def realign(self, align: Align) -> list[int]:
        out: list[int] = []
        cursor = 0  # next character of the text before this transform
        pos = 0  # next output character
        for index, change in self.events:
            if index > pos:
                run = index - pos
                out += (
                    range(cursor, cursor + run) if align is None else align[cursor : cursor + run]
                )
                cursor += run
            if change > 0:
                k = cursor - 1 if cursor else 0
            else:
                k = cursor
                cursor += 1 - change
            out.append(k if align is None else align[min(k, len(align) - 1)])
            pos = index + 1
        if self.n > pos:
            run = self.n - pos
            out += range(cursor, cursor + run) if align is None else align[cursor : cursor + run]
        return out
