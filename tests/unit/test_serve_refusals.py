"""Refusals of the worker that a user depends on, each with a test that fails without its check.

/health answers 503 while the worker starts and while it drains (a gateway
must not send work then), and a bug in a request's handling answers 500 and
leaves the worker serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from serve_fakes import FakePipeline, Reader, connect, exchange, get, post, running

from zerostart.serve.config import ServerConfig
from zerostart.serve.http import Request
from zerostart.serve.server import Server


def _health_request() -> Request:
    return Request("GET", "/health", {}, b"", True, "1.1", time.perf_counter())


def test_health_is_503_until_the_worker_listens() -> None:
    server = Server(FakePipeline(), ServerConfig(port=0))

    async def before_and_after() -> tuple[int, bytes, int]:
        early = await server.app.handle(_health_request())
        await server.start()
        late = await server.app.handle(_health_request())
        server.begin_shutdown()
        await server.serve_until_shutdown()
        return early.status, early.body, late.status

    status, body, later = asyncio.run(before_and_after())
    assert status == 503 and json.loads(body) == {
        "error": "worker is starting",
        "error_type": "Unhealthy",
    }
    assert later == 200


def test_health_is_503_while_draining() -> None:
    with running(FakePipeline(delay_s=0.3)) as srv:
        assert exchange(srv.port, get("/health"))[0] == 200
        assert srv.loop is not None and srv.server is not None
        server = srv.server
        srv.loop.call_soon_threadsafe(server.begin_shutdown)
        deadline = time.monotonic() + 5
        while not server.draining:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answer = asyncio.run_coroutine_threadsafe(
            server.app.handle(_health_request()), srv.loop
        ).result(5)
        assert answer.status == 503
        assert json.loads(answer.body)["error"] == "worker is shutting down"


def test_a_bug_answers_500_and_the_worker_keeps_serving() -> None:
    with running(FakePipeline(bug_on="boom")) as srv:
        status, _, body = exchange(srv.port, post("/predict", b'{"inputs": "boom"}'))
        data = json.loads(body)
        assert status == 500 and data["error_type"] == "Backend"
        assert "internal error" in data["error"] and "a bug in the pipeline" in data["error"]
        status, _, body = exchange(srv.port, post("/predict", b'{"inputs": "one two"}'))
        assert status == 200 and json.loads(body)["score"] == 4.0
        assert (
            'zerostart_requests_total{route="predict",status="500"} 1'
            in exchange(srv.port, get("/metrics"))[2].decode()
        )


class _LeakyPipeline(FakePipeline):
    """A bug whose exception names a server path (the file it failed on)."""

    def prepare(self, route: str, body: Any) -> Any:
        if body == {"inputs": "leak"}:
            raise RuntimeError("cannot read /srv/models/sst2/vocab.txt: bad line")
        return super().prepare(route, body)


def test_a_5xx_body_shows_no_server_path_and_the_log_keeps_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("ERROR"), running(_LeakyPipeline()) as srv:
        status, _, body = exchange(srv.port, post("/predict", b'{"inputs": "leak"}'))
    data = json.loads(body)
    assert status == 500 and "/srv/models" not in data["error"], data
    assert "…/vocab.txt" in data["error"]
    assert "/srv/models/sst2/vocab.txt" in caplog.text


def test_an_answer_holding_nan_is_424_never_invalid_json() -> None:
    class NanJob:
        def __init__(self) -> None:
            self.encodings: list[object] = []

        def finish(self, outputs: list[object]) -> object:
            return [{"label": "x", "score": float("nan")}]

    class NanPipeline(FakePipeline):
        def prepare(self, route: str, body: object) -> NanJob:  # type: ignore[override]
            return NanJob()

    with running(NanPipeline()) as srv:
        status, _, body = exchange(srv.port, post("/predict", b'{"inputs": "x"}'))
        assert status == 424 and json.loads(body)["error_type"] == "Backend"
        assert exchange(srv.port, get("/health"))[0] == 200


def test_a_handler_that_raises_still_answers_500_and_closes(caplog: Any) -> None:
    """The HTTP layer's own safety net (the gateway's handler has no pipeline to catch for it).

    Before it, an exception escaping ``Host.handle`` killed the connection's responder
    task: the client waited for an answer that never came (found killing a replica
    under load, when the gateway's upstream client raised an AssertionError).
    """
    with running(FakePipeline()) as srv:
        assert srv.server is not None
        real = srv.server.handle

        def handle(request: Request) -> Any:
            if request.path == "/explode":
                raise RuntimeError("a bug")
            return real(request)

        srv.server.handle = handle  # type: ignore[method-assign]
        with connect(srv.port) as s:
            s.sendall(post("/explode", b"{}") + get("/health"))
            reader = Reader(s)
            status, headers, body = reader.response()
            assert status == 500 and headers.get("connection") == "close"
            assert json.loads(body) == {
                "error": "internal error (logged by the server)",
                "error_type": "Internal",
            }
            assert s.recv(1) == b""  # closed: the pipelined /health is not answered
        assert exchange(srv.port, get("/health"))[0] == 200  # the server keeps serving
    assert "internal error answering POST /explode" in caplog.text
