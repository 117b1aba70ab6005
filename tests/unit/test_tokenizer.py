"""Our tokenizer's own logic on a tiny hand-made vocabulary (no reference library needed).

The expected values are worked out by hand from BERT's rules; parity with
`tokenizers` on real vocabularies is in test_tokenizer_parity.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zerostart.bundle.manifest import TokenizerSettings
from zerostart.errors import TokenizerError
from zerostart.tokenize import Encoding, WordPieceTokenizer
from zerostart.tokenize._encoding import longest_first as _longest_first
from zerostart.tokenize._normalize import CHAR_CACHE_SIZE_CHARS, Normalizer
from zerostart.tokenize.hf import settings_from_tokenizer_json, vocab_from_tokenizer_json

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "hello",
    "world",
    "##s",
    "un",
    "##aff",
    "##able",
    ",",
    "!",
    "cafe",
    "i",
    "##̇",
    "中",
]


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tok(vocab_file: Path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_files(vocab_file, TokenizerSettings())


def test_basic_encoding_all_fields(tok: WordPieceTokenizer) -> None:
    e = tok.encode("Hello, worlds!")
    assert e.tokens == ["[CLS]", "hello", ",", "world", "##s", "!", "[SEP]"]
    assert e.ids == [2, 5, 11, 6, 7, 12, 3]
    assert e.offsets == [(0, 0), (0, 5), (5, 6), (7, 12), (12, 13), (13, 14), (0, 0)]
    assert e.word_ids == [None, 0, 1, 2, 2, 3, None]
    assert e.sequence_ids == [None, 0, 0, 0, 0, 0, None]
    assert e.special_tokens_mask == [1, 0, 0, 0, 0, 0, 1]
    assert e.type_ids == [0] * 7
    assert (e.truncated, e.untruncated_length, len(e)) == (False, 7, 7)


def test_offsets_point_into_the_original_when_normalisation_changes_length(
    tok: WordPieceTokenizer,
) -> None:
    # "e" + combining acute: the dropped mark is outside the span; NUL and ZWSP vanish.
    e = tok.encode("\x00Cafe\u0301\u200b unaffable")
    assert e.tokens[1:-1] == ["cafe", "un", "##aff", "##able"]
    assert e.offsets[1:-1] == [(1, 5), (8, 10), (10, 13), (13, 17)]


def test_lowercase_without_stripping_expands_dotted_capital_i(vocab_file: Path) -> None:
    cased_marks = TokenizerSettings(lowercase=True, strip_accents=False)
    tok = WordPieceTokenizer.from_files(vocab_file, cased_marks)
    e = tok.encode("İ")  # lowercases to "i" + U+0307: two tokens, both from character 0
    assert e.tokens[1:-1] == ["i", "##̇"]
    assert e.offsets[1:-1] == [(0, 1), (0, 1)]


def test_cjk_characters_are_words_of_their_own(tok: WordPieceTokenizer) -> None:
    e = tok.encode("hello中中")
    assert e.tokens[1:-1] == ["hello", "中", "中"]
    assert e.offsets[1:-1] == [(0, 5), (5, 6), (6, 7)]
    assert e.word_ids[1:-1] == [0, 1, 2]


def test_unknown_and_overlong_words_become_one_unk(tok: WordPieceTokenizer) -> None:
    e = tok.encode("helloz " + "s" * 101)
    assert e.tokens[1:-1] == ["[UNK]", "[UNK]"]
    assert e.offsets[1:-1] == [(0, 6), (7, 108)]


def test_a_word_over_max_input_chars_is_unk_even_when_its_pieces_exist(
    tok: WordPieceTokenizer,
) -> None:
    """Hugging Face's rule (``max_input_chars_per_word``, 100): length alone decides."""
    fits = "hello" + "s" * 95  # 100 characters: split into pieces
    assert tok.encode(fits).tokens[1:-1] == ["hello", *["##s"] * 95]
    over = fits + "s"  # 101 characters, every piece in the vocabulary, still one [UNK]
    e = tok.encode(over)
    assert e.tokens[1:-1] == ["[UNK]"] and e.offsets[1:-1] == [(0, 101)]


def test_special_tokens_in_text_are_single_tokens_not_marked_special(
    tok: WordPieceTokenizer,
) -> None:
    e = tok.encode("hello[SEP] [sep]")
    assert e.tokens[1:-1] == ["hello", "[SEP]", "[UNK]", "[UNK]", "[UNK]"]
    assert e.offsets[1:-1] == [(0, 5), (5, 10), (11, 12), (12, 15), (15, 16)]
    assert e.special_tokens_mask == [1, 0, 0, 0, 0, 0, 1]


def test_pair_layout_and_type_ids(tok: WordPieceTokenizer) -> None:
    e = tok.encode("hello", "world!")
    assert e.tokens == ["[CLS]", "hello", "[SEP]", "world", "!", "[SEP]"]
    assert e.type_ids == [0, 0, 0, 1, 1, 1]
    assert e.sequence_ids == [None, 0, None, 1, 1, None]
    assert e.offsets == [(0, 0), (0, 5), (0, 0), (0, 5), (5, 6), (0, 0)]
    assert e.word_ids == [None, 0, None, 0, 1, None]


def test_single_truncation(tok: WordPieceTokenizer) -> None:
    e = tok.encode("hello, worlds!", max_length=4)
    assert e.tokens == ["[CLS]", "hello", ",", "[SEP]"]
    assert (e.truncated, e.untruncated_length) == (True, 7)
    assert tok.encode("hello", max_length=3).truncated is False


@pytest.mark.parametrize(
    ("n1", "n2", "budget", "expected"),
    [
        (10, 2, 6, (4, 2)),  # only the longer one is cut
        (2, 10, 6, (2, 4)),
        (10, 10, 6, (3, 3)),
        (10, 10, 7, (3, 4)),  # equal: the odd token goes to the second
        (10, 9, 7, (4, 3)),  # otherwise to the longer one
        (9, 10, 7, (3, 4)),
        (4, 4, 0, (0, 0)),
        (1, 20, 5, (1, 4)),
    ],
)
def test_longest_first_arithmetic(n1: int, n2: int, budget: int, expected: tuple[int, int]) -> None:
    assert _longest_first(n1, n2, budget) == expected


def test_max_length_must_leave_room_for_specials(tok: WordPieceTokenizer) -> None:
    with pytest.raises(TokenizerError, match="special tokens"):
        tok.encode("hello", max_length=1)
    with pytest.raises(TokenizerError, match="special tokens"):
        tok.encode("hello", "world", max_length=2)
    assert tok.encode("hello", "world", max_length=3).tokens == ["[CLS]", "[SEP]", "[SEP]"]


def test_batch_is_the_same_as_one_by_one(tok: WordPieceTokenizer) -> None:
    items: list[str | tuple[str, str]] = ["hello", ("hello", "worlds"), "中 cafe"]
    batch = tok.encode_batch(items, max_length=5)
    single = [
        tok.encode(i, max_length=5) if isinstance(i, str) else tok.encode(*i, max_length=5)
        for i in items
    ]
    assert batch == single
    assert all(isinstance(e, Encoding) for e in batch)


def test_vocabulary_lookups(tok: WordPieceTokenizer) -> None:
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.vocab_size) == (
        2,
        3,
        0,
        1,
        len(VOCAB),
    )
    assert tok.id_to_token(5) == "hello"
    assert tok.token_to_id("world") == 6
    assert tok.token_to_id("nope") is None
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.id_to_token(len(VOCAB))
    with pytest.raises(TokenizerError):
        tok.id_to_token(-1)


def test_convert_tokens_to_string(tok: WordPieceTokenizer) -> None:
    assert tok.convert_tokens_to_string(["un", "##aff", "##able", "hello", ",", "world", "!"]) == (
        "unaffable hello, world!"
    )
    assert tok.convert_tokens_to_string(["##s", "do", "n't"]) == "##s don't"


def test_missing_special_token_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"vocab\.txt.*'\[CLS\]'"):
        WordPieceTokenizer.from_files(path, TokenizerSettings())


def test_unreadable_vocab_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"nope\.txt"):
        WordPieceTokenizer.from_files(tmp_path / "nope.txt", TokenizerSettings())
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"[PAD]\n\xff\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        WordPieceTokenizer.from_files(bad, TokenizerSettings())


def test_crlf_vocab_is_read_like_lf(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_bytes("\r\n".join(VOCAB).encode() + b"\r\n")
    tok = WordPieceTokenizer.from_files(path, TokenizerSettings())
    assert tok.encode("hello").ids == [2, 5, 3]


def test_character_table_stays_bounded() -> None:
    norm = Normalizer(TokenizerSettings())
    text = "".join(chr(cp) for cp in range(0x4E00, 0x4E00 + 2 * CHAR_CACHE_SIZE_CHARS))
    norm.normalize(text)
    assert len(norm._table) <= CHAR_CACHE_SIZE_CHARS
    assert norm.normalize("ÀB")[0] == "ab"  # still correct after eviction


def test_worker_import_pulls_no_third_party_modules() -> None:
    code = (
        "import sys, zerostart.tokenize; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'numpy', 'tokenizers', 'transformers', 'torch', 'safetensors'} "
        "or m == 'zerostart.tokenize.hf'); print(bad)"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONPATH": str(src)},
    )
    assert out.stdout.strip() == "[]"


# -- build time: tokenizer.json ------------------------------------------------


def _tokenizer_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "special": True,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
            for i, t in enumerate(VOCAB[:5])
        ],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": False,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
            },
        },
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 50,
            "vocab": {t: i for i, t in enumerate(VOCAB)},
        },
    }
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_settings_and_vocab_from_tokenizer_json(tmp_path: Path) -> None:
    path = _write(tmp_path, _tokenizer_json())
    settings = settings_from_tokenizer_json(path)
    assert settings == TokenizerSettings(lowercase=False, max_input_chars_per_word=50)
    assert vocab_from_tokenizer_json(path) == VOCAB


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"type": "BPE", "vocab": {}}}, "model type 'BPE'"),
        ({"normalizer": {"type": "Lowercase"}}, "normalizer 'Lowercase'"),
        ({"pre_tokenizer": {"type": "Whitespace"}}, "pre_tokenizer 'Whitespace'"),
        ({"post_processor": {"type": "RobertaProcessing"}}, "post_processor 'RobertaProcessing'"),
        ({"added_tokens": [{"id": 5, "content": "hello", "special": True}]}, "added token 'hello'"),
    ],
)
def test_unsupported_tokenizer_json_is_refused_by_name(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, _tokenizer_json(**changes))
    with pytest.raises(TokenizerError, match=message) as info:
        settings_from_tokenizer_json(path)
    assert str(path) in str(info.value)


def test_vocab_with_a_hole_is_refused(tmp_path: Path) -> None:
    data = _tokenizer_json()
    data["model"]["vocab"] = {"[PAD]": 0, "[UNK]": 2}
    with pytest.raises(TokenizerError, match="not contiguous"):
        vocab_from_tokenizer_json(_write(tmp_path, data))
