"""Which code points the every-code-point tokenizer sweeps try.

With ``ZEROSTART_FULL_PARITY=1``: all 1,112,064 scalar values (every code point
but the surrogates, which are not text). In CI: all of planes 0-3 and 14 (every
code point any Unicode version has assigned outside the private-use planes:
BMP, SMP, SIP, TIP and the tag / variation-selector plane) and every
``STRIDE``-th code point of planes 4-13 (unassigned in every Unicode version to
date, 17.0 included) and 15-16 (private use by definition, stable), plus each of
those planes' first and last two. A tokenizer sees every code point of a plane
in the second group alike (category Cn or Co, no normalisation mapping, no
letter or number class), so a sample of them finds what the whole would; the
full sweep is for changes to the Unicode tables or the normalisers
(docs/testing.md).
"""

from __future__ import annotations

import os

STRIDE = 127  # a prime, so the sample does not fall on one residue of any power of two
PLANE = 0x10000
FULL_PLANES = (0, 1, 2, 3, 14)


def full_parity() -> bool:
    """True when ``ZEROSTART_FULL_PARITY=1`` asks for the whole sweep."""
    return os.environ.get("ZEROSTART_FULL_PARITY") == "1"


def sweep_code_points() -> list[int]:
    """The code points to sweep, ascending (see the module docstring)."""
    if full_parity():
        return [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    out: list[int] = []
    for plane in range(17):
        start, end = plane * PLANE, (plane + 1) * PLANE
        if plane in FULL_PLANES:
            out.extend(cp for cp in range(start, end) if not 0xD800 <= cp <= 0xDFFF)
        else:
            picked = set(range(start, end, STRIDE)) | {start + 1, end - 2, end - 1}
            out.extend(sorted(picked))
    return out
