"""Sequence-classification scores and sentence embeddings from encoder outputs.

The numerics copy the references users compare us with, operation for
operation: transformers' text-classification pipeline (softmax with the row
maximum subtracted, ``1 / (1 + exp(-x))`` for sigmoid) and sentence-transformers
(masked mean pooling with the token count clamped at 1e-9, then
``torch.nn.functional.normalize`` with eps 1e-12).

Runtime module: standard library and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zerostart.errors import InputError

# problem_type as the manifest / config.json spells it, and the short forms.
_ACTIVATION_FOR_PROBLEM = {
    "single_label_classification": "softmax",
    "single_label": "softmax",
    "multi_label_classification": "sigmoid",
    "multi_label": "sigmoid",
    "regression": "none",
}
POOLING_MODES = ("cls", "mean")
MEAN_POOL_MIN_TOKENS = (
    1e-9  # sentence-transformers clamps the token count so empty rows give 0, not NaN
)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum so large logits cannot overflow."""
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    out: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic, written as transformers writes it so scores match to the last bit."""
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def classify(
    logits: np.ndarray,
    labels: Sequence[str],
    problem_type: str,
    *,
    raw_scores: bool = False,
    function_to_apply: str | None = None,
) -> list[dict[str, object]]:
    """One row of logits -> ``[{"label", "score"}, ...]``, best first (TEI ``/predict`` shape).

    single-label -> softmax, multi-label -> sigmoid, regression -> the raw value;
    ``raw_scores`` returns the logits untouched (TEI's ``raw_scores``). As in
    transformers, a single-label model with one output uses a sigmoid, because a
    softmax over one logit is always 1. ``function_to_apply`` ("softmax",
    "sigmoid", "none") overrides the choice, as the transformers pipeline's
    argument of that name does. Ties keep label order (stable sort).
    """
    activation = _ACTIVATION_FOR_PROBLEM.get(problem_type)
    if activation is None:
        valid = ", ".join(_ACTIVATION_FOR_PROBLEM)
        raise InputError(f"unknown problem_type {problem_type!r}; expected one of: {valid}")
    row = np.asarray(logits)
    if row.ndim != 1 or row.shape[0] != len(labels):
        raise InputError(
            f"expected one row of {len(labels)} logits (one per label), got shape {row.shape}"
        )
    if row.dtype != np.float64:
        row = row.astype(np.float32)  # transformers scores in float32 (fp16/bf16 are upcast)
    if function_to_apply is not None:
        if function_to_apply not in ("softmax", "sigmoid", "none"):
            raise InputError(f"unknown function_to_apply {function_to_apply!r}")
        activation = function_to_apply
    elif row.shape[0] == 1 and activation == "softmax":
        activation = "sigmoid"
    if raw_scores or activation == "none":
        scores = row
    elif activation == "sigmoid":
        scores = sigmoid(row)
    else:
        scores = softmax(row)
    answer: list[dict[str, object]] = [
        {"label": label, "score": float(score)} for label, score in zip(labels, scores, strict=True)
    ]
    answer.sort(key=lambda item: item["score"], reverse=True)  # type: ignore[arg-type,return-value]
    return answer


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
