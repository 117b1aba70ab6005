"""The worker's BERT tokenizer: the same ids and offsets as Hugging Face `tokenizers`.

Pipeline per sequence, in tokenizers' order:

1. special tokens written in the raw text ("[SEP]", "[MASK]", ...) are cut out
   first, leftmost-longest, and become one token each (tokenizers' added
   vocabulary; these are not marked in ``special_tokens_mask``);
2. each remaining segment is normalised (`_normalize.Normalizer`) with an
   alignment back to the original characters, and split into words;
3. each word goes through WordPiece (`_wordpiece.WordPiece`, memoised);
4. the pair is truncated (``longest_first``) and wrapped as
   ``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]``.

Offsets are Python ``str`` indices into the text the token came from, the way
`tokenizers`' Python binding returns them; specials get (0, 0).

Runtime module: standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zerostart.errors import TokenizerError
from zerostart.tokenize._encoding import (
    SPECIALS_PAIR,
    SPECIALS_SINGLE,
    Encoding,
    Tokens,
    longest_first,
)
from zerostart.tokenize._encoding import budget as _budget
from zerostart.tokenize._normalize import Normalizer, find_words
from zerostart.tokenize._wordpiece import WordPiece, decode_wordpiece, read_vocab
from zerostart.tokenize._wpvocab import MappedWordPieceVocab

if TYPE_CHECKING:  # the worker imports the manifest itself; we only need the type
    from zerostart.bundle.manifest import TokenizerSettings


class WordPieceTokenizer:
    """BERT / DistilBERT tokenisation with exact `tokenizers` parity, in pure Python."""

    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    unk_id: int

    def __init__(
        self, vocab: list[str] | MappedWordPieceVocab, settings: TokenizerSettings, *, source: str
    ) -> None:
        """``vocab``: vocab.txt's tokens (id = position), or a bundle's mapped tokenizer.bin."""
        self.settings = settings
        max_chars = settings.max_input_chars_per_word
        if max_chars < 1:
            raise TokenizerError(f"{source}: max_input_chars_per_word must be positive")
        lookup: Callable[[str], int | None]
        if isinstance(vocab, MappedWordPieceVocab):
            # Nothing built: lookups probe the mapped table, and the words found to be one
            # token are memoised in _whole_word as they are met (at most the vocabulary).
            lookup = vocab.get
            self._token_of: Callable[[int], str] = vocab.id_to_token
            self.vocab_size = vocab.vocab_size
            longest = vocab.longest
            self._whole_word: dict[str, int] = {}
            self._memoise = True
        else:
            ids = dict(zip(vocab, range(len(vocab)), strict=True))  # duplicates: last id wins
            lookup = ids.get
            self._token_of = vocab.__getitem__
            self.vocab_size = len(vocab)
            longest = max(map(len, ids), default=0)
            # A word that is itself a vocabulary token is its own WordPiece result
            # (longest match first), unless it is over the per-word length limit.
            if longest > max_chars:
                self._whole_word = {t: i for t, i in ids.items() if len(t) <= max_chars}
            else:
                self._whole_word = ids
            self._memoise = False
        self._lookup = lookup

        def required(token: str, role: str) -> int:
            i = lookup(token)
            if i is None:
                raise TokenizerError(
                    f"{source}: the {role} token {token!r} is not in the vocabulary",
                    hint="the vocabulary and the tokenizer settings do not belong together",
                )
            return i

        self.unk_id = required(settings.unk_token, "unknown")
        self.cls_id = required(settings.cls_token, "classifier")
        self.sep_id = required(settings.sep_token, "separator")
        self.pad_id = required(settings.pad_token, "padding")

        self._normalizer = Normalizer(settings)
        self._model = WordPiece(
            lookup,
            # mapped: the words found to be one token take the fast path from then on
            whole_words=self._whole_word if self._memoise else None,
            longest=longest,
            unk_id=self.unk_id,
            unk_token=settings.unk_token,
            prefix=settings.continuing_subword_prefix,
            max_input_chars_per_word=max_chars,
        )
        # Special tokens written in the text are matched on the raw text, longest first.
        specials = {}
        for t in (
            settings.pad_token,
            settings.unk_token,
            settings.cls_token,
            settings.sep_token,
            settings.mask_token,
        ):
            if t and (i := lookup(t)) is not None:
                specials[t] = i
        self._special_ids = specials
        ordered = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in ordered))
        self._special_firsts = tuple(sorted({t[0] for t in specials}))

    @classmethod
    def from_files(
        cls, vocab_path: str | os.PathLike[str], settings: TokenizerSettings
    ) -> WordPieceTokenizer:
        """Load a bundle's vocab.txt; raises TokenizerError naming the file if unusable."""
        return cls(read_vocab(vocab_path), settings, source=os.fspath(vocab_path))

    @classmethod
    def from_tables(
        cls, tables_path: str | os.PathLike[str], settings: TokenizerSettings
    ) -> WordPieceTokenizer:
        """Map a bundle's WordPiece tokenizer.bin (``_wpvocab.py``): nothing parsed or built.

        Raises TokenizerError naming the file if it is missing or not such a table.
        """
        return cls(MappedWordPieceVocab(tables_path), settings, source=os.fspath(tables_path))

    # -- vocabulary ------------------------------------------------------------
    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(
                f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return self._token_of(i)

    def token_to_id(self, token: str) -> int | None:
        return self._lookup(token)

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join pieces back into text as transformers' BertTokenizer (WordPiece decoder) does."""
        return decode_wordpiece(tokens, self.settings.continuing_subword_prefix)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Token ids -> text, as `tokenizers`' ``Tokenizer.decode`` does for BERT.

        With ``skip_special_tokens`` the special tokens ([CLS], [SEP], [PAD],
        [UNK], [MASK]) are dropped first; the rest go through the WordPiece
        decoder. Raises TokenizerError for an id outside the vocabulary (where
        `tokenizers` would silently drop it).
        """
        tokens = [self.id_to_token(i) for i in ids]
        if skip_special_tokens:
            specials = self._special_ids
            tokens = [t for t in tokens if t not in specials]
        return self.convert_tokens_to_string(tokens)

    # -- encoding --------------------------------------------------------------
    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        max_length: int | None = None,
        left: bool = False,
    ) -> Encoding:
        """Encode one text or a pair with [CLS]/[SEP]; truncate to max_length tokens if given.

        Truncation drops tokens from the end of each sequence, or from its start
        with ``left`` (tokenizers' ``direction="left"``: the end of the text is kept).
        """
        first = self._encode_sequence(text)
        if pair is None:
            return self._single(first, max_length, left)
        return self._pair(first, self._encode_sequence(pair), max_length, left)

    def encode_batch(
        self, items: Sequence[str | tuple[str, str]], *, max_length: int | None = None
    ) -> list[Encoding]:
        """Encode each item (a text or a (text, pair) tuple); no padding."""
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(self.encode(item, max_length=max_length))
            else:
                text, pair = item
                out.append(self.encode(text, pair, max_length=max_length))
        return out

    def _single(self, seq: Tokens, max_length: int | None, left: bool = False) -> Encoding:
        n = len(seq.ids)
        untruncated = n + SPECIALS_SINGLE
        truncated = False
        if max_length is not None:
            budget = _budget(max_length, SPECIALS_SINGLE)
            if n > budget:
                seq.cut(budget, "left" if left else "right")
                n = budget
                truncated = True
        return Encoding(
            ids=[self.cls_id, *seq.ids, self.sep_id],
            type_ids=[0] * (n + 2),
            offsets=[(0, 0), *seq.offsets, (0, 0)],
            tokens=[self.settings.cls_token, *seq.tokens, self.settings.sep_token],
            special_tokens_mask=[1, *([0] * n), 1],
            word_ids=[None, *seq.word_ids, None],
            sequence_ids=[None, *([0] * n), None],
            truncated=truncated,
            untruncated_length=untruncated,
        )

    def _pair(self, a: Tokens, b: Tokens, max_length: int | None, left: bool = False) -> Encoding:
        n1, n2 = len(a.ids), len(b.ids)
        untruncated = n1 + n2 + SPECIALS_PAIR
        truncated = False
        if max_length is not None:
            budget = _budget(max_length, SPECIALS_PAIR)
            if n1 + n2 > budget:
                n1, n2 = longest_first(n1, n2, budget)
                a.cut(n1, "left" if left else "right")
                b.cut(n2, "left" if left else "right")
                n1, n2 = len(a.ids), len(b.ids)
                truncated = True
        cls_tok, sep_tok = self.settings.cls_token, self.settings.sep_token
        return Encoding(
            ids=[self.cls_id, *a.ids, self.sep_id, *b.ids, self.sep_id],
            type_ids=[0] * (n1 + 2) + [1] * (n2 + 1),
            offsets=[(0, 0), *a.offsets, (0, 0), *b.offsets, (0, 0)],
            tokens=[cls_tok, *a.tokens, sep_tok, *b.tokens, sep_tok],
            special_tokens_mask=[1, *([0] * n1), 1, *([0] * n2), 1],
            word_ids=[None, *a.word_ids, None, *b.word_ids, None],
            sequence_ids=[None, *([0] * n1), None, *([1] * n2), None],
            truncated=truncated,
            untruncated_length=untruncated,
        )

    def _encode_sequence(self, text: str) -> Tokens:
        seq = Tokens([], [], [], [])
        if self._special_firsts and any(c in text for c in self._special_firsts):
            word = 0
            pos = 0
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    word = self._encode_segment(text[pos : m.start()], pos, word, seq)
                seq.ids.append(self._special_ids[m.group()])
                seq.tokens.append(m.group())
                seq.offsets.append((m.start(), m.end()))
                seq.word_ids.append(word)
                word += 1
                pos = m.end()
            if pos < len(text):
                self._encode_segment(text[pos:], pos, word, seq)
        else:
            self._encode_segment(text, 0, 0, seq)
        return seq

    def _encode_segment(self, text: str, base: int, word: int, seq: Tokens) -> int:
        """Append the tokens of a text without special tokens; returns the next word index.

        Written as comprehensions over whole words on purpose: a per-token Python
        loop costs about twice as much, and this is the worker's hot path.
        """
        norm, align = self._normalizer.normalize(text)
        words, spans = find_words(norm)
        if not words:
            return word
        n = len(words)
        whole = [self._whole_word.get(w) for w in words]
        if None not in whole:  # every word is one vocabulary token (most English text)
            seq.ids += whole  # type: ignore[arg-type]
            seq.tokens += words
            if align is None:
                seq.offsets += [(a + base, b + base) for a, b in spans] if base else spans
            else:
                seq.offsets += [(align[a] + base, align[b - 1] + 1 + base) for a, b in spans]
            seq.word_ids += range(word, word + n)
            return word + n
        pieces = self._model.pieces
        found = [pieces(w) for w in words]
        seq.ids += [i for p in found for i in p[0]]
        seq.tokens += [t for p in found for t in p[1]]
        if align is None:
            seq.offsets += [
                (a + s + base, a + e + base)
                for (a, _), p in zip(spans, found, strict=True)
                for s, e in p[2]
            ]
        else:
            seq.offsets += [
                (align[a + s] + base, align[a + e - 1] + 1 + base)
                for (a, _), p in zip(spans, found, strict=True)
                for s, e in p[2]
            ]
        seq.word_ids += [k for k, p in enumerate(found, word) for _ in p[0]]
        return word + n
