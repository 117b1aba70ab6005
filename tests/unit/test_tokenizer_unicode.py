"""Our per-character Unicode view against `tokenizers`' own, for every code point.

`tokenizers` 0.23 classifies characters with the `unicode_categories` crate (old
Unicode tables), decomposes with `unicode-normalization-alignments` (Unicode
12-ish) and lowercases with Rust's std (Unicode 16), while Python 3.11's
`unicodedata` is Unicode 14. `zerostart/tokenize/_unicode_tables.py` holds the
tokenizers-side view, derived here by probing `tokenizers` itself one code point
at a time. This test re-derives it and checks every code point, so a new
`tokenizers` or Python that changes behaviour shows up as a failing test.

Regenerate the table with::

    python tests/unit/test_tokenizer_unicode.py --write
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from zerostart.bundle.manifest import TokenizerSettings

MAX_CODE_POINT = 0x110000
SURROGATES = range(0xD800, 0xE000)
TABLE_PATH = (
    Path(__file__).resolve().parents[2] / "src" / "zerostart" / "tokenize" / "_unicode_tables.py"
)


def _code_points() -> list[int]:
    return [cp for cp in range(MAX_CODE_POINT) if cp not in SURROGATES]


def _ranges(cps: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return tuple((a, b) for a, b in out)


def derive_tables() -> dict[str, Any]:
    """Probe `tokenizers` one code point at a time (about 10 s)."""
    from tokenizers import normalizers, pre_tokenizers

    clean = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False
    )
    strip = normalizers.BertNormalizer(
        clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False
    )
    nfd = normalizers.NFD()
    nfkd = normalizers.NFKD()
    lower = normalizers.Lowercase()
    pre = pre_tokenizers.BertPreTokenizer()

    other, mark, punct, space, nfd_kept, nfkd_kept, ccc_unknown = [], [], [], [], [], [], []
    decomposed_of: dict[int, str] = {}
    lower_overrides: dict[int, str] = {}
    for cp in _code_points():
        c = chr(cp)
        if clean.normalize_str(c) == "":
            other.append(cp)
        decomposed = nfd.normalize_str(c)
        if decomposed == c and strip.normalize_str(c) == "":
            mark.append(cp)
        if decomposed != c:
            decomposed_of[cp] = decomposed
        if decomposed != unicodedata.normalize("NFD", c):
            nfd_kept.append(cp)
        elif nfkd.normalize_str(c) != unicodedata.normalize("NFKD", c):
            # the crate lacks this compatibility decomposition (the worker keeps c as is)
            assert nfkd.normalize_str(c) == c, f"U+{cp:04X}: NFKD differs otherwise"
            nfkd_kept.append(cp)
        lowered = lower.normalize_str(c)
        if lowered != c.lower():
            lower_overrides[cp] = lowered
        n_splits = len(pre.pre_tokenize_str("a" + c + "a"))
        if n_splits == 3:
            punct.append(cp)
        elif n_splits == 2:
            space.append(cp)
        # U+0334 has the smallest non-zero combining class: a known class > 1 reorders.
        if unicodedata.combining(c) > 1 and nfd.normalize_str(c + "\u0334") == c + "\u0334":
            ccc_unknown.append(cp)
    # A character whose decomposition holds a combining mark that stripping keeps:
    # NFD may reorder it against its neighbours (tokenizers keeps alignments in place).
    marks = set(mark)
    unknown = set(ccc_unknown)

    def kept_mark(ch: str) -> bool:
        cp = ord(ch)
        return unicodedata.combining(ch) > 0 and cp not in unknown and cp not in marks

    reorder = [
        cp for cp in _code_points() if any(kept_mark(d) for d in decomposed_of.get(cp, chr(cp)))
    ]
    return {
        "OTHER_RANGES": _ranges(other),
        "MARK_RANGES": _ranges(mark),
        "PUNCT_RANGES": _ranges(punct),
        "SPACE_RANGES": _ranges(space),
        "CCC_UNKNOWN_RANGES": _ranges(ccc_unknown),
        "REORDER_RANGES": _ranges(reorder),
        "NFD_KEPT": tuple(nfd_kept),
        "NFKD_KEPT": tuple(nfkd_kept),
        "LOWER_OVERRIDES": dict(sorted(lower_overrides.items())),
    }


def render_module(tables: dict[str, Any]) -> str:
    import tokenizers

    lines = [
        '"""Unicode character classes exactly as Hugging Face `tokenizers` sees them.',
        "",
        f"GENERATED from tokenizers {tokenizers.__version__} and Python's unicodedata "
        f"{unicodedata.unidata_version}; do not edit.",
        "Regenerate: python tests/unit/test_tokenizer_unicode.py --write",
        "",
        "`tokenizers` uses older Unicode tables for categories and NFD and newer ones for",
        "lowercasing than the interpreter does, so the worker cannot ask `unicodedata`",
        "alone. Ranges are inclusive (first, last) code points.",
        '"""',
        "",
        "# fmt: off",
    ]
    for name, value in tables.items():
        if name == "LOWER_OVERRIDES":
            lines.append(f"{name}: dict[int, str] = {{")
            lines.extend(f"    {cp:#x}: {s!r}," for cp, s in value.items())
            lines.append("}")
        elif name in ("NFD_KEPT", "NFKD_KEPT"):
            lines.append(f"{name}: tuple[int, ...] = ({', '.join(f'{cp:#x}' for cp in value)},)")
        else:
            lines.append(f"{name}: tuple[tuple[int, int], ...] = (")
            row: list[str] = []
            for a, b in value:
                row.append(f"({a:#x}, {b:#x}),")
                if len(row) == 6:
                    lines.append("    " + " ".join(row))
                    row = []
            if row:
                lines.append("    " + " ".join(row))
            lines.append(")")
    lines.append("# fmt: on")
    return "\n".join(lines) + "\n"


@pytest.mark.parity
def test_committed_tables_match_tokenizers() -> None:
    pytest.importorskip("tokenizers")
    from zerostart.tokenize import _unicode_tables as committed

    derived = derive_tables()
    for name, value in derived.items():
        assert getattr(committed, name) == value, (
            f"{name} differs from what tokenizers does now: "
            "regenerate with `python tests/unit/test_tokenizer_unicode.py --write`"
        )


SETTINGS_GRID = [
    TokenizerSettings(lowercase=True),
    TokenizerSettings(lowercase=False),
    TokenizerSettings(lowercase=False, strip_accents=True),
    TokenizerSettings(lowercase=True, strip_accents=False),
]


@pytest.mark.parity
@pytest.mark.parametrize(
    "settings", SETTINGS_GRID, ids=lambda s: f"lc{s.lowercase}-sa{s.strip_accents}"
)
def test_every_code_point_normalises_like_tokenizers(settings: TokenizerSettings) -> None:
    """Each code point alone: clean text, CJK spacing, NFD minus marks, lowercase."""
    pytest.importorskip("tokenizers")
    from tokenizers import normalizers

    from zerostart.tokenize._normalize import Normalizer

    ref = normalizers.BertNormalizer(
        clean_text=settings.clean_text,
        handle_chinese_chars=settings.handle_chinese_chars,
        strip_accents=settings.strip_accents,
        lowercase=settings.lowercase,
    )
    ours = Normalizer(settings)
    bad: list[str] = []
    for cp in _code_points():
        c = chr(cp)
        want = ref.normalize_str(c)
        got = ours.map_char(cp)
        if got != want:
            bad.append(f"U+{cp:04X}: tokenizers {want!r}, ours {got!r}")
    assert not bad, f"{len(bad)} code points differ, first: {bad[:10]}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/unit/test_tokenizer_unicode.py --write")
    TABLE_PATH.write_text(render_module(derive_tables()), encoding="utf-8")
    print(f"wrote {TABLE_PATH}")
