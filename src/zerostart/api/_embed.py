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

``dimensions`` (``/embed`` and ``/v1/embeddings``) cuts each sentence vector to
its first ``dimensions`` values and then, when the route normalises, L2-normalises
what is left, as TEI does (``core/src/infer.rs`` ``embed_pooled``: truncate,
then scale by ``1 / sqrt(sum(v * v))`` summed in float64). A value over the
model's width is a 422, as in TEI. Cutting is meaningful only for models trained
for it (Matryoshka); the server cannot tell, as TEI cannot.

``truncate`` absent or null means the server's ``--auto-truncate``; on
``/v1/embeddings`` (where TEI always uses ``--auto-truncate``) a ``truncate``
and ``truncation_direction`` in the body are honoured too.

Vectors are pooled and normalised by the pipeline's ``Heads`` (native kernels,
no numpy) and answered from their float32 buffers: ``tolist`` for JSON, the
raw bytes for base64.

Runtime module: standard library only.
"""

from __future__ import annotations

import array
import base64
import math
import sys
from collections.abc import Sequence
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
    from zerostart.api._model import Model

ENCODING_FORMATS = ("float", "base64")


def pooled(pipe: Model, states: memoryview, index: int, *, normalize: bool = False) -> memoryview:
    """One sequence's token states [tokens, hidden] -> its float32 sentence vector [hidden].

    Raises EngineError (424) when the vector holds NaN or infinity.
    """
    return pipe.heads.sentence_vector(
        states, pipe.manifest.pooling.mode, normalize=normalize, index=index
    )


def _dimensions(opts: dict[str, Any], hidden: int) -> int | None:
    """``dimensions`` when it shortens the vectors; None when absent, null or the width."""
    value = opts.get("dimensions")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid("`dimensions` must be an integer")
    if value <= 0:
        raise invalid("`dimensions` should be positive")
    if value > hidden:
        raise invalid(
            f"`dimensions` {value} should be smaller than the maximum embedding dimension: "
            f"this model's embeddings have {hidden}"
        )
    return value if value < hidden else None


def shorten(vector: Sequence[float], dimensions: int, normalize: bool) -> list[float]:
    """The first ``dimensions`` values of ``vector``, L2-normalised if ``normalize``.

    TEI's order (truncate, then normalise; the sum of squares in float64) with
    torch's ``F.normalize`` eps (1e-12), so an all-zero cut stays zero instead of
    becoming NaN. The result is rounded to float32, the precision of every
    answer. Plain Python: a few hundred values per vector.
    """
    cut = [float(x) for x in vector[:dimensions]]
    if normalize:
        scale = 1.0 / max(math.sqrt(math.fsum(x * x for x in cut)), 1e-12)
        cut = [x * scale for x in cut]
    return array.array("f", cut).tolist()


def _float32_bytes(vector: list[float]) -> bytes:
    """Little-endian float32 bytes (OpenAI's base64 format) of a vector."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _float32_rows(vectors: list[memoryview]) -> list[list[float]]:
    return [v.tolist() for v in vectors]  # type: ignore[misc]  # format "f": floats


def _little_endian(vector: memoryview) -> bytes:
    """float32 values as little-endian bytes (OpenAI's base64 format)."""
    if sys.byteorder == "little":
        return vector.tobytes()
    swapped = array.array("f", vector.tobytes())
    swapped.byteswap()
    return swapped.tobytes()


def prepare_embed(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    inputs, _ = embedding_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    truncate = Truncation.read(opts, pipe.auto_truncate)
    no_prompt(opts)
    norm = flag(opts, "normalize", True)
    dims = _dimensions(opts, pipe.manifest.config.hidden_size)
    if opts.get("encoding_format") not in (None, "float"):
        raise invalid("/embed answers floats only; use /v1/embeddings for base64")
    encodings = encode(pipe, inputs, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        if dims is not None:  # TEI's order: cut, then normalise (``shorten``)
            return [shorten(pooled(pipe, s, i).tolist(), dims, norm) for i, s in enumerate(outputs)]
        return _float32_rows([pooled(pipe, s, i, normalize=norm) for i, s in enumerate(outputs)])

    return Job(encodings, finish)


def prepare_embed_all(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    inputs, _ = embedding_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    truncate = Truncation.read(opts, pipe.auto_truncate)
    no_prompt(opts)
    encodings = encode(pipe, inputs, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        for i, states in enumerate(outputs):
            finite(states, "hidden state", i)
        return [states.tolist() for states in outputs]

    return Job(encodings, finish)


def prepare_similarity(pipe: Model, body: Any) -> Job:
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
    truncate = Truncation.read(params, pipe.auto_truncate)
    no_prompt(params)
    encodings = encode(pipe, texts, truncate)

    def finish(outputs: list[memoryview]) -> Any:
        vectors = [pooled(pipe, s, i, normalize=True) for i, s in enumerate(outputs)]
        source = vectors[0].tolist()
        dots = [sum(a * b for a, b in zip(v.tolist(), source, strict=True)) for v in vectors[1:]]
        scores = array.array("f", dots)  # float32, as TEI answers
        if not all(map(math.isfinite, scores)):
            raise non_finite("similarity", 0)
        return scores.tolist()

    return Job(encodings, finish)


def prepare_openai(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"input": "some text", "model": "..."}')
    inputs, _ = embedding_inputs(required(body, "input"), "input", pipe.max_client_batch_size)
    fmt = body.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:  # null too: TEI's field is not an Option
        raise invalid(f"`encoding_format` must be one of {', '.join(ENCODING_FORMATS)}")
    dims = _dimensions(body, pipe.manifest.config.hidden_size)
    for name in ("model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(f"`{name}` must be a string")
    encodings = encode(pipe, inputs, Truncation.read(body, pipe.auto_truncate))
    tokens = sum(len(e.ids) for e in encodings)
    model = pipe.model_id

    def finish(outputs: list[memoryview]) -> Any:
        encoded: list[Any]
        if dims is not None:  # TEI's order: cut, then normalise (``shorten``)
            cut = [shorten(pooled(pipe, s, i).tolist(), dims, True) for i, s in enumerate(outputs)]
            encoded = [_float32_bytes(v) for v in cut] if fmt == "base64" else cut
        else:
            vectors = [pooled(pipe, s, i, normalize=True) for i, s in enumerate(outputs)]
            if fmt == "base64":
                encoded = [_little_endian(v) for v in vectors]
            else:
                encoded = [v.tolist() for v in vectors]
        data = [
            {
                "object": "embedding",
                "embedding": base64.b64encode(e).decode("ascii") if fmt == "base64" else e,
                "index": i,
            }
            for i, e in enumerate(encoded)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    return Job(encodings, finish)
