"""No request passes a worker or a gateway with keys unless it carries the right key in its head.

Every route of the worker (``serve/app.py``'s route lists, so a new route is
covered or this file fails) and of the gateway (its own routes, and every
worker route behind it by path and by Host) is called with no key, a wrong
key, the right key, the right key only in a chunked body's trailer, two
Authorization fields, odd spellings of the path, and odd hosts. Real worker
processes on a real converted bundle, a real ``zerostart up``; raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import Gateway
from raw_http import exchange, request_bytes, status_of
from test_server_robustness import Worker

from zerostart.api import ROUTES
from zerostart.serve.app import GET_ROUTES, UNSERVED_TEI_ROUTES

INFERENCE_ROUTES = (*ROUTES, *UNSERVED_TEI_ROUTES)  # what App.inference_routes holds

pytestmark = pytest.mark.integration

KEY = "w0rker-key-under-test"
WRONG = "Authorization: Bearer not-the-key"
OPEN_ROUTES = ("health", "ping")  # probes: the worker answers them without a key (as TEI)

# What the embedding model answers with the right key: (body, status).
HI = {"inputs": "hi"}
POST_CASES: dict[str, tuple[Any, int]] = {
    "embed": (HI, 200),
    "embed_all": (HI, 200),
    "similarity": ({"inputs": {"source_sentence": "a", "sentences": ["b"]}}, 200),
    "v1/embeddings": ({"input": "hi"}, 200),
    "embeddings": ({"input": "hi"}, 200),
    "tokenize": (HI, 200),
    "decode": ({"ids": [101, 102]}, 200),
    "": (HI, 200),
    "invocations": (HI, 200),
    "predict": (HI, 424),  # not this model's task: TEI's 424
    "rerank": ({"query": "q", "texts": ["a"]}, 424),
    "tokens": (HI, 424),
    "embed_sparse": (HI, 424),  # no bundle has a sparse head: TEI's 424
}


def cases() -> list[tuple[str, str, Any, int]]:
    """(method, route, body, status with the right key) for every route the worker has."""
    assert set(POST_CASES) == set(INFERENCE_ROUTES), "a new inference route: add it here"
    out = [("GET", r, None, 200) for r in GET_ROUTES]
    out += [("POST", r, *POST_CASES[r]) for r in INFERENCE_ROUTES]
    return out


CASES = cases()
IDS = [f"{m} /{r}" for m, r, _, _ in CASES]


def odd_paths(route: str) -> list[str]:
    """Other spellings of ``/route`` that a server might route like it."""
    paths = [f"/{route}/", f"//{route}", f"/./{route}", f"/x/../{route}", f"/{route}?q=1"]
    if route:
        paths += [f"/%{ord(route[0]):02x}{route[1:]}", f"/{route}/."]
    return paths


def bearer(key: str) -> str:
    return f"Authorization: Bearer {key}"


# -- the worker ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_worker(embed_bundle: Path) -> Iterator[Worker]:
    with Worker(embed_bundle, "--api-key", KEY) as w:
        yield w
        w.terminate()
        assert w.wait() == 0


@pytest.mark.parametrize(("method", "route", "body", "ok"), CASES, ids=IDS)
def test_worker_route_needs_the_key_in_its_head(
    keyed_worker: Worker, method: str, route: str, body: Any, ok: int
) -> None:
    port = keyed_worker.port
    path = f"/{route}"
    open_route = route in OPEN_ROUTES
    closed = 200 if open_route else 401

    def status(*fields: str, target: str = path, trailers: tuple[str, ...] | None = None) -> int:
        return status_of(
            port, request_bytes(method, target, body, fields=fields, trailers=trailers)
        )

    assert status() == closed
    assert status(WRONG) == closed
    assert status("Authorization: Basic " + KEY) == closed
    assert status(bearer(KEY)) == ok
    assert status("authorization: bearer " + KEY) == ok  # the scheme is case-insensitive
    # the key after the body (a trailer) is not the request's key
    assert status(trailers=(bearer(KEY),)) == closed
    assert status(WRONG, trailers=(bearer(KEY),)) == closed
    assert status(bearer(KEY), trailers=(WRONG,)) == ok  # and cannot spoil a good one
    # two keys are ambiguous, whichever comes last
    assert status(WRONG, bearer(KEY)) == 400
    assert status(bearer(KEY), bearer(KEY)) == 400
    for odd in odd_paths(route):
        assert status(target=odd) == closed, odd
        assert status(bearer(KEY), target=odd) == ok, odd


def test_worker_host_rules(keyed_worker: Worker) -> None:
    port = keyed_worker.port
    ok = (bearer(KEY),)
    assert status_of(port, request_bytes("GET", "/info", host="A.Example:1", fields=ok)) == 200
    assert status_of(port, request_bytes("GET", "/info", host="[::1]", fields=ok)) == 200
    assert status_of(port, request_bytes("GET", "/info", host=None, fields=ok)) == 400
    assert status_of(port, request_bytes("GET", "/info", host=None, version="1.0")) == 401
    two = (bearer(KEY), "Host: other")
    status, _, body = exchange(port, request_bytes("GET", "/info", fields=two))
    assert status == 400 and b"more than one host" in body
    assert status_of(port, request_bytes("GET", "/info", host="a b", fields=ok)) == 400


# -- the gateway ------------------------------------------------------------------------------
A_KEY, B_KEY, GW_KEY = "key-of-a", "key-of-b", "key-of-the-gateway"


@pytest.fixture(scope="module")
def keyed_gateway(
    tmp_path_factory: pytest.TempPathFactory, embed_bundle: Path, sst2_bundle: Path
) -> Iterator[Gateway]:
    toml = (
        '[gateway]\napi_key_env = "TEST_GW_KEY"\n[autoscaler]\ntick = 0.1\n[pool]\ncpu = 0\n'
        f'[models.a]\nbundle = "{embed_bundle}"\napi_key = "{A_KEY}"\nmin_replicas = 1\n'
        f'[models.b]\nbundle = "{sst2_bundle}"\napi_key = "{B_KEY}"\nmin_replicas = 1\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("gw"), toml, env={"TEST_GW_KEY": GW_KEY}, api_key=GW_KEY)
    try:
        yield gw
    finally:
        assert gw.stop() == 0


def test_gateway_own_routes(keyed_gateway: Gateway) -> None:
    port = keyed_gateway.port
    assert status_of(port, request_bytes("GET", "/health")) == 200
    for path in ("/status", "/metrics", "/status/", "//status", "/%73tatus", "/x/../metrics"):
        assert status_of(port, request_bytes("GET", path)) in (401, 404), path
        assert status_of(port, request_bytes("GET", path, fields=(WRONG,))) in (401, 404), path
        chunk = request_bytes("GET", path, b"{}", trailers=(bearer(GW_KEY),))
        assert status_of(port, chunk) in (401, 404), path
        assert status_of(port, request_bytes("GET", path, fields=(bearer(A_KEY),))) in (401, 404)
    for path in ("/status", "/metrics", "/%73tatus", "/x/../metrics"):
        assert status_of(port, request_bytes("GET", path, fields=(bearer(GW_KEY),))) == 200, path
    two = (bearer(GW_KEY), bearer(GW_KEY))
    assert status_of(port, request_bytes("GET", "/status", fields=two)) == 400


@pytest.mark.parametrize(("method", "route", "body", "ok"), CASES, ids=IDS)
def test_gateway_model_route_needs_the_models_key_in_its_head(
    keyed_gateway: Gateway, method: str, route: str, body: Any, ok: int
) -> None:
    port = keyed_gateway.port

    def status(
        target: str, *fields: str, host: str = "t", trailers: tuple[str, ...] | None = None
    ) -> int:
        raw = request_bytes(method, target, body, host=host, fields=fields, trailers=trailers)
        return status_of(port, raw)

    # by path, and by Host (any case)
    for target, host in ((f"/models/a/{route}", "t"), (f"/{route}", "a.x"), (f"/{route}", "A.X")):
        assert status(target, host=host) == 401, (target, host)
        assert status(target, WRONG, host=host) == 401
        assert status(target, bearer(GW_KEY), host=host) == 401  # a's own key replaces it
        assert status(target, bearer(B_KEY), host=host) == 401  # another model's key
        assert status(target, bearer(A_KEY), host=host) == ok, (target, host)
        assert status(target, host=host, trailers=(bearer(A_KEY),)) == 401
        assert status(target, WRONG, host=host, trailers=(bearer(A_KEY),)) == 401
        assert status(target, WRONG, bearer(A_KEY), host=host) == 400
        assert status(target, bearer(A_KEY), bearer(A_KEY), host=host) == 400
    for odd in odd_paths(route):
        target = "/models/a" + odd
        assert status(target) == 401, target
        assert status(target, bearer(B_KEY)) == 401, target
        assert status(target, bearer(A_KEY)) == ok, target


@pytest.mark.parametrize(
    ("target", "host", "key", "want"),
    [
        # a path through a into b is b's, and needs b's key
        ("/models/a/../b/predict", "t", A_KEY, 401),
        ("/models/a/../b/predict", "t", B_KEY, 200),
        ("/models/a/%2e%2e/b/predict", "t", A_KEY, 401),
        ("/models/b/./../a/embed", "t", B_KEY, 401),
        ("/%6dodels/b/predict", "t", B_KEY, 200),
        ("/models/b/predict", "a.x", A_KEY, 401),  # the path's model wins over Host
        # Host is case-insensitive, with or without a port; a host that is no model is 404
        ("/predict", "B.x:8080", B_KEY, 200),
        ("/predict", "b.X.", B_KEY, 200),
        ("/predict", "c.x", B_KEY, 404),
        ("/predict", "b", B_KEY, 404),
        # an absolute target's authority is the host (RFC 9112 section 3.2.2)
        ("http://b.x/predict", "a.x", B_KEY, 200),
        ("http://b.x/predict", "a.x", A_KEY, 401),
    ],
)
def test_gateway_odd_paths_and_hosts(
    keyed_gateway: Gateway, target: str, host: str, key: str, want: int
) -> None:
    raw = request_bytes("POST", target, HI, host=host, fields=(bearer(key),))
    assert status_of(keyed_gateway.port, raw) == want


def test_gateway_trailer_cannot_reroute_or_authorize(keyed_gateway: Gateway) -> None:
    """The review's finding: Host a.x in the head, Host b.x and b's key in the trailer."""
    port = keyed_gateway.port
    raw = request_bytes("POST", "/predict", HI, host="a.x", trailers=("Host: b.x", bearer(B_KEY)))
    status, _, body = exchange(port, raw)
    assert status == 401 and b"model 'a'" in body
    # with a's key in the head the trailer's host changes nothing: a answers (424: a embeds)
    raw = request_bytes(
        "POST", "/predict", HI, host="a.x", fields=(bearer(A_KEY),), trailers=("Host: b.x",)
    )
    assert status_of(port, raw) == 424
    for fields in (("Host: b.x",), ("Host: a.x",)):  # a second Host field: 400
        raw = request_bytes("POST", "/predict", HI, host="a.x", fields=(bearer(A_KEY), *fields))
        assert status_of(port, raw) == 400
    assert status_of(port, request_bytes("POST", "/models/a/embed", HI, host=None)) == 400
