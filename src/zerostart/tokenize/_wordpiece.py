"""WordPiece: greedy longest-match-first over a vocabulary, one word at a time.

Words repeat a lot in real traffic ("the", "of", a model's domain terms), so each
word's pieces are memoised in a bounded LRU (`functools.lru_cache`, implemented
in C: a hit costs about as much as a dict lookup).

Runtime module: standard library only.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

from zerostart.errors import TokenizerError

# Distinct words kept with their pieces; a cached word costs ~0.5 KB, so this is
# a few MB at most, and covers the working vocabulary of a typical workload.
WORD_CACHE_SIZE_WORDS = 16384

# (ids, tokens, (start, end) per piece in the word's characters)
Pieces = tuple[tuple[int, ...], tuple[str, ...], tuple[tuple[int, int], ...]]


def read_vocab(path: str | os.PathLike[str]) -> list[str]:
    """One token per line, the line number is the id (as BERT's vocab.txt)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise TokenizerError(f"{os.fspath(path)}: cannot read vocabulary: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{os.fspath(path)}: vocabulary is not UTF-8: {exc}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline after the last token
    # Built-in loops only: this runs on every cold start (30k lines).
    tokens = (
        [line[:-1] if line.endswith("\r") else line for line in lines] if "\r" in text else lines
    )
    if not tokens:
        raise TokenizerError(f"{os.fspath(path)}: vocabulary is empty")
    return tokens


class WordPiece:
    """The WordPiece model of `tokenizers` (same greedy rule, same [UNK] rule).

    ``lookup``: token -> id or None (a dict's ``get``, or a mapped table's:
    ``_wpvocab.MappedWordPieceVocab``); ``longest``: the longest token, in characters;
    ``whole_words``: if given, each word found to be one whole token is added to it (the
    tokenizer's fast path over a mapped vocabulary; at most the vocabulary's size), once,
    when the word is first met (the result is then cached).
    """

    def __init__(
        self,
        lookup: Callable[[str], int | None],
        *,
        whole_words: dict[str, int] | None = None,
        longest: int,
        unk_id: int,
        unk_token: str,
        prefix: str,
        max_input_chars_per_word: int,
    ) -> None:
        self._lookup = lookup
        self._whole_words = whole_words
        self._unk_id = unk_id
        self._unk_token = unk_token
        self._prefix = prefix
        self._max_chars = max_input_chars_per_word
        # No token is longer than these (in characters, without the prefix), so the
        # longest-match search can start there instead of at the end of the word.
        # One bound for both kinds (the vocabulary's longest token, computed once: a
        # C-level pass over vocab.txt's ~30k tokens, or read from tokenizer.bin); a
        # looser bound only means a lookup or two more for a word's first miss.
        self._max_first = longest
        self._max_cont = max(0, longest - len(prefix))
        self.pieces: Callable[[str], Pieces] = functools.lru_cache(WORD_CACHE_SIZE_WORDS)(
            self._pieces
        )

    def _pieces(self, word: str) -> Pieces:
        n = len(word)
        if n > self._max_chars:
            return (self._unk_id,), (self._unk_token,), ((0, n),)
        lookup = self._lookup
        prefix = self._prefix
        ids: list[int] = []
        tokens: list[str] = []
        spans: list[tuple[int, int]] = []
        start = 0
        while start < n:
            end = min(n, start + (self._max_cont if start else self._max_first))
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                i = lookup(piece)
                if i is not None:
                    ids.append(i)
                    tokens.append(piece)
                    spans.append((start, end))
                    break
                end -= 1
            else:
                return (self._unk_id,), (self._unk_token,), ((0, n),)
            start = end
        if self._whole_words is not None and len(ids) == 1:  # the word is one token (end == n)
            self._whole_words[word] = ids[0]
        return tuple(ids), tuple(tokens), tuple(spans)

    def cache_info(self) -> str:
        return str(self.pieces.cache_info())  # type: ignore[attr-defined]


def decode_wordpiece(tokens: Sequence[str], prefix: str) -> str:
    """tokenizers' WordPiece decoder with cleanup (what transformers' BertTokenizer uses).

    The first token keeps a leading prefix; every later token either loses its
    prefix (glued to the previous one) or gets a space; then each token gets the
    decoder's English clean-up (" ." -> ".", " n't" -> "n't", ...).
    """
    out = []
    for i, token in enumerate(tokens):
        if i:
            token = token[len(prefix) :] if token.startswith(prefix) else " " + token
        for dirty, clean in _CLEANUP:
            token = token.replace(dirty, clean)
        out.append(token)
    return "".join(out)


_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)
