"""How much one request and one engine call may hold: one immutable object for the worker.

The server's config (``serve/config.py``: ``ServerConfig.limits``) builds it
once; the same object then reaches every place that enforces a part of it:

==========================  =================================  ==========================
field                       enforced by                        on excess
==========================  =================================  ==========================
``max_client_batch_size``   request parsing (``zerostart.api``  413 / 422 (TEI's codes)
                            through ``Pipeline``)
``max_batch_sequences``     the batcher (``serve/batcher.py``)  split across engine calls
                            and ``Pipeline.execute``
``max_batch_tokens``        the batcher                         split across engine calls
==========================  =================================  ==========================

Before this object, ``serve --max-batch-size 64`` reached the batcher but not
``Pipeline.load``, which kept its own 32: every 64-sequence batch ran as two
engine calls of 32 while ``/info`` said 64. Defaults are TEI's
(``--max-client-batch-size`` 32, ``--max-batch-tokens`` 16384) and 32
sequences per call (bigger batches gain little on CPU).

Standard library only (a leaf: ``pipeline.py`` and ``serve/`` both import it).
"""

from __future__ import annotations

from typing import Any

from zerostart._records import Frozen
from zerostart.errors import ServeError


class Limits(Frozen):
    """Inputs per request and sequences/tokens per engine call; see the module docstring.

    Immutable (a plain class, ``zerostart._records``); :meth:`new` returns a checked copy.
    """

    __slots__ = ("max_batch_sequences", "max_batch_tokens", "max_client_batch_size")
    max_client_batch_size: int  # inputs in one request (TEI's default: 32)
    max_batch_sequences: int  # sequences per engine call (32)
    max_batch_tokens: int  # sum of sequence lengths per engine call (TEI's default: 16384)

    def __init__(
        self,
        max_client_batch_size: int = 32,
        max_batch_sequences: int = 32,
        max_batch_tokens: int = 16384,
    ) -> None:
        for name, value in (
            ("max_client_batch_size", max_client_batch_size),
            ("max_batch_sequences", max_batch_sequences),
            ("max_batch_tokens", max_batch_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ServeError(f"limit {name} must be an integer > 0, got {value!r}")
            object.__setattr__(self, name, value)

    def new(self, **changes: Any) -> Limits:
        """A copy with ``changes`` applied (and validated again)."""
        return self._replace(**changes)
