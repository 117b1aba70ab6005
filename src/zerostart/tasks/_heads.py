"""Sequence-classification scores from one row of logits, in plain Python.

The numerics follow transformers' text-classification pipeline, operation for
operation: softmax with the row maximum subtracted, ``1 / (1 + exp(-x))`` for
sigmoid. A row holds a few labels, so plain Python costs microseconds and
keeps numpy off the worker's path; it computes in double precision from the
engine's float32 logits (transformers stays in float32: the scores agree to
~1e-7).

Runtime module: standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from zerostart.errors import InputError

# problem_type as the manifest / config.json spells it, and the short forms.
_ACTIVATION_FOR_PROBLEM = {
    "single_label_classification": "softmax",
    "single_label": "softmax",
    "multi_label_classification": "sigmoid",
    "multi_label": "sigmoid",
    "regression": "none",
}
EXP_MAX_ARG = 709.0  # math.exp overflows (OverflowError) just above 709.78


def softmax(row: Sequence[float]) -> list[float]:
    """Softmax of one row, shifted by its maximum so large logits cannot overflow."""
    top = max(row)
    shifted = [math.exp(float(x) - top) for x in row]
    total = sum(shifted)
    return [e / total for e in shifted]


def sigmoid(row: Sequence[float]) -> list[float]:
    """Elementwise logistic ``1 / (1 + exp(-x))``, as transformers writes it."""
    return [1.0 / (1.0 + math.exp(-x)) if -x < EXP_MAX_ARG else 0.0 for x in map(float, row)]


def classify(
    logits: Sequence[float],
    labels: Sequence[str],
    problem_type: str,
    *,
    raw_scores: bool = False,
    function_to_apply: str | None = None,
) -> list[dict[str, object]]:
    """One row of logits -> ``[{"label", "score"}, ...]``, best first (TEI ``/predict`` shape).

    ``logits``: any sequence of numbers (a float32 memoryview, a list, a 1-D numpy
    array). single-label -> softmax, multi-label -> sigmoid, regression -> the raw
    value; ``raw_scores`` returns the logits untouched (TEI's ``raw_scores``). As in
    transformers, a single-label model with one output uses a sigmoid, because a
    softmax over one logit is always 1. ``function_to_apply`` ("softmax",
    "sigmoid", "none") overrides the choice, as the transformers pipeline's
    argument of that name does. Ties keep label order (stable sort). Raises
    InputError for an unknown problem type or function, or a row that is not one
    logit per label.
    """
    activation = _ACTIVATION_FOR_PROBLEM.get(problem_type)
    if activation is None:
        valid = ", ".join(_ACTIVATION_FOR_PROBLEM)
        raise InputError(f"unknown problem_type {problem_type!r}; expected one of: {valid}")
    shape = tuple(getattr(logits, "shape", (len(logits),)))
    if len(shape) != 1 or shape[0] != len(labels):
        raise InputError(
            f"expected one row of {len(labels)} logits (one per label), got shape {shape}"
        )
    row = [float(x) for x in logits]
    if function_to_apply is not None:
        if function_to_apply not in ("softmax", "sigmoid", "none"):
            raise InputError(f"unknown function_to_apply {function_to_apply!r}")
        activation = function_to_apply
    elif len(row) == 1 and activation == "softmax":
        activation = "sigmoid"
    if raw_scores or activation == "none":
        scores = row
    elif activation == "sigmoid":
        scores = sigmoid(row)
    else:
        scores = softmax(row)
    answer: list[dict[str, object]] = [
        {"label": label, "score": score} for label, score in zip(labels, scores, strict=True)
    ]
    answer.sort(key=lambda item: item["score"], reverse=True)  # type: ignore[arg-type,return-value]
    return answer
