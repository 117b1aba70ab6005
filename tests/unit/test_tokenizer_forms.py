"""The NFC / NFD / NFKC / NFKD normalisers against Hugging Face `tokenizers`, code point by code point.

`tokenizers` normalises with the unicode-normalization-alignments crate, whose
Unicode tables are older than Python's ``unicodedata``: what differs is in
``_unicode_tables`` (``NFD_KEPT``, ``NFKD_KEPT``, ``CCC_UNKNOWN_RANGES``,
regenerated and checked by test_tokenizer_unicode.py). Here: every code point
alone in each form; every code point that decomposes, combines or composes,
before and after marks (composition, blocking, reordering); random mixes of the
hard cases, comparing each normalised character's span in the original (the
reference's offsets through a one-character-per-token tokenizer); and the real
e5-small tokenizer with each form as its normaliser, end to end.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from code_points import sweep_code_points
from zerostart.tokenize import Tokenizer
from zerostart.tokenize._normalizers import UnicodeForm
from zerostart.tokenize._unicode_tables import CCC_UNKNOWN_RANGES, NFD_KEPT, NFKD_KEPT
from zerostart.tokenize.compile import compile_tokenizer_json

pytestmark = pytest.mark.parity

FORMS = ("NFC", "NFD", "NFKC", "NFKD")
FUZZ_TEXTS = 3000
MARKS_AROUND = ("\u0301", "\u0323", "\u0334", "\u0345", "\u05b8", "\u3099", "\u0f71")


def _code_points() -> list[int]:
    return sweep_code_points()  # in CI: planes 0-3, 14 and a sample of the rest


@pytest.fixture(scope="module")
def tk() -> Any:
    return pytest.importorskip("tokenizers")


@pytest.mark.parametrize("form", FORMS)
def test_every_code_point_alone(tk: Any, form: str) -> None:
    ref = getattr(tk.normalizers, form)()
    ours = UnicodeForm(form)
    bad = []
    for cp in _code_points():
        c = chr(cp)
        got, align = ours.normalize(c, None)
        want = ref.normalize_str(c)
        if got != want or (align is not None and any(a != 0 for a in align)):
            bad.append(f"U+{cp:04X}: tokenizers {want!r}, ours {got!r} {align}")
    assert not bad, f"{len(bad)} code points differ, first: {bad[:10]}"


def _interesting() -> list[int]:
    """Code points that decompose, carry a combining class, or start a composition."""
    out = []
    for cp in _code_points():
        c = chr(cp)
        if (
            unicodedata.decomposition(c)
            or unicodedata.combining(c)
            or unicodedata.normalize("NFC", c + "\u0301") != c + "\u0301"
            or 0x1100 <= cp <= 0x11FF
        ):
            out.append(cp)
    return out


@pytest.mark.parametrize("form", FORMS)
def test_every_decomposing_combining_or_composing_code_point_between_marks(
    tk: Any, form: str
) -> None:
    ref = getattr(tk.normalizers, form)()
    ours = UnicodeForm(form)
    bad = []
    for cp in _interesting():
        c = chr(cp)
        for text in (
            "a" + c,
            c + "\u0301",
            "e" + c + "\u0323",
            "\u1100" + c,
            "\U00011935" + c,
            c + "\U00011930",
        ):
            got = ours.normalize(text, None)[0]
            if got != ref.normalize_str(text):
                bad.append(f"{text!a}: tokenizers {ref.normalize_str(text)!a}, ours {got!a}")
    assert not bad, f"{len(bad)} texts differ, first: {bad[:10]}"


def _per_character(tk: Any, form: str) -> Any:
    """A tokenizer whose tokens are the normalised characters: its offsets are their spans."""
    tok = tk.Tokenizer(tk.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.normalizer = getattr(tk.normalizers, form)()
    tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex("."), "isolated")
    return tok


@pytest.mark.parametrize("form", FORMS)
def test_alignments_of_mixed_marks_compositions_and_old_tables(tk: Any, form: str) -> None:
    rng = random.Random(20261207)
    pool = [
        *"aeoAx ",
        *MARKS_AROUND,
        *"\u0300\u0327\u031b\u0308\u0344\u0387\u05b7\u0591\u0f72\u0f80",
        *"\u1100\u1161\u11a8\uac00\u212b\u00c5\u1e69\u1e0b\u0b47\u0b3e\ufb01\u2460\u304b",
        "\U00011935",
        "\U00011930",
        "\U00011938",
        *(chr(a) for a, _ in CCC_UNKNOWN_RANGES),
        *(chr(cp) for cp in NFKD_KEPT[:12]),
        *(chr(cp) for cp in NFD_KEPT),
    ]
    ref = _per_character(tk, form)
    ours = UnicodeForm(form)
    bad = []
    for _ in range(FUZZ_TEXTS):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 14)))
        got, align = ours.normalize(text, None)
        spans = [(a, a + 1) for a in (range(len(got)) if align is None else align)]
        want = ref.encode(text)
        if got != "".join(ref.normalizer.normalize_str(text)) or spans != list(want.offsets):
            bad.append(f"{text!a}: ours {got!a} {spans}, tokenizers {list(want.offsets)}")
    assert not bad, f"{len(bad)} texts differ, first: {bad[:5]}"


@pytest.fixture(scope="module")
def e5_compiled(
    tk: Any, tmp_path_factory: pytest.TempPathFactory, model_dir: Callable[[str], Path]
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """e5-small compiled once with NFKC; the normaliser lives in the spec, not in tokenizer.bin."""
    data = json.loads((model_dir("e5-small") / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "NFKC"}
    out = tmp_path_factory.mktemp("e5-nfkc")
    path = out / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    settings = compile_tokenizer_json(path, out, special_tokens={"unk_token": "<unk>"})
    return data, out, settings.spec


@pytest.mark.parametrize("form", FORMS)
def test_e5_small_with_each_form_as_its_normaliser(
    tk: Any, form: str, e5_compiled: tuple[dict[str, Any], Path, dict[str, Any]]
) -> None:
    from tokenizer_corpus import corpus

    data, folder, spec = e5_compiled
    ours = Tokenizer.from_bundle(folder, {**spec, "normalizer": {"type": form}})
    ref = tk.Tokenizer.from_str(json.dumps({**data, "normalizer": {"type": form}}))
    ref.no_truncation()
    ref.no_padding()
    texts = [*corpus(), "e\u0301\u0323 \u212b \ufb01ne \u1100\u1161\u11a8 \U00011935\U00011930"]
    for text in texts:
        a, b = ours.encode(text), ref.encode(text)
        assert (a.ids, a.offsets) == (b.ids, list(b.offsets)), text
