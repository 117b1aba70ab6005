"""The gateway's client to replicas (platform/upstream.py) against small real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from zerostart.platform.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamTooLarge,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async def main() -> None:
        connections = 0
        seen: list[bytes] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                try:
                    seen.append(await read_request(r))
                except asyncio.IncompleteReadError:
                    break
                w.write(ok(b'{"a":1}', b"content-type: application/json\r\n"))

        server, port = await serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        for i in range(3):
            resp = await pool.request(
                "POST", "/embed", [("x-n", str(i))], b"hello", timeout_s=5, max_body_bytes=100
            )
            assert (resp.status, resp.body) == (200, b'{"a":1}')
            assert ("content-type", "application/json") in resp.headers
        assert connections == 1
        assert seen[2].startswith(b"POST /embed HTTP/1.1\r\n") and seen[2].endswith(b"hello")
        assert b"x-n: 2\r\n" in seen[2] and b"content-length: 5\r\n" in seen[2]
        pool.close()
        server.close()

    asyncio.run(main())


def test_a_stale_idle_connection_is_retried_once_on_a_fresh_one() -> None:
    async def main() -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(b"x"))  # keep-alive by default, but then close: like an idle timeout
            await w.drain()
            w.close()

        server, port = await serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        for _ in range(3):
            resp = await pool.request("GET", "/", timeout_s=5, max_body_bytes=10)
            assert resp.body == b"x"
        pool.close()
        server.close()

    asyncio.run(main())


def test_many_stale_idle_connections_cost_one_retry_on_a_fresh_one() -> None:
    """A replica killed with several idle keep-alive connections: all of them are dead.

    The old pool retried on the next idle one, found it stale too, and fell out of its
    loop with an AssertionError that left the gateway's client with no answer.
    """

    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []
        hold = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            writers.append(w)
            await read_request(r)
            await hold.wait()  # answer all four together: four idle connections afterwards
            w.write(ok(b"x"))
            await w.drain()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await read_request(r)  # a request on a stale connection: closed unanswered
            w.close()

        server, port = await serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        calls = [
            asyncio.ensure_future(pool.request("GET", "/", timeout_s=5, max_body_bytes=10))
            for _ in range(4)
        ]
        while len(writers) < 4:
            await asyncio.sleep(0.01)
        hold.set()
        assert [c.body for c in await asyncio.gather(*calls)] == [b"x"] * 4
        for w in writers:  # "kill the replica": every idle connection closes under the pool
            w.close()
        await asyncio.sleep(0.05)
        resp = await pool.request("GET", "/", timeout_s=5, max_body_bytes=10)
        assert resp.body == b"x" and len(writers) == 5  # one fresh connection, no stale retries
        server.close()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.request("GET", "/", timeout_s=5, max_body_bytes=10)  # replica gone
        pool.close()

    asyncio.run(main())


def test_refused_closed_too_large_slow_and_garbage() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError, match="cannot connect") as refused:
            await UpstreamPool("127.0.0.1", port).request("GET", "/", timeout_s=1, max_body_bytes=1)
        assert not refused.value.response_started

        async def closes(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.close()

        async def big_chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            w.write(b"64\r\n" + b"y" * 100 + b"\r\n0\r\n\r\n")

        async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            await asyncio.sleep(2)

        async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"NOT HTTP AT ALL\r\n\r\n")

        cases: list[tuple[Handler, type[UpstreamError], str]] = [
            (closes, UpstreamError, "closed by the replica"),
            (big_chunked, UpstreamTooLarge, "exceeds the limit of 10"),
            (slow, UpstreamTimeout, "within 0.2 s"),
            (garbage, UpstreamError, "malformed response"),
        ]
        for handler, error, message in cases:
            server, port = await serve(handler)
            pool = UpstreamPool("127.0.0.1", port)
            with pytest.raises(error, match=message):
                await pool.request("GET", "/", timeout_s=0.2, max_body_bytes=10)
            pool.close()
            server.close()

    asyncio.run(main())


def test_a_long_body_is_streamed_with_backpressure_then_the_connection_reused() -> None:
    async def main() -> None:
        size = 2 * 1024 * 1024  # far above the stream's high-water mark
        connections = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                try:
                    await read_request(r)
                except asyncio.IncompleteReadError:
                    break
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                for i in range(32):
                    w.write(bytes([i]) * (size // 32))
                    await w.drain()

        server, port = await serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        for _ in range(2):
            resp = await pool.request("GET", "/", timeout_s=10, max_body_bytes=1000)
            assert resp.stream is not None and resp.stream.length == size
            got = [resp.body]
            async for chunk in resp.stream:
                got.append(chunk)
                await asyncio.sleep(0)  # a slow reader
            await resp.stream.aclose()
            body = b"".join(got)
            assert len(body) == size and body[-1] == 31
        assert connections == 1  # reused after the stream was read to its end
        # a stream closed early gives its connection up
        resp = await pool.request("GET", "/", timeout_s=10, max_body_bytes=1000)
        assert resp.stream is not None
        await resp.stream.aclose()
        resp = await pool.request("GET", "/", timeout_s=10, max_body_bytes=1000)
        assert resp.stream is not None
        await resp.stream.aclose()
        assert connections == 2
        pool.close()
        server.close()

    asyncio.run(main())
