"""A request, tokenised: what the batcher runs and how its answer is built.

Runtime module: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zerostart._records import Record
from zerostart.tokenize import Encoding


class Job(Record):
    """``encodings`` go to the engine (possibly merged with other jobs'); ``finish`` builds the answer.

    ``finish`` gets one engine output per encoding, in order (see
    ``Pipeline.execute``). A job with no encodings (``/tokenize``, ``/decode``)
    never reaches the engine: ``finish`` gets an empty list.
    """

    __slots__ = ("_finish", "encodings")

    def __init__(self, encodings: list[Encoding], _finish: Callable[[list[Any]], Any]) -> None:
        self.encodings = encodings
        self._finish = _finish

    def finish(self, outputs: list[Any]) -> Any:
        return self._finish(outputs)
