"""Byte-level BPE without a reference library: refusals, hand-computed encodings, merge paths.

The parity with `tokenizers` is in test_tokenizer_bpe_parity.py; these tests
need nothing but the standard library and run everywhere.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from zerostart.errors import TokenizerError
from zerostart.tokenize import Tokenizer, _bpe
from zerostart.tokenize._bytelevel import BYTE_TO_CHAR, decode, split, to_byte_chars
from zerostart.tokenize._compiled import CompiledFile
from zerostart.tokenize._native import ENV as NATIVE_ENV
from zerostart.tokenize.compile import compile_tokenizer_json

# Every test twice: on the C loops of tokenizer.so and on the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("inner_loops")

# A tiny RoBERTa-layout vocabulary: the 256 byte characters, then merges that
# build "Ġthe", "Ġworld", "llo" and "He".
MERGES = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("l", "l"), ("ll", "o"), ("H", "e"),
          ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]  # fmt: skip
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tokenizer_json(**model: Any) -> dict[str, Any]:
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in BYTE_TO_CHAR:
        vocab.setdefault(c, len(vocab))
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": t == "<mask>", "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIALS)
    ]  # fmt: skip
    return {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                           "trim_offsets": True, "add_prefix_space": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [[a, b] for a, b in MERGES], **model},
    }  # fmt: skip


def _compile(tmp_path: Path, data: dict[str, Any]) -> Tokenizer:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    settings = compile_tokenizer_json(path, tmp_path, special_tokens={"pad_token": "<pad>"})
    assert settings.model == "BPE"
    assert (tmp_path / "tokenizer.so").exists()  # the C loops ship with the bundle
    tok = Tokenizer.from_bundle(tmp_path, settings.spec)
    native = os.environ[NATIVE_ENV] == "1" and not data["model"].get("ignore_merges")
    assert tok.model.native_ready is native  # type: ignore[attr-defined]
    return tok


def test_hand_computed_encoding(tmp_path: Path) -> None:
    tok = _compile(tmp_path, _tokenizer_json())
    enc = tok.encode("Hello the world <mask>!")
    assert enc.tokens == ["<s>", "He", "llo", "Ġthe", "Ġworld", " <mask>", "!", "</s>"]
    # RobertaProcessing trims the space out of "Ġthe" (6, 9) and out of the lstrip'd mask
    assert enc.offsets == [(0, 0), (0, 2), (2, 5), (6, 9), (10, 15), (16, 22), (22, 23), (0, 0)]
    assert enc.special_tokens_mask == [1, 0, 0, 0, 0, 0, 0, 1]
    assert enc.word_ids == [None, 0, 0, 1, 2, 3, 4, None]
    pair = tok.encode("the", "world")
    assert pair.tokens == ["<s>", "t", "h", "e", "</s>", "</s>", "w", "or", "ld", "</s>"]
    assert pair.type_ids == [0] * 10 and pair.sequence_ids[5:7] == [None, 1]
    assert tok.pad_id == 1
    assert tok.decode(enc.ids) == "Hello the world!"
    # an id decodes to its token's content: the mask's match included the space, its id does not
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<s>Hello the world<mask>!</s>"


def test_offsets_are_characters_of_the_original_text(tmp_path: Path) -> None:
    """A token that is part of a character's UTF-8 bytes spans the whole character."""
    tok = _compile(tmp_path, _tokenizer_json())
    enc = tok.encode("é the")
    assert enc.tokens[1:3] == ["Ã", "©"]  # é's two bytes, no merge for them
    assert enc.offsets[1:4] == [(0, 1), (0, 1), (2, 5)]


def test_lone_surrogate_is_a_tokenizer_error(tmp_path: Path) -> None:
    """JSON can carry "\\ud800"; it has no UTF-8 bytes, so it is refused (422), not a crash."""
    tok = _compile(tmp_path, _tokenizer_json())
    with pytest.raises(TokenizerError, match=r"'\\ud800' at character 1"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tok.encode("fine", "pair \udfff")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"dropout": 0.1}, "dropout=0.1"),
        ({"continuing_subword_prefix": "##"}, "continuing_subword_prefix='##'"),
        ({"end_of_word_suffix": "</w>"}, "end_of_word_suffix='</w>'"),
        ({"byte_fallback": True}, "byte_fallback=True"),
        ({"merges": [["Ġ", "zz"]]}, "names a token not in the vocabulary"),
        ({"merges": [["l", "l"], ["l", "l"]]}, "listed twice"),
    ],
)
def test_convert_refuses_bpe_options_it_does_not_implement(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    with pytest.raises(TokenizerError, match=named) as info:
        _compile(tmp_path, _tokenizer_json(**change))
    assert str(tmp_path / "tokenizer.json") in str(info.value)


def test_convert_refuses_a_vocabulary_without_every_byte(tmp_path: Path) -> None:
    data = _tokenizer_json()
    del data["model"]["vocab"][BYTE_TO_CHAR[0]]
    data["model"]["vocab"] = {t: i for i, t in enumerate(data["model"]["vocab"])}
    with pytest.raises(TokenizerError, match="without the byte characters"):
        _compile(tmp_path, data)


@pytest.mark.parametrize(
    "pre",
    [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        # a Sequence of one is that pre-tokenizer (compile._single_pre_tokenizer); of two, refused
        {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]},
        None,
    ],
)
def test_convert_refuses_bpe_without_the_bytelevel_pre_tokenizer(
    tmp_path: Path, pre: dict[str, Any] | None
) -> None:
    data = _tokenizer_json()
    data["pre_tokenizer"] = pre
    with pytest.raises(TokenizerError, match=r"pre_tokenizer|pre-tokenizers"):
        _compile(tmp_path, data)


def test_split_tiles_the_text_with_gpt2_pieces() -> None:
    text = "It's  3 cafés\u00a0—\tok\n\n"
    pieces = split(text)
    assert "".join(pieces) == text
    # the optional space before a word is U+0020 only: NBSP and tab are pieces of their own
    assert pieces == ["It", "'s", " ", " 3", " cafés", "\u00a0", "—", "\t", "ok", "\n\n"]
    assert to_byte_chars(" é\n") == "ĠÃ©Ċ"
    assert decode(["ĠÃ©", "<s>"]) == " é<s>"
    assert decode(["Ã"]) == "\ufffd"  # half a character


def _random_merge_table(rng: random.Random) -> tuple[list[int], _bpe.MergeTable]:
    """Merges over 8 byte ids building 400 new tokens, as (byte ids, by_left lookup)."""
    tokens = [bytes([b]) for b in range(8)]
    ids = {t: i for i, t in enumerate(tokens)}
    table: dict[int, dict[int, int]] = {}
    rank = 0
    while len(tokens) < 408:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if a + b in ids or len(a + b) > 12:
            continue
        ids[a + b] = len(tokens)
        tokens.append(a + b)
        table.setdefault(ids[a], {})[ids[b]] = rank * _bpe.KEY_BASE + ids[a + b]
        rank += 1
    return list(range(8)), lambda left: table.get(left, {})


def test_scan_and_heap_merge_the_same_way() -> None:
    """The short-piece scan and the long-piece heap give one result (tokenizers' heap order)."""
    rng = random.Random(7)
    byte_ids, by_left = _random_merge_table(rng)
    for _ in range(3000):
        word = [rng.choice(byte_ids) for _ in range(rng.randint(1, 40))]
        scan_ids, scan_lengths = list(word), [1] * len(word)
        _bpe.merge(scan_ids, scan_lengths, by_left)
        heap_ids, heap_lengths = list(word), [1] * len(word)
        _bpe._merge_heap(heap_ids, heap_lengths, by_left)
        assert (scan_ids, scan_lengths) == (heap_ids, heap_lengths), word


def test_per_request_left_truncation(tmp_path: Path) -> None:
    """TEI's truncation_direction "left" keeps the end of the text (``left=True``)."""
    tok = _compile(tmp_path, _tokenizer_json())
    full = tok.encode("Hello the world the world")
    right = tok.encode("Hello the world the world", max_length=5)
    left = tok.encode("Hello the world the world", max_length=5, left=True)
    assert right.tokens == ["<s>", *full.tokens[1:4], "</s>"]
    assert left.tokens == ["<s>", *full.tokens[-4:-1], "</s>"]
    assert left.offsets[1:-1] == full.offsets[-4:-1] and left.truncated


# Texts for the native / Python comparison: contractions, white space runs before words and
# at the end, class runs, non-ASCII letters, numbers and marks, a piece past the scan limit
# (the heap), one of exactly BPE_SCAN_MAX bytes, and added tokens between segments.
HARD_TEXTS = [
    "Hello the world",
    "it's they're we've I'm you'll he'd 'S 'x '",
    "a  b   c\t\td \n\n e  ",
    "   leading and trailing   ",
    "\u3000ideographic\u3000space\u00a0nbsp",
    "Ünïcödé wörds, 123 456.78 ١٢٣ ½ x²",
    "漢字かなカナ한국어 the world",
    "emoji 😀👍🏽 and a ZWJ 👩\u200d💻 family",
    "a" * 48,
    "b" * 49,
    "the" * 40 + " helloworld" * 20,
    "😀" * 30,
    "<mask> the <mask>world<s>",
    "",
    " ",
    "x",
]


def _same(a: Tokenizer, b: Tokenizer, text: str) -> None:
    for pair in (None, "the world"):
        x, y = a.encode(text, pair), b.encode(text, pair)
        assert (x.ids, x.tokens, x.offsets, x.word_ids, x.type_ids) == (
            y.ids,
            y.tokens,
            y.offsets,
            y.word_ids,
            y.type_ids,
        ), (text, pair)


@pytest.mark.parametrize(
    "pre",
    [
        {"add_prefix_space": False, "use_regex": True},
        {"add_prefix_space": True, "use_regex": True},
        {"add_prefix_space": True, "use_regex": False},
    ],
)
@pytest.mark.parametrize("normalizer", [None, {"type": "NFKC"}])
def test_the_native_loops_answer_as_the_python_ones(
    tmp_path: Path, inner_loops: str, pre: dict[str, bool], normalizer: dict[str, str] | None
) -> None:
    """The C split, merges and offsets against the Python ones (the parity suite runs C only).

    NFKC gives the C code a real alignment (``½`` and ``²`` change length).
    """
    if inner_loops != "native":
        pytest.skip("compares the two paths once")
    data = _tokenizer_json()
    data["pre_tokenizer"].update(pre)
    data["post_processor"]["add_prefix_space"] = pre["add_prefix_space"]
    data["normalizer"] = normalizer
    native = _compile(tmp_path, data)
    python = Tokenizer.from_bundle(tmp_path, native.spec, native=False)
    assert python.model.native_ready is False  # type: ignore[attr-defined]
    for text in HARD_TEXTS:
        _same(native, python, text)


def test_ignore_merges_stays_in_python(tmp_path: Path, inner_loops: str) -> None:
    """The C code has no whole-word lookup: such a model keeps the Python path, same answers."""
    tok = _compile(tmp_path, _tokenizer_json(ignore_merges=True))
    assert tok.encode("Hello the world").tokens == ["<s>", "He", "llo", "Ġthe", "Ġworld", "</s>"]


def test_damaged_bpe_tables_are_refused_before_the_native_code_reads_them(
    tmp_path: Path, inner_loops: str
) -> None:
    if inner_loops != "native":
        pytest.skip("the native check")
    tok = _compile(tmp_path, _tokenizer_json())
    path = tmp_path / "tokenizer.bin"
    tables = CompiledFile(path)
    offset = tables._sections["merge_rights"][0]
    del tables
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = (1 << 30).to_bytes(4, "little")  # a right id far outside
    path.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match="corrupt BPE tables"):
        Tokenizer.from_bundle(tmp_path, tok.spec)
