"""Embedding routes: TEI's ``/embed``, ``/embed_all``, ``/similarity`` and OpenAI's ``/v1/embeddings``.

Shapes (TEI ``router/src/http/types.rs``; OpenAI's embeddings API):

* ``/embed``: ``inputs`` (a text, token ids, or a batch of either),
  ``normalize`` (default true), ``truncate``, ``dimensions`` -> ``[[float]]``,
  one vector per input, also for a single input.
* ``/embed_all``: the same inputs -> ``[[[float]]]``, every token's final hidden
  state (special tokens included, not normalised).
* ``/similarity``: ``{"inputs": {"source_sentence", "sentences"}, "parameters"}``
  -> ``[float]``, the cosine of each sentence's embedding with the source's.
* ``/v1/embeddings``: ``input``, ``model``, ``encoding_format`` (``float`` or
  ``base64``: little-endian float32 bytes), ``dimensions``, ``user`` ->
  ``{"object": "list", "data": [{"object": "embedding", "embedding", "index"}],
  "model", "usage": {"prompt_tokens", "total_tokens"}}``; vectors normalised.

``dimensions`` is accepted only as the model's own width: TEI would cut the
vector (Matryoshka), which is only meaningful for models trained for it, and no
bundle says it was, so any other value is refused (422) rather than answered
with a quietly worse vector.

Vectors are pooled and normalised by the pipeline's ``Heads`` (native kernels,
no numpy) and answered from their float32 buffers: ``tolist`` for JSON, the
raw bytes for base64.

Runtime module: standard library only.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from typing import TYPE_CHECKING, Any

from zerostart.api._classify import finite
from zerostart.api._encode import encode
from zerostart.api._job import Job
from zerostart.api._parse import (
    Truncation,
    body_object,
    check_batch,
    embedding_inputs,
    empty,
    flag,
    invalid,
    no_prompt,
    nonempty_text,
    options,
    required,
)
from zerostart.tasks.heads import non_finite

if TYPE_CHECKING:
    from zerostart.pipeline import Pipeline

ENCODING_FORMATS = ("float", "base64")


def pooled(
    pipe: Pipeline, states: memoryview, index: int, *, normalize: bool = False
) -> memoryview:
    """One sequence's token states [tokens, hidden] -> its float32 sentence vector [hidden].

    Raises EngineError (424) when the vector holds NaN or infinity.
    """
    return pipe.heads.sentence_vector(
        states, pipe.manifest.pooling.mode, normalize=normalize, index=index
    )


def _dimensions(opts: dict[str, Any], hidden: int) -> None:
    value = opts.get("dimensions")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid("`dimensions` must be an integer")
    if value <= 0:
        raise invalid("`dimensions` should be positive")
    if value != hidden:
        raise invalid(
            f"`dimensions` {value} is not supported: this model's embeddings have {hidden} "
            "dimensions and it was not trained to be cut shorter (Matryoshka); "
            f"leave `dimensions` out or send {hidden}"
        )


def _float32_rows(vectors: list[memoryview]) -> list[list[float]]:
    return [v.tolist() for v in vectors]  # type: ignore[misc]  # format "f": floats


def _little_endian(vector: memoryview) -> bytes:
    """float32 values as little-endian bytes (OpenAI's base64 format)."""
    if sys.byteorder == "little":
        return vector.tobytes()
    swapped = array("f", vector.tobytes())
    swapped.byteswap()
    return swapped.tobytes()


def prepare_embed(pipe: Pipeline, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    inputs, _ = embedding_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    truncate = Truncation.read(opts)
    no_prompt(opts)
    norm = flag(opts, "normalize", True)
    _dimensions(opts, pipe.manifest.config.hidden_size)
    if opts.get("encoding_format") not in (None, "float"):
        raise invalid("/embed answers floats only; use /v1/embeddings for base64")
    encodings = encode(pipe, inputs, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        return _float32_rows([pooled(pipe, s, i, normalize=norm) for i, s in enumerate(outputs)])

    return Job(encodings, finish)


def prepare_embed_all(pipe: Pipeline, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    inputs, _ = embedding_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    truncate = Truncation.read(opts)
    no_prompt(opts)
    encodings = encode(pipe, inputs, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        for i, states in enumerate(outputs):
            finite(states, "hidden state", i)
        return [states.tolist() for states in outputs]

    return Job(encodings, finish)


def prepare_similarity(pipe: Pipeline, body: Any) -> Job:
    example = '{"inputs": {"source_sentence": "a text", "sentences": ["another", "a third"]}}'
    body = body_object(body, example)
    inputs = required(body, "inputs")
    if not isinstance(inputs, dict):
        raise invalid(f"`inputs` must be an object such as {example}")
    source = nonempty_text(required(inputs, "source_sentence"), "`inputs.source_sentence`")
    sentences = required(inputs, "sentences")
    if not isinstance(sentences, list):
        raise invalid("`inputs.sentences` must be a list of strings")
    if not sentences:
        raise empty("`inputs.sentences` cannot be empty")
    # +1: the source sentence counts against the batch limit, as in TEI
    check_batch(len(sentences) + 1, "inputs.sentences", pipe.max_client_batch_size)
    texts = [source] + [
        nonempty_text(s, f"`inputs.sentences[{i}]`") for i, s in enumerate(sentences)
    ]
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("`parameters` must be a JSON object")
    truncate = Truncation.read(params)
    no_prompt(params)
    encodings = encode(pipe, texts, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        vectors = [pooled(pipe, s, i, normalize=True) for i, s in enumerate(outputs)]
        source = vectors[0].tolist()
        dots = [sum(a * b for a, b in zip(v.tolist(), source, strict=True)) for v in vectors[1:]]
        scores = array("f", dots)  # float32, as TEI answers
        if not all(map(math.isfinite, scores)):
            raise non_finite("similarity", 0)
        return scores.tolist()

    return Job(encodings, finish)


def prepare_openai(pipe: Pipeline, body: Any) -> Job:
    body = body_object(body, '{"input": "some text", "model": "..."}')
    inputs, _ = embedding_inputs(required(body, "input"), "input", pipe.max_client_batch_size)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ENCODING_FORMATS:
        raise invalid(f"`encoding_format` must be one of {', '.join(ENCODING_FORMATS)}")
    _dimensions(body, pipe.manifest.config.hidden_size)
    for name in ("model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(f"`{name}` must be a string")
    encodings = encode(pipe, inputs, Truncation(False))
    tokens = sum(len(e.ids) for e in encodings)
    model = pipe.model_id

    def finish(outputs: list[memoryview]) -> Any:
        vectors = [pooled(pipe, s, i, normalize=True) for i, s in enumerate(outputs)]
        data = [
            {
                "object": "embedding",
                "embedding": (
                    base64.b64encode(_little_endian(v)).decode("ascii")
                    if fmt == "base64"
                    else v.tolist()
                ),
                "index": i,
            }
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    return Job(encodings, finish)
