"""SentencePiece Unigram tokenizers against Hugging Face `tokenizers` on the same tokenizer.json.

Two tokenizers: the real multilingual-e5-small one (250,002 pieces, XLM-R's
nmt_nfkc charsmap, TemplateProcessing, ``<mask>`` with lstrip; built by
tools/make_models.py) and one trained here with `tokenizers` itself (Unigram,
the case-folding nmt_nfkc_cf charsmap of the sentencepiece wheel, Metaspace with
``prepend_scheme: first``, ``byte_fallback``, RobertaProcessing, ``<mask>`` with
lstrip and rstrip). Each goes through ``zerostart.tokenize.compile`` into a
``tokenizer.bin`` and is compared field by field with
``tokenizers.Tokenizer.from_file`` (not transformers' AutoTokenizer, which
differs from tokenizer.json): the shared corpus at several lengths, pairs
under ``longest_first`` truncation from the right and from the left, 1,500
seeded random strings, every code point alone, batches and the decoder.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_tokenizer_parity import _random_texts
from tokenizer_corpus import COMMON_WORDS, SCRIPTS, corpus, pairs

from code_points import sweep_code_points
from zerostart.bundle.manifest import TokenizerSettings
from zerostart.tokenize import Encoding, Tokenizer
from zerostart.tokenize._precompiled import grapheme_class
from zerostart.tokenize._unigram import Unigram
from zerostart.tokenize.compile import compile_tokenizer_json

pytestmark = pytest.mark.parity

FUZZ_STRINGS_PER_MODEL = 1500
FUZZ_SEED = 20261207
CODE_POINT_CHUNK = 32768  # texts per reference batch (bounded memory)
TRAINED_VOCAB_SIZE = 8000  # pieces the trainer is asked for (it stops where the corpus runs out)
FIELDS = ("ids", "type_ids", "offsets", "tokens", "word_ids", "sequence_ids", "special_tokens_mask")
XLMR_SPECIALS = {
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "mask_token": "<mask>",
}


def _sentencepiece_charsmap(name: str) -> bytes:
    spec = importlib.util.find_spec("sentencepiece")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sentencepiece is not installed (its wheel carries the nmt_nfkc charsmaps)")
    path = Path(spec.submodule_search_locations[0]) / "package_data" / name
    if not path.is_file():
        pytest.skip(f"this sentencepiece has no package_data/{name} (0.2.1 has)")
    return path.read_bytes()


# Syllables of several scripts: pseudo-words made of them give the trainer a
# vocabulary's worth of distinct substrings (the real corpus alone has ~1,300).
SYLLABLE_SETS = (
    [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ie", "ä", "é")],
    [c + v for c in "бвгдзклмнпрстфхцчш" for v in "аеиоуыяю"],
    [c + v for c in "कखगचजटडतदनपबमयरलवसह" for v in ("", "ा", "ि", "ी", "ु", "े", "ो", "्")],
    [chr(cp) for cp in range(0x4E00, 0x4E00 + 600)],
    [c + v for c in "بتثجحدرسشعفقكلمنهو" for v in ("", "َ", "ِ", "ُ", "ا", "ي")],
)


def _training_texts() -> list[str]:
    rng = random.Random(7)
    words = [*COMMON_WORDS, *" ".join(SCRIPTS).split()]
    for _ in range(30000):
        syllables = rng.choice(SYLLABLE_SETS)
        words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    texts = list(corpus())
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(20000)]
    return texts


def train_unigram(folder: Path) -> Path:
    """A Unigram + Precompiled + Metaspace tokenizer trained by `tokenizers` (seconds)."""
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.Unigram())
    tok.normalizer = tk.normalizers.Sequence(
        [
            tk.normalizers.Precompiled(_sentencepiece_charsmap("nmt_nfkc_cf.bin")),
            tk.normalizers.Replace(tk.Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = tk.decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = tk.trainers.UnigramTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        max_piece_length=12,
    )
    tok.train_from_iterator(_training_texts(), trainer)
    data = json.loads(tok.to_str())
    # byte_fallback needs the 256 byte pieces; tokenizers' trainer does not add them.
    vocab = data["model"]["vocab"]
    vocab += [[f"<0x{b:02X}>", -30.0] for b in range(256)]
    data["model"]["byte_fallback"] = True
    tok = tk.Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([tk.AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    tok.post_processor = tk.processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


class Pair:
    """Ours (compiled into tokenizer.bin) and the reference, for one tokenizer.json.

    ``native``: ours runs the C inner loops (tokenizer.so, which the test checks
    is really in use), else the pure-Python code the worker falls back to.
    """

    def __init__(self, tokenizer_json: Path, out: Path, *, native: bool) -> None:
        tokenizers = pytest.importorskip("tokenizers")
        if (out / "tokenizer.bin").is_file():  # compiled for the other path already
            spec = json.loads((out / "spec.json").read_text(encoding="utf-8"))
            self.settings = TokenizerSettings(**spec)
        else:
            self.settings = compile_tokenizer_json(
                tokenizer_json, out, special_tokens=XLMR_SPECIALS
            )
            (out / "spec.json").write_text(json.dumps(self.settings._asdict()), encoding="utf-8")
        self.ours = Tokenizer.from_bundle(out, self.settings.spec, native=native)
        self.native = native
        model = self.ours.model
        assert isinstance(model, Unigram)
        if native:
            if shutil.which(os.environ.get("CC", "gcc")) is None:
                pytest.skip("no C compiler: the bundle has no tokenizer.so")
            assert model.native is not None and self.ours._words_native is not None
        else:
            assert model.native is None and self.ours._words_native is None
        self.ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        self.ref.no_padding()
        self.ref.no_truncation()

    def reference(
        self, text: str, pair: str | None, max_length: int | None, direction: str = "right"
    ) -> Any:
        if max_length is None:
            self.ref.no_truncation()
        else:
            self.ref.enable_truncation(
                max_length=max_length, strategy="longest_first", direction=direction
            )
        return self.ref.encode(text, pair)

    def mismatch(
        self, text: str, pair: str | None, max_length: int | None, direction: str = "right"
    ) -> str | None:
        self.ours.direction = direction
        ours: Encoding = self.ours.encode(text, pair, max_length=max_length)
        ref = self.reference(text, pair, max_length, direction)
        for field in FIELDS:
            a, b = getattr(ours, field), list(getattr(ref, field))
            if a != b:
                k = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                    min(len(a), len(b)),
                )
                return (
                    f"{field} differ at {k} for {text!r} / {pair!r} (max_length={max_length}, "
                    f"{direction}): ours {a[max(0, k - 2) : k + 3]} ref {b[max(0, k - 2) : k + 3]}"
                    f" (lengths {len(a)} vs {len(b)})"
                )
        if max_length is not None:
            full = len(self.reference(text, pair, None).ids)
            if ours.untruncated_length != full or ours.truncated != (full > len(ours.ids)):
                return f"truncation bookkeeping for {text!r}: {ours.untruncated_length}, ref {full}"
        return None


@pytest.fixture(scope="module")
def trained_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_unigram(tmp_path_factory.mktemp("trained-src"))


@pytest.fixture(
    scope="module",
    params=["e5-small-native", "e5-small-python", "trained-native", "trained-python"],
)
def pair(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Callable[[str], Path],
) -> Pair:
    name, _, path = str(request.param).rpartition("-")
    out = tmp_path_factory.getbasetemp() / f"compiled-{name}"  # one compile for both paths
    out.mkdir(exist_ok=True)
    if name == "e5-small":
        tokenizer_json = model_dir("e5-small") / "tokenizer.json"
    else:
        tokenizer_json = request.getfixturevalue("trained_json")
    return Pair(tokenizer_json, out, native=path == "native")


def test_vocabulary_and_specials(pair: Pair) -> None:
    assert pair.ours.vocab_size == pair.ref.get_vocab_size(with_added_tokens=True)
    if pair.settings.spec["post_processor"]["type"] == "TemplateProcessing":  # e5-small
        assert pair.ours.vocab_size == 250002  # the real XLM-R vocabulary
    else:
        assert pair.ours.vocab_size > 5000, "the trained vocabulary is too small to be realistic"
    for token in ("<s>", "</s>", "<pad>", "<unk>", "<mask>", "▁the", "<0x41>", "not a piece"):
        assert pair.ours.token_to_id(token) == pair.ref.token_to_id(token), token
    for i in (0, 1, 2, 3, 4, 5, 100, pair.ours.vocab_size - 1):
        assert pair.ours.id_to_token(i) == pair.ref.id_to_token(i)


@pytest.mark.parametrize("max_length", [None, 16, 128, 512])
def test_corpus_matches(pair: Pair, max_length: int | None) -> None:
    bad = [m for t in corpus() if (m := pair.mismatch(t, None, max_length))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("max_length", [None, 7, 16, 64, 512])
def test_pairs_match_with_longest_first_truncation(
    pair: Pair, max_length: int | None, direction: str
) -> None:
    cases = pairs()
    if max_length is not None and max_length < 128:
        # The reference materialises overflow windows of both sides (their product).
        cases = [(a, b) for a, b in cases if len(a) + len(b) < 2000]
    bad = [m for a, b in cases if (m := pair.mismatch(a, b, max_length, direction))]
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_truncation_of_pairs_on_every_length_split(pair: Pair) -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    bad = []
    for n1 in range(0, 8):
        for n2 in range(0, 8):
            a, b = " ".join(words[:n1]), " ".join(words[:n2][::-1])
            for max_length in range(4, n1 + n2 + 6):
                for direction in ("right", "left"):
                    if m := pair.mismatch(a, b, max_length, direction):
                        bad.append(m)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_random_unicode_fuzz(pair: Pair) -> None:
    specials = ["<s>", "</s>", "<mask>", " <mask> ", "<pad>", "<unk>", "▁", "  ", "\r\n"]
    rng = random.Random(FUZZ_SEED)
    bad = []
    for t, p, ml in _random_texts(FUZZ_SEED, FUZZ_STRINGS_PER_MODEL):
        if rng.random() < 0.2:  # the SentencePiece specials, spliced in
            k = rng.randint(0, len(t))
            t = t[:k] + rng.choice(specials) + t[k:]
        if m := pair.mismatch(t, p, None if ml is None else ml + 2):
            bad.append(m)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


# Texts whose normalisation is pieced from words (Precompiled._word) or must not be: a
# combining mark or a spacing mark after a space (it joins the space), a Prepend before
# one, words that change length (NFKC) first, in the middle and alone, controls that the
# charsmap deletes at the start of the text and of a word.
WORD_CASES = (
    "x \u0301y z",
    "x \u0903y z",
    "x \u200dy z",
    "\u0600 x y",
    "x \u0600 y",
    "a \U0001d15f\U0001d165 b",
    "\U0001d15f\U0001d165 b c",
    "\ufb01ne \ufb01ne x \u2460 y",
    "\x1c\x1d x y",
    "x \x1c\x1dy z",
    "x \u1100\u1161 y",
    "\u0915\u094d\u0937 \u0915\u094d \u0937",
    "\U0001f1e9 \U0001f1ea\U0001f1e9 x",
    "a  b   c \u3000 d",
)


def test_texts_pieced_from_words_match(pair: Pair) -> None:
    for k in range(len(WORD_CASES)):  # each case also after the others: warm word cache
        for text in (WORD_CASES[k], " ".join(WORD_CASES[: k + 1])):
            assert not (m := pair.mismatch(text, None, None)), m


def test_every_code_point_alone_and_after_a_letter(
    pair: Pair, request: pytest.FixtureRequest
) -> None:
    """Each code point on its own; and after "a" (where a combining mark forms a cluster with
    it) every BMP code point plus every astral one that can join a cluster.

    CI sweeps the real e5-small tokenizer on the native path; ZEROSTART_FULL_PARITY=1 sweeps
    the trained one and the pure-Python path too (a few minutes): run it when the Unigram,
    native or normaliser code changes.
    """
    if (
        request.node.callspec.params["pair"] != "e5-small-native"
        and os.environ.get("ZEROSTART_FULL_PARITY") != "1"
    ):
        pytest.skip(
            "every-code-point sweep of the trained tokenizer and of the Python fallback: "
            "set ZEROSTART_FULL_PARITY=1"
        )
    cps = sweep_code_points()  # in CI: planes 0-3, 14 and a sample of the rest
    joining = [cp for cp in cps if cp < 0x10000 or grapheme_class(cp) != "."]
    bad: list[str] = []
    for template, points in (("{}", cps), ("a{} b", joining)):
        for k in range(0, len(points), CODE_POINT_CHUNK):
            texts = [template.format(chr(cp)) for cp in points[k : k + CODE_POINT_CHUNK]]
            for text, r in zip(texts, pair.ref.encode_batch(texts), strict=True):
                e = pair.ours.encode(text)
                if e.ids != r.ids or e.offsets != list(r.offsets):
                    bad.append(f"{text!r}: ours {e.tokens} {e.offsets}, ref {r.tokens} {r.offsets}")
    assert not bad, f"{len(bad)} mismatches; first: {bad[:5]}"


def test_batch_matches_reference_batch(pair: Pair) -> None:
    items: list[str | tuple[str, str]] = [*corpus()[:50], *pairs()[:20]]
    pair.ours.direction = "right"
    ours = pair.ours.encode_batch(items, max_length=32)
    pair.ref.enable_truncation(max_length=32, strategy="longest_first")
    ref = pair.ref.encode_batch(items)
    assert [e.ids for e in ours] == [r.ids for r in ref]
    assert [e.offsets for e in ours] == [list(r.offsets) for r in ref]


def test_decode_matches_reference(pair: Pair) -> None:
    pair.ref.no_truncation()
    for text in corpus()[:150]:
        ids = pair.ref.encode(text).ids
        for skip in (True, False):
            assert pair.ours.decode(ids, skip_special_tokens=skip) == pair.ref.decode(
                ids, skip_special_tokens=skip
            ), (text, skip)


def _charsmap_of_rules(rules: dict[str, str]) -> bytes:
    """A Precompiled charsmap made by SentencePiece's own builder from ``rules`` (source -> target)."""
    spm = pytest.importorskip("sentencepiece")
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    tsv = folder / f"zs-rules-{os.getpid()}.tsv"
    hexes = [" ".join(f"{ord(c):X}" for c in s) for s in (*rules, *rules.values())]
    n = len(rules)
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in zip(hexes[:n], hexes[n:], strict=True)))
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["hello world x y z"] * 50),
            model_writer=out,
            vocab_size=20,
            hard_vocab_limit=False,
            normalization_rule_tsv=str(tsv),
            minloglevel=2,
        )
    finally:
        tsv.unlink()
    proto = model_pb2.ModelProto()
    proto.ParseFromString(out.getvalue())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


def test_precompiled_keys_that_reach_over_a_space_are_taken_whole() -> None:
    """Keys a space joins: a space + a mark that does not compose with "a", a Prepend + a
    space. The per-word path must leave such texts to the whole-text path."""
    tk = pytest.importorskip("tokenizers")
    from zerostart.tokenize._precompiled import Precompiled

    texts = [" y z", "x \u0334y z", "\u0600 x y", "x \u0600 y", "a\u0301 b a\u0301", "q \u0301 r"]
    for rules in (
        {" \u0334": "Z", "\u0600 ": "P", "a\u0301": "\u00e1"},
        {"a": "aa", "x": "xyz"},  # the stand-in "a" does not map to itself
        {" ": "_", "q": ""},  # nor does the space
    ):
        charsmap = _charsmap_of_rules(rules)
        ours = Precompiled(charsmap)
        probe = tk.Tokenizer(tk.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        probe.normalizer = tk.normalizers.Precompiled(charsmap)
        probe.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex("."), "isolated")
        for text in [*texts, *texts]:  # the second time with every word in the cache
            got, align = ours.normalize(text, None)
            spans = [(a, a + 1) for a in (range(len(got)) if align is None else align)]
            assert got == probe.normalizer.normalize_str(text), (rules, text)
            assert spans == list(probe.encode(text).offsets), (rules, text)
