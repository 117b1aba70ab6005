"""Task heads: turn encoder outputs into the answers users compare with transformers / TEI.

``classify`` (sequence classification scores), ``pool`` + ``normalize``
(embeddings) and ``aggregate_entities`` (token classification, exactly as
transformers' token-classification pipeline). Everything works on one request's
numpy arrays; batching and tokenisation live elsewhere.

Runtime package: standard library and numpy only.
"""

from zerostart.tasks._heads import POOLING_MODES, classify, normalize, pool, sigmoid, softmax
from zerostart.tasks._ner import STRATEGIES, aggregate_entities

__all__ = [
    "POOLING_MODES",
    "STRATEGIES",
    "aggregate_entities",
    "classify",
    "normalize",
    "pool",
    "sigmoid",
    "softmax",
]
