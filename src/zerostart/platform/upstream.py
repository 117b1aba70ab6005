"""The gateway's HTTP/1.1 client to its replicas: keep-alive connections on llhttp.

One :class:`UpstreamPool` per replica keeps idle connections for reuse (a
new TCP connection on loopback costs a few hundred microseconds, more than
the gateway's whole latency budget). One request at a time per connection,
no pipelining. The response body is read whole, up to ``max_body_bytes``
(then :class:`UpstreamTooLarge`), so the gateway never holds more than the
configured limit per request.

Errors carry whether the replica may have seen the request:
``response_started`` is False when the connection failed before a byte of
the answer arrived. A *reused* connection that fails that way was most likely
closed by the replica while idle (its keep-alive timeout) and is retried
once on a fresh connection here; every other failure goes to the caller,
which decides whether to retry elsewhere.

Runtime module: standard library and httptools.
"""

from __future__ import annotations

import asyncio
import collections

import httptools


class UpstreamError(Exception):
    """The replica did not answer (refused, reset, closed, timed out, malformed)."""

    def __init__(self, message: str, *, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamTooLarge(UpstreamError):
    pass


class UpstreamResponse:
    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool
    ) -> None:
        self.status = status
        self.headers = headers  # lower-case names, in order received
        self.body = body
        self.keep_alive = keep_alive


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._limit = 0
        self._started = False
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = f"connection lost: {exc}" if exc else "connection closed by the replica"
        self._fail(UpstreamError(why, response_started=self._started))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the replica is confused
            self.close()
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamError):
                self._fail(cause)
            else:
                self._fail(UpstreamError(f"malformed response: {exc}", response_started=True))
            self.close()

    # -- llhttp callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == "content-length" and value.isdigit() and int(value) > self._limit:
                raise UpstreamTooLarge(
                    f"response body of {value} bytes exceeds the limit of {self._limit}",
                    response_started=True,
                )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            raise UpstreamTooLarge(
                f"response body exceeds the limit of {self._limit} bytes", response_started=True
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        self._waiter = None
        self._cancel_timer()
        response = UpstreamResponse(
            self._parser.get_status_code(),
            self._headers,
            b"".join(self._body),
            self._parser.should_keep_alive(),
        )
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- use -----------------------------------------------------------------------
    def send(self, data: bytes, limit: int, timeout_s: float) -> asyncio.Future[UpstreamResponse]:
        assert self._transport is not None and self._waiter is None
        self._headers, self._body, self._size, self._limit = [], [], 0, limit
        self._started = False
        self._waiter = self._loop.create_future()
        self._timer = self._loop.call_later(timeout_s, self._timed_out, timeout_s)
        self._transport.write(data)
        return self._waiter

    def _timed_out(self, timeout_s: float) -> None:
        self._timer = None
        self._fail(
            UpstreamTimeout(
                f"no complete answer within {timeout_s:g} s", response_started=self._started
            )
        )
        self.close()

    def _fail(self, exc: UpstreamError) -> None:
        waiter = self._waiter
        self._waiter = None
        self._cancel_timer()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class UpstreamPool:
    """Keep-alive connections to one replica at ``host:port``."""

    def __init__(self, host: str, port: int, *, max_idle: int = 64) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self._idle: collections.deque[_Connection] = collections.deque()
        self._host_header = f"host: {host}:{port}\r\n".encode("latin-1")
        self._closed = False

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        timeout_s: float,
        max_body_bytes: int,
    ) -> UpstreamResponse:
        """Send one request and read its whole answer; raises :class:`UpstreamError`."""
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers or ())
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        data = b"".join(head) + body
        for _ in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                response = await conn.send(data, max_body_bytes, timeout_s)
            except UpstreamError as exc:
                conn.close()
                if reused and not exc.response_started and not isinstance(exc, UpstreamTimeout):
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise
            except BaseException:  # cancelled mid-request: the connection's state is unknown
                conn.close()
                raise
            if (
                response.keep_alive
                and not conn.closed
                and not self._closed
                and len(self._idle) < self.max_idle
            ):
                self._idle.append(conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close idle connections; ones in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
