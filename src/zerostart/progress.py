"""A one-line progress bar for long CLI steps (build, push, pull).

Library functions take a ``progress(step: str, fraction: float)`` callback;
this is the terminal implementation the CLI passes them. It lives outside
``cli/`` so that nothing in the library has to import the CLI.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    WIDTH_CHARS = 28

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_step = ""
        self._t0 = time.perf_counter()

    def __call__(self, step: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        elapsed = time.perf_counter() - self._t0
        if self.tty:
            filled = int(fraction * self.WIDTH_CHARS)
            bar = "#" * filled + "-" * (self.WIDTH_CHARS - filled)
            self.stream.write(f"\r[{bar}] {fraction * 100:5.1f}% {elapsed:6.1f}s {step[:50]:<50}")
            if fraction >= 1.0:
                self.stream.write("\n")
        elif step != self._last_step:
            self.stream.write(f"  {elapsed:6.2f}s  {step}\n")
        self._last_step = step
        self.stream.flush()
