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
class letters (UAX #29's rules, written as tokens of one letter each).

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
# One extended grapheme cluster (UAX #29 GB3-GB13) over class letters.
_CLUSTER_RE = re.compile(
    r"rn|[Crn]|p*(?:L*(?:V+|AV*|B)T*|L+|T+|RR|P(?:[ekx]*zP)*|c(?:[kxz]*k[kxz]*c)*|[^Crn])[ekxzs]*"
)
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
        classes = text.translate(_CLASSES)
        if _JOINS_RE.search(classes) is None:  # every cluster is one character
            if _CHANGES_LENGTH not in text.translate(self._marks):
                return text.translate(self._chars), align
            table = self._chars
            changes: list[int] = []
            for ch in text:
                _charge(changes, 1, len(table[ord(ch)]))
            return text.translate(table), _realign(changes, align)
        pieces: list[str] = []
        changes = []
        table = self._chars
        for m in _CLUSTER_RE.finditer(classes):
            start, end = m.span()
            if end - start > 1:
                out = self._cluster(text[start:end])
                if out is not None:
                    pieces.append(out)
                    _charge(changes, end - start, len(out))
                    continue
            for ch in text[start:end]:
                out = table[ord(ch)]
                pieces.append(out)
                _charge(changes, 1, len(out))
        return "".join(pieces), _realign(changes, align)


def _offset(unit: int) -> int:
    """darts-clone's unit offset (spm_precompiled ``ArrayUnit::offset``)."""
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


def _charge(changes: list[int], old: int, new: int) -> None:
    """Record ``old`` characters becoming ``new`` ones (tokenizers' precompiled ``replace``)."""
    diff = new - old
    changes.extend([0] * new)
    if diff > 0:
        changes[-diff:] = [1] * diff
    elif diff < 0 and changes:
        changes[-1] += diff


def _realign(changes: list[int], align: Align) -> list[int]:
    """Alignment after tokenizers' ``NormalizedString::transform`` with these changes."""
    out: list[int] = []
    cursor = 0  # next character of the text before this transform
    last = len(align) - 1 if align is not None else -1
    for change in changes:
        if change > 0:
            k = cursor - 1 if cursor else 0
        else:
            k = cursor
            cursor += 1 - change
        if align is not None:
            out.append(align[min(k, last)])
        else:
            out.append(k)
    return out
