"""Every code point through GPT-2's split pattern, ours against `tokenizers`' ``ByteLevel``.

`tokenizers` runs the pattern with Oniguruma, whose Unicode tables are not
Python's `unicodedata`; ``_bytelevel_tables.py`` holds its letter / number /
whitespace classes, derived here by probing ``ByteLevel`` one code point at a
time. Regenerate after a `tokenizers` upgrade:

    python tests/unit/test_tokenizer_bytelevel_unicode.py --write
"""

from __future__ import annotations

import importlib.metadata
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from code_points import full_parity, sweep_code_points
from zerostart.tokenize import _bytelevel
from zerostart.tokenize import _bytelevel_tables as tables

pytestmark = pytest.mark.parity

TABLES = Path(__file__).resolve().parents[2] / "src/zerostart/tokenize/_bytelevel_tables.py"
MAX_CP = 0x10FFFF


def _code_points() -> Iterator[int]:
    for cp in range(MAX_CP + 1):
        if not 0xD800 <= cp <= 0xDFFF:  # lone surrogates are not text (Rust refuses them)
            yield cp


def _ranges(cps: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def derive(code_points: Iterable[int] | None = None) -> dict[str, list[int]]:
    """Oniguruma's class of every code point (or of ``code_points``), as seen through
    ``ByteLevel``'s splits.

    A character that forms one piece after "a" is a letter (`` ?\\p{L}+``), after
    "1" a number, after "!" neither-nor-space; the rest is whitespace.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    split = ByteLevel(add_prefix_space=False, use_regex=True).pre_tokenize_str
    classes: dict[str, list[int]] = {"L": [], "N": [], "S": []}
    for cp in _code_points() if code_points is None else code_points:
        c = chr(cp)
        if len(split("a" + c)) == 1:
            classes["L"].append(cp)
        elif len(split("1" + c)) == 1:
            classes["N"].append(cp)
        elif len(split("!" + c)) != 1:
            classes["S"].append(cp)
    return classes


def _write() -> None:
    classes = derive()
    version = importlib.metadata.version("tokenizers")

    def block(name: str, cps: list[int]) -> str:
        rs = _ranges(cps)
        rows = [
            "    " + " ".join(f"({a:#x}, {b:#x})," for a, b in rs[k : k + 6])
            for k in range(0, len(rs), 6)
        ]
        return f"{name}: tuple[tuple[int, int], ...] = (\n" + "\n".join(rows) + "\n)\n"

    TABLES.write_text(
        '"""Oniguruma\'s \\\\p{L}, \\\\p{N} and \\\\s as Hugging Face `tokenizers`\' ByteLevel sees them.\n\n'
        f"GENERATED from tokenizers {version} (Python's unicodedata is "
        f"{unicodedata.unidata_version}); do not edit.\n"
        "Regenerate: python tests/unit/test_tokenizer_bytelevel_unicode.py --write\n\n"
        "Ranges are inclusive (first, last) code points.\n"
        '"""\n\n# fmt: off\n'
        + block("LETTER_RANGES", classes["L"])
        + block("NUMBER_RANGES", classes["N"])
        + block("SPACE_RANGES", classes["S"])
        + "# fmt: on\n",
        encoding="utf-8",
    )


def test_tables_match_a_fresh_derivation() -> None:
    """The committed classes against `tokenizers` now: in CI on ``sweep_code_points()`` (all
    assigned planes, a sample of the rest), every code point with ZEROSTART_FULL_PARITY=1."""
    pytest.importorskip("tokenizers")
    if full_parity():
        classes = derive()
        assert list(tables.LETTER_RANGES) == _ranges(classes["L"])
        assert list(tables.NUMBER_RANGES) == _ranges(classes["N"])
        assert list(tables.SPACE_RANGES) == _ranges(classes["S"])
        return
    cps = sweep_code_points()
    classes = derive(cps)
    swept = set(cps)
    for name, ranges in (
        ("L", tables.LETTER_RANGES),
        ("N", tables.NUMBER_RANGES),
        ("S", tables.SPACE_RANGES),
    ):
        committed = {cp for a, b in ranges for cp in range(a, b + 1)} & swept
        assert committed == set(classes[name]), name


def test_every_code_point_splits_like_tokenizers() -> None:
    """Each code point in several contexts, and runs of it: pieces and byte characters equal."""
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bad = []
    # The worker splits in C (tokenizer.so), swept over every code point by
    # test_tokenizer_bpe_parity.py; this is the pure-Python fallback's split: in CI every
    # 7th code point of the sweep, all of them with ZEROSTART_FULL_PARITY=1.
    for cp in sweep_code_points()[:: 1 if full_parity() else 7]:
        c = chr(cp)
        text = f"x{c}{c}'s 1{c} {c}!{c}  {c}\n{c}9"
        want = [p for p, _ in ref.pre_tokenize_str(text)]
        got = [_bytelevel.to_byte_chars(p) for p in _bytelevel.split(text)]
        if got != want:
            bad.append((hex(cp), text, got, want))
    assert not bad, f"{len(bad)} code points split differently; first: {bad[:3]}"


def test_ascii_classes_are_the_stand_in_pattern_s() -> None:
    """ASCII is never translated: its classes must be exactly the pattern's ASCII classes."""
    for cp in range(128):
        want = "a" if chr(cp).isalpha() else "0" if chr(cp).isdigit() else None
        if chr(cp) in "\t\n\x0b\x0c\r ":
            want = "\t"
        assert _bytelevel.char_class(cp) == (want or "!"), hex(cp)


def test_unicode_version_differences_are_known() -> None:
    """Where Oniguruma's letters differ from unicodedata's, documented in docs/tokenizer.md."""
    pytest.importorskip("tokenizers")
    letters = {cp for a, b in tables.LETTER_RANGES for cp in range(a, b + 1)}
    py_letters = {cp for cp in _code_points() if unicodedata.category(chr(cp)).startswith("L")}
    # Oniguruma knows letters Python 3.11's Unicode 14 does not (newer Unicode); never fewer.
    assert py_letters - letters == set()


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
        print(f"wrote {TABLES}")
    else:
        sys.exit(pytest.main([__file__, "-q"]))
