"""Task heads: turn encoder outputs into the answers users compare with transformers / TEI.

``classify`` (sequence classification scores) and ``aggregate_entities``
(token classification, exactly as transformers' token-classification
pipeline) in plain Python; ``Heads`` (``heads.py``) pools and normalises
sentence vectors and scores tokens on the bundle's native kernels. ``pool`` +
``normalize`` are the numpy reference of the pooling (sentence-transformers'),
loaded on first use so that the worker, which never calls them, never imports
numpy.

Runtime package: standard library only (``pool``/``normalize``: numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zerostart.tasks._heads import classify, sigmoid, softmax
from zerostart.tasks._ner import STRATEGIES, aggregate_entities
from zerostart.tasks.heads import POOLING_MODES, Heads

if TYPE_CHECKING:
    from zerostart.tasks._pooling import normalize, pool

__all__ = [
    "POOLING_MODES",
    "STRATEGIES",
    "Heads",
    "aggregate_entities",
    "classify",
    "normalize",
    "pool",
    "sigmoid",
    "softmax",
]


def __getattr__(name: str) -> Any:
    if name in ("pool", "normalize"):
        from zerostart.tasks import _pooling

        return getattr(_pooling, name)
    raise AttributeError(f"module 'zerostart.tasks' has no attribute {name!r}")
