"""A tokenizer assembled from `tokenizers`' parts: the Unigram (and BPE) families.

The stages and their contracts are in ``_base.py``. ``Tokenizer.from_bundle``
reads the spec that ``zerostart convert`` stored in the manifest (the
tokenizer.json entries minus the big tables) and maps ``tokenizer.bin``; each
part is built by the registry entry for its ``type``:

* ``MODELS``: model type -> builder(meta, tables), ``meta`` being the model's
  entry in ``tokenizer.bin``'s header;
* ``PRE_TOKENIZERS`` / ``DECODERS``: type -> builder(spec entry);
* normalisers and post-processors: ``_normalizers`` / ``_postprocess``.

A type missing here was already refused at convert time (``hf.py``), so a
bundle that loads is one whose every part is implemented.

Runtime module: standard library only.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._base import Decoder, Model, PreTokenizer
from zerostart.tokenize._compiled import NATIVE_LIB_NAME, CompiledFile
from zerostart.tokenize._encoding import TRUNCATION_DIRECTIONS, Encoding, Tokens, budget, truncate
from zerostart.tokenize._normalize import _SPACE
from zerostart.tokenize._normalizers import build_normalizer
from zerostart.tokenize._postprocess import build_post_processor
from zerostart.tokenize._pretokenizers import (
    Metaspace,
    WhitespaceSplit,
    metaspace,
    metaspace_decoder,
)

if TYPE_CHECKING:
    from zerostart.tokenize._bpe import BPE
    from zerostart.tokenize._native import NativeLib
    from zerostart.tokenize._unigram import Unigram

TABLES_NAME = "tokenizer.bin"


# Each family's modules are imported when a tokenizer of that family is built, not with this
# module: a worker serving an XLM-R model does not pay for the byte-level BPE code (and its
# Unicode class tables) at start, nor a RoBERTa one for the Unigram code.
def _unigram() -> type[Unigram]:
    from zerostart.tokenize._unigram import Unigram

    return Unigram


def _bpe() -> type[BPE]:
    from zerostart.tokenize._bpe import BPE

    return BPE


def _bytelevel() -> Any:
    from zerostart.tokenize import _bytelevel

    return _bytelevel


MODELS: dict[str, Callable[[dict[str, Any], CompiledFile, NativeLib | None], Model]] = {
    "Unigram": lambda meta, tables, native: _unigram()(tables, meta, native),
    "BPE": lambda meta, tables, native: _bpe()(tables, meta, native),
}
# The model kinds whose inner loops tokenizer.so carries (compile.py builds it for them).
NATIVE_MODELS = ("Unigram", "BPE")
PRE_TOKENIZERS: dict[str, Callable[[dict[str, Any]], PreTokenizer]] = {
    "Metaspace": metaspace,
    "WhitespaceSplit": lambda _spec: WhitespaceSplit(),
    "ByteLevel": lambda spec: _bytelevel().byte_level(spec),
}
DECODERS: dict[str, Callable[[dict[str, Any]], Decoder]] = {
    "Metaspace": metaspace_decoder,
    "ByteLevel": lambda _spec: _bytelevel().ByteLevelDecoder(),
}


class AddedTokens:
    """tokenizers' added vocabulary: tokens cut out of the raw text before anything else.

    Leftmost-longest matching (aho-corasick ``LeftmostLongest``); ``lstrip`` /
    ``rstrip`` widen a match over the whitespace before / after it (the token's
    text and offsets then include that whitespace). Two passes, as tokenizers'
    ``extract_and_normalize``: tokens with ``normalized: false`` (the specials)
    first over the whole text, then those with ``normalized: true`` within the
    gaps (convert refuses the latter when a normaliser would change the gaps).
    So ``"[MASK]  [MASK]"`` with ``[MASK]`` lstrip and ``"  "`` an added token
    gives two ``[MASK]``, the second one over the spaces.
    """

    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        self.by_content: dict[str, dict[str, Any]] = {}
        for e in entries:
            self.by_content[str(e["content"])] = e
        self.by_id = {int(e["id"]): str(e["content"]) for e in entries}
        self.special_ids = frozenset(int(e["id"]) for e in entries if e.get("special"))
        # tokenizers' default: special tokens are matched raw, others after normalisation.
        passes = (
            [
                c
                for c, e in self.by_content.items()
                if not e.get("normalized", not e.get("special"))
            ],
            [c for c, e in self.by_content.items() if e.get("normalized", not e.get("special"))],
        )
        # Per pass: the tokens' pattern and one of their first characters (a text holding
        # none of them is left whole without running the pattern: most texts).
        self._passes = [
            (
                re.compile("|".join(map(re.escape, sorted(p, key=len, reverse=True)))),
                re.compile("[" + "".join(sorted({re.escape(c[0]) for c in p})) + "]"),
            )
            for p in passes
            if p
        ]

    def split(self, text: str) -> list[tuple[int, int, int | None]]:
        """(start, end, id) pieces covering ``text``; id None for ordinary text."""
        out: list[tuple[int, int, int | None]] = [(0, len(text), None)] if text else []
        for pattern, firsts in self._passes:
            done: list[tuple[int, int, int | None]] = []
            for start, end, added in out:
                if added is not None or firsts.search(text, start, end) is None:
                    done.append((start, end, added))
                else:
                    done += [
                        (a + start, b + start, i)
                        for a, b, i in self._find(pattern, text[start:end])
                    ]
            out = done
        return out

    def _find(self, pattern: re.Pattern[str], text: str) -> list[tuple[int, int, int | None]]:
        out: list[tuple[int, int, int | None]] = []
        pos = 0
        for m in pattern.finditer(text):
            start, end = m.span()
            entry = self.by_content[m.group()]
            if entry.get("lstrip"):
                while start > pos and ord(text[start - 1]) in _SPACE:
                    start -= 1
            if entry.get("rstrip"):
                while end < len(text) and ord(text[end]) in _SPACE:
                    end += 1
            if start < pos:  # an earlier rstrip took this match's start: tokenizers skips too
                continue
            if pos < start:
                out.append((pos, start, None))
            out.append((start, end, int(entry["id"])))
            pos = end
        if pos < len(text):
            out.append((pos, len(text), None))
        return out


class Tokenizer:
    """Normaliser + pre-tokeniser + model + post-processor + decoder, `tokenizers`' way."""

    def __init__(
        self, spec: dict[str, Any], tables: CompiledFile, native: NativeLib | None = None
    ) -> None:
        self.spec = spec
        model_meta = tables.meta.get("model", {})
        kind = model_meta.get("type")
        try:
            self.model: Model = MODELS[kind](model_meta, tables, native)
            self._normalizer = build_normalizer(spec.get("normalizer"), tables)
            pre = spec.get("pre_tokenizer")
            self._pre = PRE_TOKENIZERS[pre["type"]](pre) if pre else WhitespaceSplit()
            dec = spec.get("decoder")
            self._decoder = DECODERS[dec["type"]](dec) if dec else None
            self._post = build_post_processor(spec.get("post_processor"))
        except KeyError as exc:
            raise TokenizerError(
                f"{tables.path}: the tokenizer part {exc.args[0]!r} is not implemented",
                hint="re-run zerostart convert with this version of zerostart",
            ) from exc
        # One native call per segment: Metaspace's rewrite, then the words and their tokens.
        self._words_native = (
            self.model.encode_words
            if kind == "Unigram"
            and isinstance(self.model, _unigram())
            and self.model.native is not None
            and isinstance(self._pre, Metaspace)
            else None
        )
        self._sep = self._pre.separator.encode("utf-8") if isinstance(self._pre, Metaspace) else b""
        # Byte-level BPE: the split, the merges and the tokens in one native call too.
        self._bytelevel_native: Callable[..., int | None] | None = None
        if kind == "BPE" and isinstance(self.model, _bpe()) and self.model.native_ready:
            from zerostart.tokenize._bytelevel import ByteLevel

            if type(self._pre) is ByteLevel:
                self._bytelevel_native = functools.partial(
                    self.model.encode_text,
                    add_prefix_space=self._pre.add_prefix_space,
                    use_regex=self._pre.use_regex,
                )
        self._added = AddedTokens(spec.get("added_tokens", []))
        self.direction = str(spec.get("truncation_direction", "right"))
        if self.direction not in TRUNCATION_DIRECTIONS:
            raise TokenizerError(f"truncation direction {self.direction!r}")
        self.vocab_size = max(self.model.vocab_size, max(self._added.by_id, default=-1) + 1)
        self.unk_token = str(spec.get("unk_token", ""))
        pad = self.token_to_id(str(spec.get("pad_token", "")))
        self.pad_id = pad if pad is not None else 0
        unk = self.token_to_id(self.unk_token)
        self.unk_id = unk if unk is not None else -1

    @classmethod
    def from_bundle(
        cls, folder: str | os.PathLike[str], spec: dict[str, Any], *, native: bool = True
    ) -> Tokenizer:
        """Map ``folder/tokenizer.bin`` and build the parts ``spec`` names.

        ``native``: use ``folder/tokenizer.so`` when it is there and loads
        (``_native.load``); False: the pure-Python code (the same answers).
        """
        tables = CompiledFile(os.path.join(folder, TABLES_NAME))
        lib = None
        if (
            native
            and tables.meta.get("model", {}).get("type") in NATIVE_MODELS
            and os.path.isfile(os.path.join(folder, NATIVE_LIB_NAME))
        ):
            from zerostart.tokenize._native import load  # ctypes: only with the library

            lib = load(folder)
        return cls(spec, tables, lib)

    # -- vocabulary ------------------------------------------------------------
    def id_to_token(self, i: int) -> str:
        token = self._added.by_id.get(i)
        if token is None:
            token = self.model.id_to_token(i)
        if token is None:
            raise TokenizerError(
                f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return token

    def token_to_id(self, token: str) -> int | None:
        entry = self._added.by_content.get(token)
        if entry is not None:
            return int(entry["id"])
        return self.model.token_to_id(token) if token else None

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self._decoder.decode(tokens) if self._decoder else " ".join(tokens)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Token ids -> text as `tokenizers`' ``decode``; TokenizerError for an unknown id."""
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._added.special_ids]
        return self.convert_tokens_to_string([self.id_to_token(i) for i in ids])

    # -- encoding --------------------------------------------------------------
    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        max_length: int | None = None,
        left: bool = False,
    ) -> Encoding:
        """Encode one text or a pair with the post-processor's specials; truncate to max_length.

        ``left``: truncate from the start (a request's TEI ``truncation_direction``
        "left"); otherwise the direction tokenizer.json's ``truncation`` names
        (right when it names none).

        Raises TokenizerError for text that is not valid Unicode (a lone
        surrogate, which JSON's ``\\ud800`` escape can carry): its UTF-8 bytes,
        which byte-level BPE and Unigram read, do not exist.
        """
        try:
            a = self._sequence(text)
            b = self._sequence(pair) if pair is not None else None
        except UnicodeEncodeError as exc:
            raise TokenizerError(
                f"the text holds {exc.object[exc.start : exc.end]!a} at character {exc.start}, "
                f"which is not valid Unicode ({exc.reason})"
            ) from exc
        specials = self._post.added(b is not None)
        untruncated = len(a.ids) + (len(b.ids) if b is not None else 0) + specials
        cut = False
        if max_length is not None:
            direction = "left" if left else self.direction
            cut = truncate(a, b, budget(max_length, specials), direction)
        return self._post.apply(a, b, truncated=cut, untruncated=untruncated)

    def encode_batch(
        self, items: Sequence[str | tuple[str, str]], *, max_length: int | None = None
    ) -> list[Encoding]:
        """Encode each item (a text or a (text, pair) tuple); no padding."""
        return [
            self.encode(i, max_length=max_length)
            if isinstance(i, str)
            else self.encode(i[0], i[1], max_length=max_length)
            for i in items
        ]

    def _sequence(self, text: str) -> Tokens:
        seq = Tokens([], [], [], [])
        word = 0
        for start, end, added in self._added.split(text):
            if added is None:
                word = self._segment(text[start:end], start, word, seq)
            else:
                seq.ids.append(added)
                seq.tokens.append(text[start:end])
                seq.offsets.append((start, end))
                seq.word_ids.append(word)
                word += 1
        return seq

    def _segment(self, text: str, base: int, word: int, seq: Tokens) -> int:
        """Append the tokens of text without added tokens; returns the next word index."""
        align = None
        if self._normalizer is not None:
            text, align = self._normalizer.normalize(text, None)
        if self._bytelevel_native is not None:
            done = self._bytelevel_native(text, align, base, word, seq)
            if done is not None:
                return done
        elif self._words_native is not None:
            assert isinstance(self._pre, Metaspace)
            rewritten, prepended = self._pre.rewrite(text, at_start=base == 0)
            done = self._words_native(rewritten, align, prepended, self._sep, base, word, seq)
            if done is not None:
                return done
        text, align, spans = self._pre.split(text, align, at_start=base == 0)
        if not spans:
            return word
        # Whole-segment C-level passes (map / chain) rather than a loop per word:
        # this is the worker's hot path, and a per-word loop costs twice as much.
        words = list(map(self.model.pieces, map(text.__getitem__, itertools.starmap(slice, spans))))
        ids = list(map(_first, words))
        seq.ids += itertools.chain.from_iterable(ids)
        seq.tokens += itertools.chain.from_iterable(map(_second, words))
        if align is None:
            seq.offsets += [
                (a + s + base, a + e + base)
                for (a, _), w in zip(spans, words, strict=True)
                for s, e in w[2]
            ]
        else:
            seq.offsets += [
                (align[a + s] + base, align[a + e - 1] + 1 + base)
                for (a, _), w in zip(spans, words, strict=True)
                for s, e in w[2]
            ]
        seq.word_ids += itertools.chain.from_iterable(
            map(itertools.repeat, range(word, word + len(words)), map(len, ids))
        )
        return word + len(spans)


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
