"""JSON numbers as `tokenizers` reads them: serde_json's default (not round-trip) float parse.

Why: `tokenizers` loads tokenizer.json with serde_json, whose default float parser
is fast but not correctly rounded. It keeps up to 19-20 significant digits in a
u64, converts that to f64 (one rounding), then multiplies or divides by a power
of ten (a second rounding), ignoring digits past the u64. Python's ``json`` is
correctly rounded, so a 17-digit Unigram score such as ``-1.8162320129329022``
becomes ``...9022`` in Python and ``...9024`` in `tokenizers`: one ulp, enough
to flip Viterbi's choice between two segmentations whose sums tie within an ulp
(``?`` + ``??`` against ``??`` + ``?``). Unigram scores are parsed with this
function at convert time so our sums are the reference's, bit for bit.

Source: serde_json 1.x ``src/de.rs`` (``parse_integer``, ``parse_decimal``,
``parse_decimal_overflow``, ``parse_exponent``, ``f64_from_parts``) without the
``float_roundtrip`` feature, which `tokenizers` does not enable.

Build-time module: standard library only.
"""

from __future__ import annotations

U64_MAX = 2**64 - 1
_POW10 = [float(f"1e{i}") for i in range(309)]  # serde_json's POW10 table (exact literals)


def _from_parts(negative: bool, significand: int, exponent: int) -> float:
    f = float(significand)  # u64 -> f64: round half to even, like Rust's `as`
    while True:
        if abs(exponent) < len(_POW10):
            pow10 = _POW10[abs(exponent)]
            f = f * pow10 if exponent >= 0 else f / pow10
            break
        if f == 0.0:
            break
        if exponent >= 0:
            raise ValueError("number out of range")
        f /= 1e308
        exponent += 308
    return -f if negative else f


def serde_float(text: str) -> float:
    """The f64 serde_json (default features) reads for the JSON number ``text``.

    For ``json.load(..., parse_float=serde_float)``: called for numbers with a
    fraction or an exponent. Raises ValueError for text that is not a JSON number.
    """
    s = text
    negative = s.startswith("-")
    if negative:
        s = s[1:]
    mantissa, _, exp_text = s.replace("E", "e").partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    if not int_part.isdigit() or (frac_part and not frac_part.isdigit()):
        raise ValueError(f"not a JSON number: {text!r}")
    significand, exponent, overflowed = 0, 0, False
    for ch in int_part:
        if overflowed:
            exponent += 1  # parse_long_integer: further integer digits scale by 10
            continue
        nxt = significand * 10 + (ord(ch) - 48)
        if nxt > U64_MAX:
            overflowed = True
            exponent += 1
            continue
        significand = nxt
    for ch in frac_part:
        if overflowed:
            break  # parse_decimal_overflow: the remaining digits are ignored
        nxt = significand * 10 + (ord(ch) - 48)
        if nxt > U64_MAX:
            overflowed = True
            break
        significand = nxt
        exponent -= 1
    if exp_text:
        sign = -1 if exp_text.startswith("-") else 1
        digits = exp_text.lstrip("+-")
        if not digits.isdigit():
            raise ValueError(f"not a JSON number: {text!r}")
        exponent += sign * int(digits)
    return _from_parts(negative, significand, exponent)
