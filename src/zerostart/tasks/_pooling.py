"""Sentence embeddings from encoder outputs, in numpy: the reference the serving heads match.

The numerics copy sentence-transformers operation for operation (masked mean
pooling with the token count clamped at 1e-9, then
``torch.nn.functional.normalize`` with eps 1e-12). The worker pools with
``zerostart.tasks.heads`` (native kernels, no numpy); these functions are the
public numpy API and the reference the tests compare the heads with.

Build-time / test module: standard library and numpy.
"""

from __future__ import annotations

import numpy as np

from zerostart.errors import InputError
from zerostart.tasks.heads import NORMALIZE_EPS, POOLING_MODES

MEAN_POOL_MIN_TOKENS = (
    1e-9  # sentence-transformers clamps the token count so empty rows give 0, not NaN
)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """``hidden [B, T, H]`` + ``mask [B, T]`` -> ``[B, H]`` sentence vectors.

    "cls" takes the first token (BERT's [CLS]); "mean" averages the tokens the
    mask keeps, so padding never changes an embedding (sentence-transformers'
    Pooling with pooling_mode_mean_tokens).
    """
    if mode not in POOLING_MODES:
        raise InputError(
            f"unknown pooling mode {mode!r}; expected one of: {', '.join(POOLING_MODES)}"
        )
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise InputError(
            f"pool expects hidden [B, T, H] and mask [B, T], got {hidden.shape} and {mask.shape}"
        )
    if mode == "cls":
        return hidden[:, 0, :]
    weights = mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), MEAN_POOL_MIN_TOKENS)
    pooled: np.ndarray = summed / counts
    return pooled


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis, like ``torch.nn.functional.normalize`` (eps 1e-12).

    The eps keeps an all-zero vector at zero instead of turning it into NaN.
    """
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(norms, NORMALIZE_EPS)
    return out
