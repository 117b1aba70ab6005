"""Slow and endless clients against a real worker and a real gateway: bounded bytes, time, slots.

* An endless trailer field is cut off with 431 and the server's memory does not
  grow with it (it grew by what was sent before: 48 -> 247 MB for a gateway).
* A body that trickles steadily, never pausing long, still gets 408 at its
  whole-body deadline (it never timed out before).
* One client address cannot hold more than ``max_connections_per_client``
  connections: others, from another address, are still served (before, one
  client's slow connections filled ``max_connections`` and everyone got 503).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_helpers import Gateway
from raw_http import connect, exchange, read_response, request_bytes, rss_bytes
from test_server_robustness import Worker

pytestmark = pytest.mark.integration

# Loopback addresses other than 127.0.0.1: clients of their own to the server (connections
# left from other tests, all from 127.0.0.1, do not count against them).
SLOW_CLIENT, OTHER_CLIENT = "127.0.0.3", "127.0.0.2"
PIECE = b"v" * 65536
PUSH_BYTES = 16 << 20  # what an endless trailer sends per connection unless cut off
GW = "[autoscaler]\ntick = 0.1\n[pool]\ncpu = 0\n"


@pytest.fixture(scope="module")
def worker(embed_bundle: Path) -> Iterator[Worker]:
    args = ("--body-deadline", "2", "--max-connections-per-client", "6", "--header-timeout", "20")
    with Worker(embed_bundle, "--api-key", "k", *args) as w:
        yield w
        w.terminate()
        assert w.wait() == 0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, embed_bundle: Path) -> Iterator[Gateway]:
    toml = (
        "[gateway]\nbody_deadline = 2\nmax_connections = 40\nmax_connections_per_client = 6\n"
        f'header_timeout = 20\napi_key = "k"\n{GW}[models.a]\nbundle = "{embed_bundle}"\n'
    )
    gw = Gateway(tmp_path_factory.mktemp("gw"), toml, api_key="k")
    try:
        yield gw
    finally:
        gw.stop()


def servers(worker: Worker, gateway: Gateway) -> dict[str, tuple[int, int]]:
    return {"worker": (worker.port, worker.proc.pid), "gateway": (gateway.port, gateway.proc.pid)}


def push_endless_trailer(port: int) -> tuple[int | None, int]:
    """Send one chunked request whose trailer never ends; (status seen or None, bytes sent)."""
    head = request_bytes("POST", "/embed", b"{}", fields=("Authorization: Bearer k",), trailers=())
    head = head[: -len(b"\r\n")] + b"X-Endless: "
    sent = 0
    with connect(port, timeout_s=5) as s:
        s.sendall(head)
        try:
            while sent < PUSH_BYTES:
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered
                s.sendall(PIECE)
                sent += len(PIECE)
        except OSError:  # the server closed on us: its answer, if any, is readable
            pass
        try:
            return read_response(s)[0], sent
        except (OSError, ConnectionError):
            return None, sent


@pytest.mark.parametrize("which", ["worker", "gateway"])
def test_an_endless_trailer_gets_431_and_memory_stays_bounded(
    worker: Worker, gateway: Gateway, which: str
) -> None:
    port, pid = servers(worker, gateway)[which]
    before = rss_bytes(pid)
    results = [push_endless_trailer(port) for _ in range(2)]
    grown = rss_bytes(pid) - before
    assert [status for status, _ in results] == [431, 431], results
    assert grown < 8 << 20, f"{which} grew by {grown / 1e6:.1f} MB"
    # and it still serves
    ok = request_bytes(
        "POST", "/models/a/embed" if which == "gateway" else "/embed", {"inputs": "x"}
    )
    status = exchange(port, ok.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer k\r\n\r\n", 1))[0]
    assert status == 200


@pytest.mark.parametrize("which", ["worker", "gateway"])
def test_a_steady_trickle_of_body_meets_the_body_deadline(
    worker: Worker, gateway: Gateway, which: str
) -> None:
    port, _ = servers(worker, gateway)[which]
    target = "/models/a/embed" if which == "gateway" else "/embed"
    head = request_bytes("POST", target, b"x" * 1000, fields=("Authorization: Bearer k",))[:-1000]
    with connect(port, timeout_s=10) as s:
        s.sendall(head)
        t0 = time.monotonic()
        status = None
        while time.monotonic() - t0 < 8:  # one byte every 0.25 s: never a 10 s pause
            if select.select([s], [], [], 0.25)[0]:
                status, _, body = read_response(s)
                break
            with contextlib.suppress(OSError):
                s.sendall(b"x")
        elapsed = time.monotonic() - t0
    assert status == 408, "the body was never cut off"
    assert b"not whole 2 s after the head" in body
    assert 1.8 < elapsed < 5


@pytest.mark.parametrize("which", ["worker", "gateway"])
def test_one_client_cannot_take_every_connection(
    worker: Worker, gateway: Gateway, which: str
) -> None:
    port, _ = servers(worker, gateway)[which]
    held: list[socket.socket] = []
    try:
        statuses = []
        for _ in range(50):  # more than the gateway's max_connections (40)
            s = connect(port, source=SLOW_CLIENT, timeout_s=5)
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: t\r\n")  # ...and never more
            held.append(s)
        time.sleep(0.3)
        for s in held:
            if select.select([s], [], [], 0)[0]:
                statuses.append(read_response(s))
        assert len(statuses) == 50 - 6  # six are held, the rest turned away at once
        status, headers, body = statuses[0]
        assert (status, headers["retry-after"]) == (503, "1")
        assert b"from 127.0.0.3 (max_connections_per_client 6)" in body
        # another client is served while those six hang on
        assert exchange(port, request_bytes("GET", "/health"), source=OTHER_CLIENT)[0] == 200
    finally:
        for s in held:
            s.close()
