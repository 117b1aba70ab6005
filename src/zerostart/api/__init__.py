"""The JSON of every inference route: TEI's, OpenAI's embeddings API, and our ``/tokens``.

One function per route turns a parsed request body into a :class:`Job`
(encodings for the engine and a ``finish`` that builds the answer); the server
never sees tensors. Which routes a model serves follows TEI's model kinds: a
sequence classifier serves ``/predict`` (and ``/rerank`` when it has one label,
i.e. it is a cross-encoder), an embedding model ``/embed``, ``/embed_all``,
``/similarity`` and ``/v1/embeddings``, a token classifier ``/tokens``; every
model serves ``/tokenize`` and ``/decode``. ``POST /`` (and SageMaker's
``/invocations``) answers with the model's own route, as TEI's does, choosing
``/rerank`` for a body with a ``query`` and ``/similarity`` for one whose
``inputs`` holds a ``source_sentence``.

Runtime package: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zerostart.api._classify import prepare_predict, prepare_rerank
from zerostart.api._embed import (
    prepare_embed,
    prepare_embed_all,
    prepare_openai,
    prepare_similarity,
)
from zerostart.api._job import Job
from zerostart.api._parse import backend
from zerostart.api._text import prepare_decode, prepare_tokenize, prepare_tokens

if TYPE_CHECKING:
    from zerostart.api._model import Model
    from zerostart.bundle.manifest import Manifest

Prepare = Callable[["Model", Any], Job]

PREPARE: dict[str, Prepare] = {
    "predict": prepare_predict,
    "rerank": prepare_rerank,
    "embed": prepare_embed,
    "embed_all": prepare_embed_all,
    "similarity": prepare_similarity,
    "v1/embeddings": prepare_openai,
    "embeddings": prepare_openai,  # TEI serves the OpenAI route without /v1 too
    "tokens": prepare_tokens,
    "tokenize": prepare_tokenize,
    "decode": prepare_decode,
}
DISPATCH_ROUTES = ("", "invocations")  # POST / and SageMaker's: the model's own route
ROUTES = (*PREPARE, *DISPATCH_ROUTES)  # every inference route (serve/app.py lists them too)


def routes_for(manifest: Manifest) -> frozenset[str]:
    """The inference routes a model serves (its task's, plus /tokenize and /decode)."""
    if manifest.task == "sequence-classification":
        own = {"predict", "rerank"} if len(manifest.labels) == 1 else {"predict"}
    elif manifest.task == "embeddings":
        own = {"embed", "embed_all", "similarity", "v1/embeddings", "embeddings"}
    else:
        own = {"tokens"}
    return frozenset({*own, "tokenize", "decode"})


def default_route(manifest: Manifest, body: Any) -> str:
    """The route ``POST /`` answers with, for this model and this body."""
    if manifest.task == "sequence-classification":
        return "rerank" if isinstance(body, dict) and "query" in body else "predict"
    if manifest.task == "embeddings":
        inputs = body.get("inputs") if isinstance(body, dict) else None
        return "similarity" if isinstance(inputs, dict) else "embed"
    return "tokens"


def prepare(pipe: Model, route: str, body: Any) -> Job:
    """Validate ``body`` for ``route`` and tokenise it; raises InputError with TEI's status."""
    if route in DISPATCH_ROUTES:
        route = default_route(pipe.manifest, body)
    if route not in pipe.routes:
        served = ", ".join(f"/{r}" for r in sorted(pipe.routes))
        kind = pipe.manifest.task
        if kind == "sequence-classification":
            kind += f" with {len(pipe.manifest.labels)} labels"  # /rerank needs exactly one
        raise backend(f"this model ({kind}) does not serve /{route}; it serves {served}")
    return PREPARE[route](pipe, body)


__all__ = [
    "ROUTES",
    "Job",
    "default_route",
    "prepare",
    "routes_for",
]
