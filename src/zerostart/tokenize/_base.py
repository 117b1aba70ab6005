"""The parts a tokenizer is made of, as `tokenizers` splits them, and how they fit.

Theory of operation. `tokenizers` runs every sequence through the same stages;
`zerostart.tokenize.Tokenizer` (``_pipeline.py``) does the same with one small
object per stage, each built from its ``tokenizer.json`` entry:

1. added tokens (``AddedTokens``) are cut out of the raw text first;
2. each remaining segment is normalised: ``Normalizer.normalize(text)`` gives the
   new text and, per character of it, the index of the original character it
   came from (``Align``; None when that is the identity);
3. ``PreTokenizer.split`` may rewrite the text again (Metaspace turns spaces into
   ``▁``; ByteLevel turns every UTF-8 byte into one character) with its own
   alignment, and gives the words as spans of that text;
4. ``Model.pieces(word)`` cuts one word into tokens (memoised per word);
5. the post-processor adds the special tokens (``<s> A </s>``) and type ids, after
   truncation;
6. ``Decoder.decode(tokens)`` turns tokens back into text.

Offsets: a token covering characters ``[s, e)`` of the pre-tokenised text spans
original characters ``(align[s], align[e - 1] + 1)``: `tokenizers` gives every
normalised character the span of exactly one original character, and a token the
span from its first character's start to its last one's end.

A new model kind (byte-level BPE) plugs in as: a ``Model`` (its compiled tables
read from the bundle's ``tokenizer.bin``, see ``_compiled.py``), registered in
``_pipeline.MODELS``; its pre-tokenizer and decoder registered in
``_pipeline.PRE_TOKENIZERS`` / ``DECODERS``; and its build-time compiler
registered in ``hf.MODEL_COMPILERS``.

Runtime module: standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Per character of a text, the index of the original character it came from;
# None means the identity (character i came from character i).
Align = list[int] | None

# One word's tokens: ids, token strings, (start, end) character spans in the word.
Pieces = tuple[tuple[int, ...], tuple[str, ...], tuple[tuple[int, int], ...]]


class Normalizer(Protocol):
    def normalize(self, text: str, align: Align) -> tuple[str, Align]:
        """The normalised text and its alignment to the original characters.

        ``align`` is the alignment of ``text`` itself (None: identity), so that
        normalisers chain (``Sequence``).
        """
        ...


class PreTokenizer(Protocol):
    def split(
        self, text: str, align: Align, *, at_start: bool
    ) -> tuple[str, Align, list[tuple[int, int]]]:
        """(text', align', word spans in text'): the words the model sees.

        ``at_start``: this segment begins the input (no added token before it);
        Metaspace's ``prepend_scheme: first`` needs it.
        """
        ...


class Model(Protocol):
    vocab_size: int

    def pieces(self, word: str) -> Pieces:
        """One word's tokens; must be memoised (words repeat)."""
        ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, i: int) -> str | None: ...


class Decoder(Protocol):
    def decode(self, tokens: Sequence[str]) -> str:
        """Tokens (special ones already dropped if asked) back to text."""
        ...
