"""The drain (serve/http.py ``ListeningHost``) answers connections that arrive as it begins.

A real server on loopback with a fake pipeline; the event loop is stalled on
purpose so that connections are, deterministically, in the kernel's accept
queue or accepted-but-silent when shutdown begins (tests/integration/test_drain.py
does the same with a burst and a real SIGTERM).
"""

from __future__ import annotations

import socket
import time

from serve_fakes import FakePipeline, Reader, Running, connect, get

from zerostart.serve.config import ServerConfig


def stall_then_shut_down(srv: Running, seconds: float) -> None:
    """Block the server's loop for ``seconds`` (nothing is accepted), then begin shutdown
    in the same callback: what the loop had not accepted is still in the backlog."""
    assert srv.loop is not None and srv.server is not None
    server = srv.server

    def stall() -> None:
        time.sleep(seconds)
        server.begin_shutdown()

    srv.loop.call_soon_threadsafe(stall)


def test_connections_in_the_backlog_at_shutdown_get_503_not_a_reset() -> None:
    # Before: closing the listening socket reset every connection in its accept queue;
    # their clients had connected and sent a request, and got ECONNRESET.
    srv = Running(FakePipeline(), ServerConfig(port=0))
    stall_then_shut_down(srv, 0.5)
    time.sleep(0.1)  # the loop is stalled now
    clients = [connect(srv.port) for _ in range(20)]  # the kernel completes each handshake
    for c in clients:
        c.sendall(get("/info"))  # a route that answers 200 while not shutting down
    try:
        for c in clients:
            status, headers, body = Reader(c).response()
            assert status == 503, body
            assert headers["connection"] == "close"
            assert b"shutting down; retry" in body
    finally:
        for c in clients:
            c.close()
    srv.thread.join(10)
    assert not srv.thread.is_alive() and srv.error is None


def test_a_silent_connection_at_shutdown_gets_an_answer_to_its_late_request() -> None:
    # Before: begin_shutdown closed every connection without a request in progress,
    # including one accepted a moment earlier whose request was on its way.
    srv = Running(FakePipeline(), ServerConfig(port=0))
    with connect(srv.port) as fresh, connect(srv.port) as kept:
        kept.sendall(get("/health"))
        kept_reader = Reader(kept)
        assert kept_reader.response()[0] == 200
        time.sleep(0.1)  # both accepted
        assert srv.loop is not None and srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.begin_shutdown)
        assert kept_reader.closed()  # an idle keep-alive connection is closed at once
        time.sleep(0.3)  # the request comes late, but within the drain's wait for it
        fresh.sendall(get("/info"))  # new work after shutdown began: refused, not served
        status, headers, body = Reader(fresh).response()
        assert status == 503 and headers["connection"] == "close"
        assert b"shutting down; retry" in body
        srv.thread.join(10)
        assert not srv.thread.is_alive() and srv.error is None


def test_a_connection_that_never_speaks_does_not_hold_the_shutdown() -> None:
    srv = Running(FakePipeline(), ServerConfig(port=0))
    with socket.create_connection(("127.0.0.1", srv.port)):
        time.sleep(0.1)
        t0 = time.monotonic()
        assert srv.loop is not None and srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.begin_shutdown)
        srv.thread.join(10)
        took = time.monotonic() - t0
    assert not srv.thread.is_alive() and srv.error is None
    assert 1.5 < took < 5.0  # DRAIN_FIRST_REQUEST_S (2 s), then closed
