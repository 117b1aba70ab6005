"""``/predict`` and ``/rerank``: sequence classification, TEI's JSON (and the Inference API's).

TEI (``router/src/http/types.rs``): ``/predict`` takes ``inputs`` as a text, a
pair ``["a", "b"]`` or a batch ``[["a"], ["b", "c"]]`` and answers
``[{"label", "score"}]`` sorted by score (a list of those for a batch);
``/rerank`` takes ``query`` and ``texts`` and answers ``[{"index", "score"}]``
(plus ``text`` with ``return_text``) sorted by score, for a cross-encoder (one
label). huggingface_hub's ``InferenceClient.text_classification`` sends
``{"inputs": text, "parameters": {"top_k", "function_to_apply"}}`` and reads the
Inference API's answer, a list holding one list of labels; a body with
``parameters`` gets that shape and those options, with transformers' meaning.

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zerostart.api._encode import Item, encode
from zerostart.api._job import Job
from zerostart.api._parse import (
    Truncation,
    body_object,
    check_batch,
    empty,
    flag,
    invalid,
    options,
    required,
    text,
)
from zerostart.tasks import classify
from zerostart.tasks.heads import all_finite, non_finite

if TYPE_CHECKING:
    from zerostart.api._model import Model

FUNCTIONS = ("softmax", "sigmoid", "none")  # transformers' ClassificationFunction names


def finite(values: memoryview, what: str, index: int) -> None:
    """Refuse to answer with NaN or infinity: raise EngineError (HTTP 424, TEI's Backend).

    ``values``: float32 engine output of any shape.
    """
    if not all_finite(values):
        raise non_finite(what, index)


def predict_inputs(value: Any, max_batch: int) -> tuple[list[Item], bool]:
    """TEI's rules: "a" is one text, ["a", "b"] one pair, [["a"], ["a", "b"]] a batch."""
    if isinstance(value, str):
        return [_single(value, "`inputs`")], True
    if not isinstance(value, list):
        raise invalid(
            "`inputs` must be a string, a pair [string, string] or a batch "
            "[[string], [string, string], ...]"
        )
    if not value:
        raise empty("`inputs` cannot be empty")
    if isinstance(value[0], str):
        if len(value) > 2:
            raise invalid(
                "a list of strings is read as one text pair and can hold at most 2; "
                'for a batch send [["text 1"], ["text 2"], ...]'
            )
        return [_sequence(value, "inputs")], True
    check_batch(len(value), "inputs", max_batch)
    return [_sequence(item, f"inputs[{i}]") for i, item in enumerate(value)], False


def _single(value: str, where: str) -> str:
    if not value:
        raise empty(f"{where} cannot be empty")
    return value


def _sequence(item: Any, where: str) -> Item:
    if not isinstance(item, list) or len(item) not in (1, 2):
        raise invalid(f"`{where}` must be [text] or [text, text_pair], got {item!r:.60}")
    parts = [text(x, f"`{where}[{j}]`") for j, x in enumerate(item)]
    if not any(parts):
        raise empty(f"`{where}` cannot be empty")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _function(opts: dict[str, Any]) -> str | None:
    value = opts.get("function_to_apply")
    if value is None:
        return None
    if value not in FUNCTIONS:
        raise invalid(f"`function_to_apply` must be one of {', '.join(FUNCTIONS)}")
    return str(value)


def _top_k(opts: dict[str, Any], n_labels: int) -> int:
    value = opts.get("top_k")
    if value is None:
        return n_labels
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid("`top_k` must be a positive integer")
    return min(value, n_labels)


def prepare_predict(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    items, single = predict_inputs(required(body, "inputs"), pipe.max_client_batch_size)
    truncate = Truncation.read(opts, pipe.auto_truncate)
    raw = flag(opts, "raw_scores", False)
    labels = pipe.manifest.labels
    function = "none" if raw else _function(opts)
    top_k = _top_k(opts, len(labels))
    inference_api = "parameters" in body
    encodings = encode(pipe, items, truncate)
    problem_type = pipe.manifest.problem_type

    def finish(outputs: list[memoryview]) -> Any:
        rows = []
        for i, logits in enumerate(outputs):
            finite(logits, "score", i)
            row = classify(logits, labels, problem_type, function_to_apply=function)
            rows.append(row[:top_k])
        if inference_api:
            return rows  # the Inference API's shape: one list of labels per input
        return rows[0] if single else rows

    return Job(encodings, finish)


def prepare_rerank(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"query": "a question", "texts": ["a passage", "another"]}')
    query = text(required(body, "query"), "`query`")
    texts = required(body, "texts")
    if not isinstance(texts, list):
        raise invalid("`texts` must be a list of strings")
    if not texts:
        raise empty("`texts` cannot be empty")
    check_batch(len(texts), "texts", pipe.max_client_batch_size)
    passages = [text(t, f"`texts[{i}]`") for i, t in enumerate(texts)]
    for i, passage in enumerate(passages):
        if not query and not passage:
            raise empty(f"`query` and `texts[{i}]` cannot both be empty")
    truncate = Truncation.read(body, pipe.auto_truncate)
    raw = flag(body, "raw_scores", False)
    return_text = flag(body, "return_text", False)
    encodings = encode(pipe, [(query, p) for p in passages], truncate)
    m = pipe.manifest

    def finish(outputs: list[memoryview]) -> Any:
        ranks = []
        for i, logits in enumerate(outputs):
            finite(logits, "score", i)
            score = classify(logits, m.labels, m.problem_type, raw_scores=raw)[0]["score"]
            rank: dict[str, Any] = {"index": i, "score": score}
            if return_text:
                rank["text"] = passages[i]
            ranks.append(rank)
        ranks.sort(key=lambda r: r["score"], reverse=True)  # stable: ties keep input order
        return ranks

    return Job(encodings, finish)
