"""WordPiece's vocabulary as mapped tables (tokenizer.bin): the same answers as vocab.txt.

Parity with `tokenizers` on the three real vocabularies, in both forms, is in
test_tokenizer_parity.py; here: the table itself (duplicates, misses, damage),
and that a converted bundle serves it (and an older bundle without it, vocab.txt).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from zerostart.bundle.folder import Bundle
from zerostart.bundle.manifest import (
    MANIFEST_NAME,
    TOKENIZER_TABLES_NAME,
    VOCAB_NAME,
    TokenizerSettings,
)
from zerostart.errors import BundleError, TokenizerError
from zerostart.pipeline import Pipeline
from zerostart.tokenize import WordPieceTokenizer
from zerostart.tokenize._compiled import write
from zerostart.tokenize._wordpiece import read_vocab
from zerostart.tokenize._wpvocab import MappedWordPieceVocab, write_wordpiece_tables

# a duplicate ("hello" at 5 and 17: lookups give the last id, as vocab.txt's dict did),
# the empty token, and non-ASCII tokens
VOCAB = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "un", "##aff"),
    *("##able", ",", "!", "café", "中", "##̇", ""),
    "hello",
]
TEXTS = [
    "Hello, worlds!",
    "unaffable hello [MASK] world",
    "Café 中中 hello!!",
    "zzz unknownword, hellos",
    "",
    "[CLS] hello [SEP] [UNK]",
]


@pytest.fixture
def pair_of_tokenizers(tmp_path: Path) -> tuple[WordPieceTokenizer, WordPieceTokenizer]:
    (tmp_path / VOCAB_NAME).write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    write_wordpiece_tables(tmp_path / TOKENIZER_TABLES_NAME, VOCAB)
    settings = TokenizerSettings()
    return (
        WordPieceTokenizer.from_files(tmp_path / VOCAB_NAME, settings),
        WordPieceTokenizer.from_tables(tmp_path / TOKENIZER_TABLES_NAME, settings),
    )


def test_lookups_match_the_dict_of_vocab_txt(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_TABLES_NAME
    write_wordpiece_tables(path, VOCAB)
    table = MappedWordPieceVocab(path)
    expected = dict(zip(VOCAB, range(len(VOCAB)), strict=True))
    assert table.vocab_size == len(VOCAB) and table.longest == 6  # "##able"
    assert {t: table.get(t) for t in VOCAB} == expected
    assert table.get("hello") == len(VOCAB) - 1  # the duplicate's last id
    assert [table.id_to_token(i) for i in range(len(VOCAB))] == VOCAB
    for absent in ("hell", "helloo", "cafe", "##", "中中", "[pad]", "world "):
        assert table.get(absent) is None, absent
    with pytest.raises(IndexError):
        table.id_to_token(len(VOCAB))


def test_a_big_vocabulary_with_colliding_slots(tmp_path: Path) -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzé中#"
    vocab = list(
        dict.fromkeys("".join(rng.choices(alphabet, k=rng.randint(1, 9))) for _ in range(5000))
    )
    path = tmp_path / TOKENIZER_TABLES_NAME
    write_wordpiece_tables(path, vocab)
    table = MappedWordPieceVocab(path)
    assert all(table.get(t) == i for i, t in enumerate(vocab))
    known = set(vocab)
    misses = ["".join(rng.choices(alphabet, k=rng.randint(1, 9))) for _ in range(5000)]
    assert all(table.get(t) is None for t in misses if t not in known)


def test_encodings_are_the_same_in_both_forms(
    pair_of_tokenizers: tuple[WordPieceTokenizer, WordPieceTokenizer],
) -> None:
    parsed, mapped = pair_of_tokenizers
    for _ in range(2):  # the second round through the mapped one's memoised words
        for text in TEXTS:
            assert mapped.encode(text) == parsed.encode(text), text
            assert mapped.encode(text, "hello worlds", max_length=7) == parsed.encode(
                text, "hello worlds", max_length=7
            )
    ids = parsed.encode("unaffable café, worlds!").ids
    assert mapped.decode(ids) == parsed.decode(ids)
    assert [mapped.id_to_token(i) for i in range(len(VOCAB))] == VOCAB
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        mapped.id_to_token(len(VOCAB))


def test_only_vocabulary_tokens_are_memoised(
    pair_of_tokenizers: tuple[WordPieceTokenizer, WordPieceTokenizer],
) -> None:
    # the memo of whole words grows with the words met; bounded by the vocabulary
    _, mapped = pair_of_tokenizers
    rng = random.Random(3)
    for _ in range(200):
        mapped.encode(" ".join("".join(rng.choices("helowrdunsab", k=5)) for _ in range(8)))
    mapped.encode("hello world unaffable")
    memo = mapped._whole_word
    assert {"hello", "world"} <= set(memo) <= set(VOCAB)
    assert all(memo[w] == mapped.token_to_id(w) for w in memo)


def test_damaged_or_foreign_tables_are_refused(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_TABLES_NAME
    write(path, {"model": {"type": "Unigram", "vocab_size": 3}}, {"pieces": b"abc"})
    with pytest.raises(TokenizerError, match="not a WordPiece vocabulary table"):
        WordPieceTokenizer.from_tables(path, TokenizerSettings())
    meta = {"type": "WordPiece", "vocab_size": 9, "longest": 3, "hash": "crc32"}
    write_wordpiece_tables(path, VOCAB)
    good = MappedWordPieceVocab(path)
    sections = {
        "pieces": good._blob,
        "piece_offsets": good._tables.section("piece_offsets").tobytes(),
        "wp_slots": good._tables.section("wp_slots").tobytes(),
    }
    write(path, {"model": meta}, sections)  # 9 tokens said, 18 written
    with pytest.raises(TokenizerError, match="do not fit together"):
        MappedWordPieceVocab(path)
    with pytest.raises(TokenizerError, match="cannot map"):
        MappedWordPieceVocab(tmp_path / "missing.bin")


# -- in a bundle -------------------------------------------------------------------------


@pytest.fixture
def sst2_copy(bundle_for_model: Callable[[str], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_for_model("minilm-sst2"), tmp_path / "sst2"))


def test_a_converted_bundle_serves_its_mapped_tables(sst2_copy: Path) -> None:
    manifest = json.loads((sst2_copy / MANIFEST_NAME).read_text())
    assert {VOCAB_NAME, TOKENIZER_TABLES_NAME} <= set(manifest["files"])
    parsed = Pipeline.load(sst2_copy).tokenizer.encode("a gripping, unaffable film")
    # vocab.txt garbled (same size): a pipeline that still encodes right read tokenizer.bin
    vocab = sst2_copy / VOCAB_NAME
    lines = read_vocab(vocab)
    vocab.write_text("".join(t + "\n" for t in reversed(lines)), encoding="utf-8")
    mapped = Pipeline.load(sst2_copy, verify="none").tokenizer
    assert mapped.encode("a gripping, unaffable film") == parsed
    assert isinstance(mapped, WordPieceTokenizer) and mapped.vocab_size == len(lines)


def test_tampered_tables_fail_fast_verification(sst2_copy: Path) -> None:
    tables = sst2_copy / TOKENIZER_TABLES_NAME
    data = bytearray(tables.read_bytes())
    data[-1] ^= 1
    tables.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch") as info:
        Bundle.open(sst2_copy)
    assert info.value.path == str(tables)


def test_a_bundle_from_before_the_tables_parses_vocab_txt(sst2_copy: Path) -> None:
    expected = Pipeline.load(sst2_copy).tokenizer.encode("a gripping, unaffable film")
    manifest = json.loads((sst2_copy / MANIFEST_NAME).read_text())
    del manifest["files"][TOKENIZER_TABLES_NAME]
    (sst2_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    (sst2_copy / TOKENIZER_TABLES_NAME).write_bytes(b"not tables")  # not read
    assert Pipeline.load(sst2_copy).tokenizer.encode("a gripping, unaffable film") == expected
