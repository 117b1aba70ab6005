"""Byte-level BPE tokenizers against Hugging Face `tokenizers` on the same tokenizer.json.

Three tokenizers trained here by `tokenizers` itself at 40,000 tokens
(``tests/bpe_tokenizers.py``): RoBERTa's layout, RoBERTa's with
``add_prefix_space``, and ModernBERT's (TemplateProcessing, ``[MASK]`` lstrip,
non-special whitespace added tokens). Each goes through
``zerostart.tokenize.compile`` into a ``tokenizer.bin`` and is compared field by
field with ``tokenizers.Tokenizer.from_file`` (not transformers' AutoTokenizer):
the shared corpus at several lengths, pairs under ``longest_first`` truncation
from the right and from the left, every pair shape up to 7 + 7 words, 1,500
seeded random strings, every code point, batches and the decoder.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tokenizer_parity import _random_texts
from tokenizer_corpus import corpus, pairs

from bpe_tokenizers import KINDS, trained
from code_points import sweep_code_points
from zerostart.tokenize import Encoding, Tokenizer
from zerostart.tokenize.compile import compile_tokenizer_json

pytestmark = pytest.mark.parity

FUZZ_STRINGS_PER_MODEL = 1500
FUZZ_SEED = 20261207
FIELDS = ("ids", "type_ids", "offsets", "tokens", "word_ids", "sequence_ids", "special_tokens_mask")
CODE_POINTS_PER_TEXT = 64
# What byte-level tokenizers meet that the shared corpus has little of.
BPE_TEXTS = [
    "Hello <mask> world",
    "Hello<mask>world  <mask>   <mask>\t<mask>",
    "<s>Hello</s> <s> x </s></s>",
    "[CLS] a [SEP] b [MASK]  [MASK]x[PAD]",
    "code:\n    def f(x):\n        return x  # two  spaces\n\n\n",
    "        sixteen spaces then                 seventeen",
    "it's they're we've I'm you'll he'd IT'S 's 't 're",
    "numbers 12345 ١٢٣ ①② ⅻ 3.14 1,000,000",
    " leading space",
    "trailing space ",
    "  ",
    "\u00a0nbsp\u00a0and\u2003em space\u3000ideographic",
    "Ġ Ċ ĉ byte-level look-alikes âĢĶ",
    "é" * 300,
    "x" * 3000,
    "😀" * 70,
]
SPECIAL_PIECES = ["<mask>", "<s>", "</s>", "<pad>", "[MASK]", "[CLS]", "  ", "    ", "\t", "'s"]


@pytest.fixture(scope="session")
def bpe_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tokenizers")
    # the folder the integration tests train into too: each layout is trained once per run
    shared = tmp_path_factory.getbasetemp() / "bpe-tokenizer"
    shared.mkdir(exist_ok=True)
    return shared


class Pair:
    """Ours (compiled into tokenizer.bin) and the reference for one trained tokenizer."""

    def __init__(self, kind: str, folder: Path, direction: str = "right") -> None:
        import tokenizers

        self.kind = kind
        self.direction = direction
        self.path = trained(kind, folder)
        out = folder / f"{kind}-bundle"
        out.mkdir(exist_ok=True)
        self.settings = compile_tokenizer_json(self.path, out, special_tokens={})
        spec = {**self.settings.spec, "truncation_direction": direction}
        self.ours = Tokenizer.from_bundle(out, spec)
        assert self.ours.model.native_ready  # type: ignore[attr-defined]  # the C loops
        # The pure-Python fallback (no compiler, ZEROSTART_TOKENIZER_NATIVE=0): checked
        # against the C path on the fuzz and the corpus (cheap; no reference call).
        self.python = Tokenizer.from_bundle(out, spec, native=False)
        self.ref = tokenizers.Tokenizer.from_file(str(self.path))
        self.ref.no_padding()

    def reference(self, text: str, pair: str | None, max_length: int | None) -> Any:
        if max_length is None:
            self.ref.no_truncation()
        else:
            self.ref.enable_truncation(
                max_length=max_length, strategy="longest_first", direction=self.direction
            )
        return self.ref.encode(text, pair)

    def mismatch(self, text: str, pair: str | None, max_length: int | None) -> str | None:
        """None if ours equals the reference on every field, else a description."""
        ours: Encoding = self.ours.encode(text, pair, max_length=max_length)
        ref = self.reference(text, pair, max_length)
        for field in FIELDS:
            a, b = getattr(ours, field), list(getattr(ref, field))
            if a != b:
                k = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                    min(len(a), len(b)),
                )
                return (
                    f"{self.kind}: {field} differ at {k} for {text[:80]!r} / "
                    f"{(pair or '')[:80]!r} (max_length={max_length}, {self.direction}): "
                    f"ours {a[max(0, k - 2) : k + 3]} ref {b[max(0, k - 2) : k + 3]} "
                    f"(lengths {len(a)} vs {len(b)})"
                )
        full = len(self.reference(text, pair, None).ids)
        if ours.untruncated_length != full or ours.truncated != (full > len(ours.ids)):
            return f"{self.kind}: truncation bookkeeping for {text[:80]!r}: {ours.untruncated_length}/{ours.truncated}, ref {full}"
        return None


@pytest.fixture(scope="module", params=KINDS)
def pair(request: pytest.FixtureRequest, bpe_files: Path) -> Pair:
    return Pair(request.param, bpe_files)


@pytest.fixture(scope="module", params=KINDS)
def left_pair(request: pytest.FixtureRequest, bpe_files: Path) -> Pair:
    return Pair(request.param, bpe_files, direction="left")


def test_vocabulary_matches(pair: Pair) -> None:
    assert pair.ours.vocab_size == pair.ref.get_vocab_size(with_added_tokens=True)
    vocab = pair.ref.get_vocab(with_added_tokens=True)
    assert pair.ours.vocab_size > 30_000  # a realistic size, not a toy
    for token, i in vocab.items():
        assert pair.ours.token_to_id(token) == i, token
        assert pair.ours.id_to_token(i) == token
    assert pair.ours.token_to_id("no such token ☃") is None


@pytest.mark.parametrize("max_length", [None, 128, 512])
def test_corpus_matches(pair: Pair, max_length: int | None) -> None:
    bad = [m for t in [*corpus(), *BPE_TEXTS] if (m := pair.mismatch(t, None, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def _python_differs(pair: Pair, text: str, pair_text: str | None, ml: int | None) -> bool:
    a = pair.ours.encode(text, pair_text, max_length=ml)
    b = pair.python.encode(text, pair_text, max_length=ml)
    return (a.ids, a.tokens, a.offsets, a.word_ids) != (b.ids, b.tokens, b.offsets, b.word_ids)


def test_the_python_fallback_matches_the_native_path(pair: Pair) -> None:
    cases = [(t, None, None) for t in [*corpus(), *BPE_TEXTS]]
    cases += list(_fuzz(FUZZ_SEED, FUZZ_STRINGS_PER_MODEL))
    bad = [(t[:60], p) for t, p, ml in cases if _python_differs(pair, t, p, ml)]
    assert not bad, f"{len(bad)} differ; first: {bad[:3]}"


@pytest.mark.parametrize("max_length", [None, 7, 16, 64, 128, 512])
def test_pairs_match_with_longest_first_truncation(pair: Pair, max_length: int | None) -> None:
    cases = [*pairs(), *zip(BPE_TEXTS, reversed(BPE_TEXTS), strict=True)]
    if max_length is not None and max_length < 128:
        # The reference materialises overflow windows of both sides (their product).
        cases = [(a, b) for a, b in cases if len(a) + len(b) < 2000]
    bad = [m for a, b in cases if (m := pair.mismatch(a, b, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


@pytest.mark.parametrize("max_length", [7, 16, 64])
def test_left_truncation_matches(left_pair: Pair, max_length: int) -> None:
    cases: list[tuple[str, str | None]] = [(t, None) for t in [*corpus(), *BPE_TEXTS]]
    cases += [(a, b) for a, b in pairs() if len(a) + len(b) < 2000]
    bad = [m for a, b in cases if (m := left_pair.mismatch(a, b, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_truncation_of_pairs_on_every_length_split(pair: Pair) -> None:
    """longest_first arithmetic on all small shapes, with RoBERTa's four specials per pair."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    bad = []
    for n1 in range(0, 8):
        for n2 in range(0, 8):
            a, b = " ".join(words[:n1]), " ".join(words[:n2][::-1])
            for max_length in range(4, n1 + n2 + 6):
                if m := pair.mismatch(a, b, max_length):
                    bad.append(m)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def _fuzz(seed: int, n: int) -> Iterator[tuple[str, str | None, int | None]]:
    """The WordPiece fuzz's random Unicode, with this family's specials and spaces spliced in."""
    rng = random.Random(seed)
    for text, pair_text, max_length in _random_texts(seed, n):

        def splice(s: str) -> str:
            for _ in range(rng.randint(0, 3)):
                k = rng.randint(0, len(s))
                s = s[:k] + rng.choice(SPECIAL_PIECES) + s[k:]
            return s

        yield splice(text), (splice(pair_text) if pair_text is not None else None), max_length


def test_random_unicode_fuzz(pair: Pair) -> None:
    bad = [
        m
        for t, p, ml in _fuzz(FUZZ_SEED, FUZZ_STRINGS_PER_MODEL)
        if (m := pair.mismatch(t, p, None if ml is None else ml + 2))
    ]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_every_code_point(pair: Pair) -> None:
    """Every code point, 64 to a text, once space-separated and once run together.

    CI sweeps the RoBERTa layout (the split itself is swept for every code point by
    test_tokenizer_bytelevel_unicode.py); ZEROSTART_FULL_PARITY=1 sweeps every layout
    (about a minute each): run it when the BPE or byte-level code changes.
    """
    if pair.kind != "roberta" and os.environ.get("ZEROSTART_FULL_PARITY") != "1":
        pytest.skip("every-code-point sweep of this layout: set ZEROSTART_FULL_PARITY=1")
    bad = []
    cps = sweep_code_points()  # in CI: planes 0-3, 14 and a sample of the rest
    for k in range(0, len(cps), CODE_POINTS_PER_TEXT):
        chars = [chr(cp) for cp in cps[k : k + CODE_POINTS_PER_TEXT]]
        for sep in (" ", ""):
            text = sep.join(chars)
            ours = pair.ours.encode(text)
            ref = pair.reference(text, None, None)
            if ours.ids != ref.ids or ours.offsets != list(ref.offsets):
                bad.append(f"U+{cps[k]:04X}.. sep {sep!r}: {pair.mismatch(text, None, None)}")
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_batch_matches_reference_batch(pair: Pair) -> None:
    items: list[str | tuple[str, str]] = [*corpus()[:50], *pairs()[:20], *BPE_TEXTS]
    ours = pair.ours.encode_batch(items, max_length=32)
    pair.ref.enable_truncation(max_length=32, strategy="longest_first")
    ref = pair.ref.encode_batch(items)
    assert [e.ids for e in ours] == [r.ids for r in ref]
    assert [e.offsets for e in ours] == [list(r.offsets) for r in ref]
    assert [e.special_tokens_mask for e in ours] == [r.special_tokens_mask for r in ref]


def test_decode_matches(pair: Pair) -> None:
    """Round trips, and random id runs that cut UTF-8 sequences (U+FFFD where Rust puts it)."""
    rng = random.Random(FUZZ_SEED)
    pair.ref.no_truncation()
    cases = [pair.ref.encode(t).ids for t in [*corpus(), *BPE_TEXTS]]
    n = pair.ours.vocab_size
    cases += [[rng.randrange(n) for _ in range(rng.randint(0, 20))] for _ in range(2000)]
    cases += [[rng.randrange(300) for _ in range(rng.randint(1, 8))] for _ in range(2000)]
    bad = []
    for ids in cases:
        for skip in (True, False):
            got = pair.ours.decode(ids, skip_special_tokens=skip)
            want = pair.ref.decode(ids, skip_special_tokens=skip)
            if got != want:
                bad.append((ids, skip, got, want))
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_unknown_id_is_refused_not_dropped(pair: Pair) -> None:
    from zerostart.errors import TokenizerError

    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        pair.ours.decode([pair.ours.vocab_size + 5])


@pytest.mark.parametrize(("prefix", "use_regex"), [(True, False), (False, False), (True, True)])
def test_pre_tokenizer_options(
    bpe_files: Path, tmp_path: Path, prefix: bool, use_regex: bool
) -> None:
    """``add_prefix_space`` / ``use_regex`` on the RoBERTa tokenizer's merges, both ways."""
    import tokenizers

    data = json.loads(trained("roberta", bpe_files).read_text(encoding="utf-8"))
    data["pre_tokenizer"].update(add_prefix_space=prefix, use_regex=use_regex)
    data["post_processor"]["add_prefix_space"] = prefix
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    spec = compile_tokenizer_json(path, tmp_path, special_tokens={}).spec
    ours = Tokenizer.from_bundle(tmp_path, spec)
    ref = tokenizers.Tokenizer.from_file(str(path))
    bad = []
    for text in [*corpus()[:150], *BPE_TEXTS[:13]]:
        o, r = ours.encode(text, "a pair"), ref.encode(text, "a pair")
        if (o.ids, o.offsets, o.word_ids) != (r.ids, list(r.offsets), list(r.word_ids)):
            bad.append(text)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"
