"""Durations as users write them: ``90``, ``"90s"``, ``"10m"``, ``"4h"``, ``"1d"`` (seconds out).

A leaf (standard library only): ``platform.toml`` (platform_toml.py) and the
fleet's files (fleet/config.py, keepalive.py) read durations alike without one
package importing the other.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_FACTOR_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (a number of seconds or ``"<number><ms|s|m|h|d>"``).

    Raises ``ValueError`` naming the accepted forms; negative values are refused.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _FACTOR_S[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (seconds, or e.g. '500ms', '90s', '10m', '4h')")
