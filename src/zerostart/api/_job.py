"""A request, tokenised: what the batcher runs and how its answer is built.

Runtime module: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zerostart.tokenize import Encoding


@dataclass
class Job:
    """``encodings`` go to the engine (possibly merged with other jobs'); ``finish`` builds the answer.

    ``finish`` gets one engine output per encoding, in order (see
    ``Pipeline.execute``). A job with no encodings (``/tokenize``, ``/decode``)
    never reaches the engine: ``finish`` gets an empty list.
    """

    encodings: list[Encoding]
    _finish: Callable[[list[Any]], Any]

    def finish(self, outputs: list[Any]) -> Any:
        return self._finish(outputs)
