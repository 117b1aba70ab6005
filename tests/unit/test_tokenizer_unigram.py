"""The Unigram tokenizer on hand-made tokenizer.json files: results worked out by hand, and refusals.

No reference library needed (test_tokenizer_unigram_parity.py compares with
`tokenizers`); these pin the rules themselves: Viterbi's choice and its ties,
unknown characters fused into one token, byte fallback, the compiled file's
checks, and convert's refusals naming the part it cannot serve.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zerostart.errors import TokenizerError
from zerostart.tokenize import Tokenizer
from zerostart.tokenize._compiled import NATIVE_LIB_NAME, CompiledFile
from zerostart.tokenize._native import ENV as NATIVE_ENV
from zerostart.tokenize._unigram import UNK_PENALTY
from zerostart.tokenize.compile import compile_tokenizer_json

# Every test twice: on the C loops of tokenizer.so and on the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("inner_loops")

SPECIALS = {"unk_token": "<unk>", "pad_token": "<pad>"}
VOCAB = [
    ["<unk>", 0.0],
    ["<pad>", 0.0],
    ["<s>", 0.0],
    ["</s>", 0.0],
    ["▁", -2.0],
    ["▁a", -1.0],
    ["b", -2.0],
    ["ab", -2.5],  # "▁ab": ▁a + b = -3.0, ▁ + ab = -4.5 -> ▁a b
    ["▁ab", -3.5],  # but the whole piece (-3.5) loses to ▁a + b (-3.0)
    ["c", -1.5],
    ["cc", -3.0],  # ties with c + c: a later candidate must be strictly better -> "cc"
    ["é", -1.0],
    ["<0xF0>", -9.0],
    ["<0x9F>", -9.0],
    ["<0x98>", -9.0],
    ["<0x80>", -9.0],
]


def added(i: int, content: str, **flags: bool) -> dict[str, Any]:
    """An added_tokens entry as `tokenizers` writes it."""
    base = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return {"id": i, "content": content, **base, "special": True, **flags}


def tokenizer_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": "1.0",
        "added_tokens": [added(0, "<unk>"), added(2, "<s>"), added(3, "</s>")],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "</s>", "type_id": 1}},
            ],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [2], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [3], "tokens": ["</s>"]},
            },
        },
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": VOCAB, "byte_fallback": False},
    }
    data.update(overrides)
    return data


def build(tmp_path: Path, **overrides: Any) -> Tokenizer:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tokenizer_json(**overrides)), encoding="utf-8")
    settings = compile_tokenizer_json(path, tmp_path, special_tokens=SPECIALS)
    assert settings.model == "Unigram" and settings.pad_token == "<pad>"
    tok = Tokenizer.from_bundle(tmp_path, settings.spec)
    native = os.environ[NATIVE_ENV] == "1"
    assert (tok.model.native is not None) is native  # type: ignore[attr-defined]
    return tok


def test_viterbi_picks_the_best_total_score_and_breaks_ties_like_tokenizers(
    tmp_path: Path,
) -> None:
    tok = build(tmp_path)
    enc = tok.encode("ab cc")
    assert enc.tokens == ["<s>", "▁a", "b", "▁", "cc", "</s>"]
    assert enc.ids == [2, 5, 6, 4, 10, 3]
    # the prepended ▁ shares the first character's span; offsets index the original text
    assert enc.offsets == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 5), (0, 0)]
    assert enc.word_ids == [None, 0, 0, 1, 1, None]
    assert enc.special_tokens_mask == [1, 0, 0, 0, 0, 1]


def test_unknown_characters_fuse_into_one_token_with_their_text(tmp_path: Path) -> None:
    tok = build(tmp_path)
    enc = tok.encode("aXYb")
    assert enc.tokens[1:-1] == ["▁a", "XY", "b"]
    assert enc.ids[1:-1] == [5, 0, 6]
    assert enc.offsets[1:-1] == [(0, 1), (1, 3), (3, 4)]
    assert tok.decode(enc.ids) == "ab"  # <unk> is a special added token: skipped
    # tokenizers: only the first token (here <s>) loses its ▁, so "▁a" keeps a space
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<s> a<unk>b</s>"


def test_byte_fallback_spells_an_unknown_character_in_byte_pieces(tmp_path: Path) -> None:
    model = {"type": "Unigram", "unk_id": 0, "vocab": VOCAB, "byte_fallback": True}
    tok = build(tmp_path, model=model)
    enc = tok.encode("é😀")  # 😀 = F0 9F 98 80, all four pieces exist
    assert enc.tokens[1:-1] == ["▁", "é", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert enc.offsets[1:-1] == [(0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (1, 2)]
    enc = tok.encode("😁")  # 81 is missing: the whole token falls back to <unk>
    assert enc.tokens[1:-1] == ["▁", "😁"] and enc.ids[1:-1] == [4, 0]


def test_unknown_score_is_the_lowest_piece_minus_the_penalty(tmp_path: Path) -> None:
    tok = build(tmp_path)
    meta = CompiledFile(tmp_path / "tokenizer.bin").meta["model"]
    assert meta["min_score"] == -9.0
    assert tok.model._unk_score == -9.0 - UNK_PENALTY  # type: ignore[attr-defined]


def test_pair_template_type_ids_and_truncation_direction(tmp_path: Path) -> None:
    tok = build(tmp_path)
    enc = tok.encode("a a a", "c c", max_length=8)
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1, 1]
    assert enc.tokens == ["<s>", "▁a", "▁a", "</s>", "▁", "c", "▁", "</s>"]
    assert enc.truncated and enc.untruncated_length == 10
    tok.direction = "left"
    enc = tok.encode("a a a", "c c", max_length=8)
    assert enc.tokens == ["<s>", "▁a", "▁a", "</s>", "c", "▁", "c", "</s>"]


def test_added_token_with_lstrip_takes_the_spaces_before_it(tmp_path: Path) -> None:
    tokens = [
        *tokenizer_json()["added_tokens"],
        added(1, "<pad>", lstrip=True),
    ]
    tok = build(tmp_path, added_tokens=tokens)
    enc = tok.encode("a  <pad>b")
    # the text after an added token is its own segment: Metaspace prepends ▁ again
    assert enc.tokens[1:-1] == ["▁a", "  <pad>", "▁", "b"]
    assert enc.offsets[1:-1] == [(0, 1), (1, 8), (8, 9), (8, 9)]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"model": {"type": "WordLevel", "vocab": {}}}, "model type 'WordLevel'"),
        ({"normalizer": {"type": "BertNormalizer"}}, "normalizer 'BertNormalizer'"),
        (
            {"normalizer": {"type": "Replace", "pattern": {"Regex": r"\p{L}+"}, "content": ""}},
            "regex",
        ),
        ({"pre_tokenizer": {"type": "Digits"}}, "pre_tokenizer 'Digits'"),
        ({"post_processor": {"type": "Sequence", "processors": []}}, "post_processor 'Sequence'"),
        ({"decoder": {"type": "CTC"}}, "decoder 'CTC'"),
        (
            {"added_tokens": [added(9, "c", single_word=True)]},
            "single_word",
        ),
        (
            {
                "normalizer": {"type": "Lowercase"},
                "added_tokens": [added(9, "c", normalized=True)],
            },
            "normalized=true",
        ),
        (
            {"model": {"type": "Unigram", "unk_id": 99, "vocab": VOCAB}},
            "unk_id 99",
        ),
    ],
)
def test_convert_refuses_what_it_cannot_serve_naming_it(
    tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(TokenizerError, match=named) as err:
        build(tmp_path, **overrides)
    assert str(tmp_path / "tokenizer.json") in str(err.value)
    assert not (tmp_path / "tokenizer.bin").exists()


def test_a_damaged_tokenizer_bin_is_refused_naming_it(tmp_path: Path) -> None:
    tok = build(tmp_path)
    spec = tok.spec
    path = tmp_path / "tokenizer.bin"
    data = bytearray(path.read_bytes())
    data[:8] = b"NOTATOKN"
    path.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match=r"not a zerostart tokenizer\.bin"):
        Tokenizer.from_bundle(tmp_path, spec)
    path.write_bytes(b"")
    with pytest.raises(TokenizerError, match="cannot map"):
        Tokenizer.from_bundle(tmp_path, spec)
    path.unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer\.bin"):
        Tokenizer.from_bundle(tmp_path, spec)


def test_loading_maps_the_tables_and_imports_nothing_outside_the_standard_library(
    tmp_path: Path,
) -> None:
    tok = build(tmp_path)
    code = (
        "import json, sys; from zerostart.tokenize import Tokenizer; "
        f"t = Tokenizer.from_bundle({str(tmp_path)!r}, json.loads({json.dumps(json.dumps(tok.spec))})); "
        "t.encode('ab cc'); "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
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
    modules = set(json.loads(out.stdout.splitlines()[-1]))
    # site's own start-up modules (__main__, setuptools' _distutils_hack .pth) are not ours
    third_party = (
        modules - set(sys.stdlib_module_names) - {"zerostart", "__main__", "_distutils_hack"}
    )
    assert not third_party, third_party


TEXTS = ["ab cc", "aXYb", "cc c ccc", "▁a ▁ab", "é😀 é", "  a   b  ", "XYZ", "", "abé cXc"]


def test_the_native_loops_answer_as_the_python_ones(tmp_path: Path, inner_loops: str) -> None:
    if inner_loops != "native":
        pytest.skip("compares the two paths once")
    for fallback in (False, True):
        model = {"type": "Unigram", "unk_id": 0, "vocab": VOCAB, "byte_fallback": fallback}
        folder = tmp_path / str(fallback)
        folder.mkdir()
        native = build(folder, model=model)
        # This interpreter exports the C API functions the library appends with, so the
        # worker's path is the one that fills the lists in C (zs_unigram_encode_py) ...
        assert native.model._encode_py is not None  # type: ignore[attr-defined]
        # ... and the array path (zs_unigram_segment) stays for interpreters that do not.
        arrays = Tokenizer.from_bundle(folder, native.spec)
        arrays.model._encode_py = None  # type: ignore[attr-defined]
        python = Tokenizer.from_bundle(folder, native.spec, native=False)
        assert python.model.native is None  # type: ignore[attr-defined]
        for text in TEXTS:
            b = python.encode(text, "c " + text)
            for tok in (native, arrays):
                a = tok.encode(text, "c " + text)
                assert (a.ids, a.tokens, a.offsets, a.word_ids) == (
                    b.ids,
                    b.tokens,
                    b.offsets,
                    b.word_ids,
                ), text
            for word in text.split():  # the per-word path (used without Metaspace)
                assert native.model.pieces(word) == python.model._pieces(word), word  # type: ignore[attr-defined]


def test_without_a_usable_library_the_tokenizer_runs_in_python(
    tmp_path: Path, inner_loops: str, caplog: pytest.LogCaptureFixture
) -> None:
    if inner_loops != "native":
        pytest.skip("needs the library")
    (tmp_path / "built").mkdir()
    tok = build(tmp_path / "built")
    expected = tok.encode("ab cc aXYb").ids
    stub = tmp_path / "stub.c"  # a library of another ABI version
    stub.write_text("long long zs_tok_abi_version(void) { return 99; }\n", encoding="utf-8")
    for name in ("foreign", "abi", "absent"):  # a folder each: dlopen keeps a path's library
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(tmp_path / "built" / "tokenizer.bin", folder / "tokenizer.bin")
        lib = folder / NATIVE_LIB_NAME
        if name == "foreign":
            lib.write_bytes(b"\x7fELF not a library")
        elif name == "abi":
            cc = os.environ.get("CC", "gcc")
            subprocess.run(
                [cc, "-shared", "-fPIC", "-o", str(lib), str(stub)], check=True, timeout=60
            )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zerostart.tokenize"):
            again = Tokenizer.from_bundle(folder, tok.spec)
        assert again.model.native is None, name  # type: ignore[attr-defined]
        assert again.encode("ab cc aXYb").ids == expected, name
        if name == "absent":
            assert not caplog.text
        else:
            assert str(folder / NATIVE_LIB_NAME) in caplog.text, name
            assert "runs in Python" in caplog.text, name
        if name == "abi":
            assert "has ABI 99" in caplog.text


def test_a_damaged_trie_is_refused_before_the_native_loops_walk_it(
    tmp_path: Path, inner_loops: str
) -> None:
    if inner_loops != "native":
        pytest.skip("the native check")
    tok = build(tmp_path)
    path = tmp_path / "tokenizer.bin"
    tables = CompiledFile(path)
    offset = tables._sections["trie_first"][0]
    del tables
    data = bytearray(path.read_bytes())
    data[offset + 4 : offset + 8] = (1 << 30).to_bytes(4, "little")  # a child far outside
    path.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match="corrupt Unigram trie"):
        Tokenizer.from_bundle(tmp_path, tok.spec)
    assert Tokenizer.from_bundle(tmp_path, tok.spec, native=False)  # Python's checks are lazier


def test_a_segment_the_normaliser_empties_gives_no_token(tmp_path: Path) -> None:
    spec_normalizer = {"type": "Replace", "pattern": {"String": "X"}, "content": ""}
    tok = build(tmp_path, normalizer=spec_normalizer)
    enc = tok.encode("X<s>Xab")
    assert enc.tokens[1:-1] == ["<s>", "▁a", "b"] and enc.ids[1:-1] == [2, 5, 6]


@pytest.mark.parametrize(
    ("pattern", "required"),
    [(" {2,}", "  "), ("ba*", "b"), ("ab+c", "a"), ("x{3}y{2,5}", "xxx"), ("a+?", None),
     ("a?b", "b"), (r"\.\.+", "."), ("x{0,3}y", "y")],
)  # fmt: skip
def test_replace_skips_only_texts_no_match_can_be_in(
    pattern: str, required: str | None, inner_loops: str
) -> None:
    """The substring check is a necessary condition: a text without it has no match."""
    from zerostart.tokenize._normalizers import Replace, regex_is_simple, required_substring

    if inner_loops != "native":
        pytest.skip("pure Python: once")
    assert regex_is_simple(pattern)
    assert required_substring(pattern) == required
    rx = re.compile(pattern)
    replace = Replace(rx, "_", None)
    for text in ["", "a", "aa b", "ab  c", "xxxyy", "abbc", "....", " x  y   z", "a.b..c"]:
        expected = rx.sub("_", text)
        assert replace.normalize(text, None)[0] == expected, (pattern, text)
        if required is not None and required not in text:
            assert rx.search(text) is None, (pattern, text)
