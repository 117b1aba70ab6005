"""TEI's own OpenAPI document as a fuzzing oracle: schemathesis against real workers.

``tests/data/tei/openapi-1.9.3.json`` (TEI v1.9.3's ``docs/openapi.json``,
Apache-2.0; see the README beside it) drives ``schemathesis`` against one real
worker per TEI model kind: an embedder (minilm-embed), a classifier
(minilm-sst2) and a cross-encoder (one label: TEI's reranker). Every operation
of the document is called on every worker (a route the model does not serve
must answer TEI's 424), with valid and invalid bodies, and every answer must
be a non-5xx whose status, content type and body the document allows.

The document is applied with the divergences listed in ``docs/server.md``
("Conformance with TEI's OpenAPI document"), each one a place where TEI's own
server answers differently from its document and we answer as the server does;
``DIVERGENCES`` below is that list, in code. Examples per operation are
bounded (``EXAMPLES``) and derandomised, so the run is the same every time and
takes about a minute for the three workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_robustness import Worker, serving

pytestmark = pytest.mark.integration

schemathesis = pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SPEC = Path(__file__).resolve().parents[1] / "data" / "tei" / "openapi-1.9.3.json"
EXAMPLES = 15  # fuzzed bodies per operation and worker, on top of the coverage phase's ~70
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _openai_error_type(spec: dict[str, Any]) -> None:
    # TEI's server sends {"message", "code", "type"} (router/src/http/types.rs
    # OpenAICompatErrorResponse serialises error_type as "type"); its document says
    # "error_type". Clients (openai) read "type"; we send what the server sends.
    schema = spec["components"]["schemas"]["OpenAICompatErrorResponse"]
    schema["properties"]["type"] = schema["properties"].pop("error_type")
    schema["required"] = ["message", "code", "type"]


DIVERGENCES: dict[str, Callable[[dict[str, Any]], None]] = {
    "openai-error-type": _openai_error_type,
}


def tei_document() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC.read_text())
    for patch in DIVERGENCES.values():
        patch(spec)
    return spec


schema = schemathesis.openapi.from_dict(tei_document())
schema.config.generation.update(max_examples=EXAMPLES, deterministic=True, database="none")


@pytest.fixture(scope="module")
def embedder(embed_bundle: Path) -> Iterator[Worker]:
    yield from serving(embed_bundle)


@pytest.fixture(scope="module")
def classifier(sst2_bundle: Path) -> Iterator[Worker]:
    yield from serving(sst2_bundle)


@pytest.fixture(scope="module")
def reranker(rerank_bundle: Path) -> Iterator[Worker]:
    yield from serving(rerank_bundle)


def call(case: Any, worker: Worker) -> None:
    case.call_and_validate(base_url=f"http://127.0.0.1:{worker.port}", checks=CHECKS, timeout=30)
    assert worker.proc.poll() is None, worker.stderr_text()


SETTINGS = hypothesis.settings(
    deadline=None, suppress_health_check=list(hypothesis.HealthCheck), max_examples=EXAMPLES
)


@schema.parametrize()
@SETTINGS
def test_embedder_answers_as_the_document_says(case: Any, embedder: Worker) -> None:
    call(case, embedder)


@schema.parametrize()
@SETTINGS
def test_classifier_answers_as_the_document_says(case: Any, classifier: Worker) -> None:
    call(case, classifier)


@schema.parametrize()
@SETTINGS
def test_reranker_answers_as_the_document_says(case: Any, reranker: Worker) -> None:
    call(case, reranker)


def test_the_document_is_tei_193_and_every_divergence_is_documented() -> None:
    spec = json.loads(SPEC.read_text())
    assert spec["info"]["version"] == "1.9.3"
    assert spec["info"]["license"]["name"] == "Apache 2.0"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    for name in DIVERGENCES:
        assert f"`{name}`" in docs, f"divergence {name} is not listed in docs/server.md"


# Fuzzed bodies are mostly refused (a random `dimensions` or token id is usually out of
# range), so each kind's successful answers are also checked on hand-written valid bodies,
# the document's own examples among them.
VALID: dict[str, list[tuple[str, str, Any]]] = {
    "embedder": [
        ("POST", "/embed", {"inputs": "What is Deep Learning?"}),
        ("POST", "/embed", {"inputs": ["a", [101, 7592, 102]], "normalize": False}),
        ("POST", "/embed", {"inputs": ["a", "b"], "dimensions": 64, "truncate": True}),
        ("POST", "/embed", {"inputs": "x " * 600, "truncation_direction": "Left"}),
        ("POST", "/embed_all", {"inputs": ["a", "b c"]}),
        ("POST", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}),
        ("POST", "/v1/embeddings", {"input": "What is Deep Learning?"}),
        ("POST", "/v1/embeddings", {"input": ["a", "b"], "encoding_format": "base64"}),
        ("POST", "/v1/embeddings", {"input": [[101, 102]], "dimensions": 32, "model": "m"}),
        ("POST", "/tokenize", {"inputs": ["Köln", "b"], "add_special_tokens": False}),
        ("POST", "/decode", {"ids": [[101, 7592, 102], [101]]}),
        ("GET", "/info", None),
        ("GET", "/health", None),
        ("GET", "/metrics", None),
    ],
    "classifier": [
        ("POST", "/predict", {"inputs": "What is Deep Learning?"}),
        ("POST", "/predict", {"inputs": ["a", "b"], "raw_scores": True}),
        ("POST", "/predict", {"inputs": [["a"], ["b", "c"]], "truncate": True}),
        ("GET", "/info", None),
    ],
    "reranker": [
        ("POST", "/rerank", {"query": "q", "texts": ["a", "b"], "return_text": True}),
        ("POST", "/rerank", {"query": "q", "texts": ["a"], "raw_scores": True}),
        ("POST", "/predict", {"inputs": "a"}),
        ("GET", "/info", None),
    ],
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_successful_answers_match_the_document(kind: str, request: pytest.FixtureRequest) -> None:
    worker: Worker = request.getfixturevalue(kind)
    for method, path, body in VALID[kind]:
        operation = schema[path][method]
        case = operation.Case(body=body) if body is not None else operation.Case()
        response = case.call(base_url=f"http://127.0.0.1:{worker.port}", timeout=30)
        assert response.status_code == 200, (path, body, response.text)
        case.validate_response(response, checks=CHECKS)
