"""Input checks shared by the engines: one place that says what a forward pass accepts.

Runtime module: numpy only.
"""

from __future__ import annotations

import numpy as np

from zerostart.bundle.manifest import Manifest
from zerostart.errors import EngineError


def check_inputs(
    manifest: Manifest,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None,
    *,
    max_len: int,
    what_limits: str = "the model's positions",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate [batch, seq] integer inputs; returns (ids, mask, types or None).

    ``types`` comes back as None when the model has no token type embeddings
    (DistilBERT) and the caller passed only zeros.
    """
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    c = manifest.config
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise EngineError(f"input_ids must be [batch, seq] with both > 0, got shape {ids.shape}")
    if mask.shape != ids.shape:
        raise EngineError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if ids.dtype.kind not in "iu" or mask.dtype.kind not in "iub":
        raise EngineError("input_ids and attention_mask must be integer arrays")
    if ids.shape[1] > max_len:
        raise EngineError(f"sequence length {ids.shape[1]} exceeds {what_limits} ({max_len})")
    if ids.min() < 0 or ids.max() >= c.vocab_size:
        raise EngineError(f"input_ids must be in [0, {c.vocab_size})")
    if token_type_ids is None:
        return ids, mask, None
    types = np.asarray(token_type_ids)
    if types.shape != ids.shape or types.dtype.kind not in "iu":
        raise EngineError(f"token_type_ids must be integer with shape {ids.shape}")
    if c.type_vocab_size == 0:
        if types.any():
            raise EngineError(f"{manifest.architecture} has no token type embeddings")
        return ids, mask, None
    if types.min() < 0 or types.max() >= c.type_vocab_size:
        raise EngineError(f"token_type_ids must be in [0, {c.type_vocab_size})")
    return ids, mask, types
