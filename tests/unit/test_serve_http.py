"""The server's HTTP behaviour, in process, against a fake pipeline.

Each test talks raw bytes over a real loopback socket to a real Server (real
asyncio, real llhttp); only the model is fake (see serve_fakes.py).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
from serve_fakes import (
    FakePipeline,
    Reader,
    Running,
    connect,
    exchange,
    get,
    post,
    running,
)

from zerostart.serve.config import ServerConfig

GOOD = post("/predict", b'{"inputs": "one two three"}')


def assert_good(port: int) -> None:
    """The server still answers a good request correctly."""
    status, _, body = exchange(port, GOOD)
    assert status == 200
    assert json.loads(body) == {"label": "LEN", "score": 5.0}


def error_of(body: bytes) -> tuple[str, str]:
    data = json.loads(body)
    assert set(data) == {"error", "error_type"}
    return data["error"], data["error_type"]


def test_health_info_metrics() -> None:
    with running() as srv:
        status, _, body = exchange(srv.port, get("/health"))
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        status, _, body = exchange(srv.port, get("/info"))
        info = json.loads(body)
        assert status == 200
        assert info["model_id"] == "fake" and info["routes"] == ["predict"]
        assert info["max_client_batch_size"] == 8
        assert info["start"]["mode"] == "boot" and "listening" in info["start"]["phases"]
        assert_good(srv.port)
        status, headers, body = exchange(srv.port, get("/metrics"))
        text = body.decode()
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'zerostart_requests_total{route="predict",status="200"} 1' in text
        assert 'zerostart_startup_phase_seconds{phase="listening"}' in text
        assert "zerostart_queue_depth 0" in text
        assert 'zerostart_batch_size_bucket{le="1"} 1' in text


@pytest.mark.parametrize(
    ("raw", "status", "error_type", "needle"),
    [
        (post("/predict", b'{"inputs": '), 400, "Validation", "not valid JSON"),
        (post("/predict", b'{"inputs": "caf\xe9"}'), 400, "Validation", "not valid UTF-8"),
        (post("/predict", b"[" * 100_000), 400, "Validation", "nested too deeply"),
        (post("/predict", b'{"inputs": 5}'), 422, "Validation", "string or a list"),
        (post("/predict", b'{"inputs": []}'), 422, "Validation", "must not be empty"),
        (
            post("/predict", json.dumps({"inputs": ["a"] * 9}).encode()),
            413,
            "Validation",
            "over the limit",
        ),
        # TEI: a route the model cannot serve is a Backend error, 424
        (post("/embed", b'{"inputs": "x"}'), 424, "Backend", "it serves /predict"),
        (post("/nope", b"{}"), 404, "NotFound", "no route '/nope'"),
        (get("/predict"), 405, "MethodNotAllowed", "POST only"),
        (post("/health", b"{}"), 405, "MethodNotAllowed", "GET only"),
        (b"GARBAGE\r\n\r\n", 400, "Validation", "malformed HTTP"),
    ],
)
def test_bad_requests_get_json_errors_and_server_keeps_serving(
    raw: bytes, status: int, error_type: str, needle: str
) -> None:
    with running() as srv:
        got_status, headers, body = exchange(srv.port, raw)
        message, got_type = error_of(body)
        assert (got_status, got_type) == (status, error_type)
        assert needle in message
        if status == 405:
            assert headers["allow"] in ("GET", "POST")
        assert_good(srv.port)


def test_keep_alive_and_pipelining_answer_in_order() -> None:
    texts = ["a", "a b c d e f", "a b"]
    raw = b"".join(post("/predict", json.dumps({"inputs": t}).encode()) for t in texts)
    with running() as srv, connect(srv.port) as s:
        s.sendall(raw + get("/health"))
        reader = Reader(s)
        scores = [json.loads(reader.response()[2])["score"] for _ in texts]
        assert scores == [len(t.split()) + 2 for t in texts]
        assert reader.response()[0] == 200
        s.sendall(GOOD)  # the same connection is still usable
        assert reader.response()[0] == 200


def test_oversized_head_is_refused_with_431() -> None:
    with running(max_header_bytes=1024) as srv:
        status, headers, body = exchange(
            srv.port, get("/health", extra="x-big: " + "a" * 4000 + "\r\n")
        )
        assert status == 431 and headers["connection"] == "close"
        assert "exceeds 1024 bytes" in error_of(body)[0]
        with connect(srv.port) as s:  # the same, trickled in small pieces
            s.sendall(b"GET /health HTTP/1.1\r\nx-big: ")
            for _ in range(20):
                s.sendall(b"a" * 100)
                time.sleep(0.005)
            assert Reader(s).response()[0] == 431
        assert_good(srv.port)


def test_oversized_body_is_refused_before_it_is_sent() -> None:
    with running(max_body_bytes=1000) as srv, connect(srv.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n\r\n")
        status, headers, body = Reader(s).response()  # no body byte sent yet
        assert status == 413 and headers["connection"] == "close"
        assert "exceeds the limit of 1000 bytes" in error_of(body)[0]
        assert_good(srv.port)


def test_expect_100_continue() -> None:
    body = b'{"inputs": "a b"}'
    with running(max_body_bytes=1000) as srv, connect(srv.port) as s:
        s.sendall(post("/predict", body, extra="expect: 100-continue\r\n")[: -len(body)])
        reader = Reader(s)
        assert reader.response()[0] == 100
        s.sendall(body)
        status, _, got = reader.response()
        assert status == 200 and json.loads(got)["score"] == 4.0
        # too large: refused instead of "100 Continue", body never sent
        s2 = connect(srv.port)
        s2.sendall(
            b"POST /predict HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n"
        )
        assert Reader(s2).response()[0] == 413
        s2.close()


def test_chunked_request_body() -> None:
    head = b"POST /predict HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    with running(max_body_bytes=64) as srv:
        status, _, body = exchange(
            srv.port, head + b'7\r\n{"input\r\n9\r\ns": "a b"\r\n1\r\n}\r\n0\r\n\r\n'
        )
        assert status == 200 and json.loads(body)["score"] == 4.0
        big = b"".join(b"10\r\n" + b"x" * 16 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        assert exchange(srv.port, head + big)[0] == 413
        assert exchange(srv.port, head + b"zz\r\nxx\r\n0\r\n\r\n")[0] == 400
        assert_good(srv.port)


def test_slow_client_is_cut_off_and_others_are_served() -> None:
    with running(header_timeout_s=0.3) as srv, connect(srv.port) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nhost: t\r\n")  # ... and never finishes
        t0 = time.monotonic()
        assert_good(srv.port)
        status, _, body = Reader(slow).response()
        assert status == 408 and error_of(body)[1] == "Timeout"
        assert 0.25 < time.monotonic() - t0 < 3
        assert Reader(slow).closed()


def test_silent_connection_and_idle_keep_alive_are_closed() -> None:
    with running(header_timeout_s=0.3, keepalive_timeout_s=0.3) as srv:
        with connect(srv.port) as silent:
            assert Reader(silent).closed()  # nothing sent: closed, no 408
        with connect(srv.port) as s:
            s.sendall(GOOD)
            reader = Reader(s)
            assert reader.response()[0] == 200
            t0 = time.monotonic()
            assert reader.closed()
            assert 0.2 < time.monotonic() - t0 < 3


def test_half_closed_client_still_gets_its_answer() -> None:
    with running(FakePipeline(delay_s=0.2)) as srv, connect(srv.port) as s:
        s.sendall(GOOD)
        s.shutdown(socket.SHUT_WR)
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 200 and json.loads(body)["score"] == 5.0
        assert headers["connection"] == "close" and reader.closed()


def test_client_vanishing_mid_request_does_not_hurt_the_server() -> None:
    pipeline = FakePipeline(delay_s=0.3)
    with running(pipeline) as srv:
        for _ in range(3):
            s = connect(srv.port)
            s.sendall(GOOD)
            time.sleep(0.05)
            # RST, not FIN: a FIN looks like a half-close, which still gets its answer
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        assert_good(srv.port)
        time.sleep(0.2)
        assert srv.server is not None and srv.server.metrics.requests("predict", 499) >= 1


def test_queue_full_is_429_and_drains() -> None:
    gate = threading.Event()
    with running(FakePipeline(gate=gate), max_queue=1) as srv:
        socks = [connect(srv.port) for _ in range(4)]
        for s in socks:
            s.sendall(GOOD)
            time.sleep(0.05)  # in order: 1 runs (blocked), 1 queues, 2 are refused
        refused = [Reader(s).response() for s in socks[2:]]
        assert [r[0] for r in refused] == [429, 429]
        assert error_of(refused[0][2])[1] == "Overloaded" and refused[0][1]["retry-after"] == "1"
        gate.set()
        assert [Reader(s).response()[0] for s in socks[:2]] == [200, 200]
        for s in socks:
            s.close()


def test_engine_failure_is_424_for_that_batch_only() -> None:
    with running(FakePipeline(fail_on="boom")) as srv:
        status, _, body = exchange(srv.port, post("/predict", b'{"inputs": "boom"}'))
        assert status == 424 and error_of(body)[1] == "Backend"
        assert_good(srv.port)


def test_too_many_connections_are_refused() -> None:
    with running(max_connections=2) as srv:
        a, b = connect(srv.port), connect(srv.port)
        time.sleep(0.05)
        with connect(srv.port) as c:
            status, _, body = Reader(c).response()
            assert status == 503 and error_of(body)[1] == "Overloaded"
        a.close()
        b.close()
        time.sleep(0.05)
        assert_good(srv.port)


def test_many_concurrent_clients_each_get_their_own_answer_batched() -> None:
    pipeline = FakePipeline(delay_s=0.02)
    n = 64
    results: dict[int, float] = {}

    def client(i: int) -> None:
        text = " ".join(["w"] * (i % 7 + 1))
        status, _, body = exchange(
            srv.port, post("/predict", json.dumps({"inputs": [text]}).encode())
        )
        assert status == 200
        results[i] = json.loads(body)[0]["score"]

    with running(pipeline, max_batch_size=16) as srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results == {i: float(i % 7 + 1 + 2) for i in range(n)}
    assert sum(pipeline.batches) == n
    assert max(pipeline.batches) <= 16
    assert len(pipeline.batches) < n  # requests were merged


def test_graceful_shutdown_finishes_in_flight_work() -> None:
    srv = Running(FakePipeline(delay_s=0.5), ServerConfig(port=0))
    with connect(srv.port) as s, connect(srv.port) as idle:
        idle.sendall(get("/health"))
        idle_reader = Reader(idle)
        assert idle_reader.response()[0] == 200
        s.sendall(GOOD)
        time.sleep(0.1)  # the request is in the engine
        assert srv.loop is not None and srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.begin_shutdown)
        assert idle_reader.closed()  # idle keep-alive connection closed at once
        status, headers, body = Reader(s).response()
        assert status == 200 and json.loads(body)["score"] == 5.0
        assert headers["connection"] == "close"
        srv.thread.join(5)
        assert not srv.thread.is_alive() and srv.error is None
        with pytest.raises(OSError):
            connect(srv.port, timeout_s=1)
