"""SIGTERM as Ctrl-C, for the commands that must clean up (`run`, and `up` building its slot image).

A module of its own so the verb modules that use it (``image``, ``platform``)
need not import ``main``, which imports them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C inside the block, so ``finally`` clauses clean up.

    Its default action would end the process on the spot (a `zerostart run` or
    `up` stopped by a supervisor would leave containers, mounts or build folders).
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
