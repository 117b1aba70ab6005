"""The gateway's HTTP/1.1 client to its replicas: keep-alive connections on llhttp.

One :class:`UpstreamPool` per replica keeps idle connections for reuse (a
new TCP connection on loopback costs a few hundred microseconds, more than
the gateway's whole latency budget). One request at a time per connection,
no pipelining.

Response bodies: a body that has fully arrived with its head (the worker's
JSON answers, nearly always) comes back whole in ``UpstreamResponse.body``.
A longer one with a Content-Length is *streamed*: the response comes back as
soon as its head has, with the bytes so far in ``body`` and the rest in
``stream`` (a :class:`BodyStream`), read from the replica only as fast as the
caller consumes it (reading pauses above ``STREAM_HIGH_WATER_BYTES``), so
memory per request stays bounded whatever the body's size. A body without a
Content-Length (chunked) is read whole, up to ``max_body_bytes`` (then
:class:`UpstreamTooLarge`). The connection goes back to the pool when the
stream is closed after its last byte.

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
import functools
from collections.abc import Callable

import httptools

STREAM_HIGH_WATER_BYTES = 256 * 1024  # buffered per streamed response before reading pauses
STREAM_LOW_WATER_BYTES = 64 * 1024  # reading resumes below this


class UpstreamError(Exception):
    """The replica did not answer (refused, reset, closed, timed out, malformed)."""

    def __init__(self, message: str, *, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamTooLarge(UpstreamError):
    pass


class BodyStream:
    """The rest of a streamed response body; iterate it, then ``aclose`` (always).

    Implements ``zerostart.serve.http.BodyStream``: ``length`` is the whole
    body's size (Content-Length). Raises :class:`UpstreamError` mid-body if the
    replica fails or times out.
    """

    def __init__(self, conn: _Connection, length: int, release: Callable[[bool], None]) -> None:
        self.length = length
        self._conn = conn
        self._release = release  # called once: True if the connection can be reused
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._wake: asyncio.Future[None] | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self._closed = False

    # fed by the connection
    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > STREAM_HIGH_WATER_BYTES:
            self._conn.pause()
        self._notify()

    def finish(self, error: UpstreamError | None = None) -> None:
        if error is not None and not self.done:
            self.error = error
        self.done = True
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # read by the caller
    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.done:
                raise StopAsyncIteration
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < STREAM_LOW_WATER_BYTES:
            self._conn.resume()
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release(self.done and self.error is None and not self._chunks)


class UpstreamResponse:
    __slots__ = ("body", "headers", "keep_alive", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        stream: BodyStream | None = None,
    ) -> None:
        self.status = status
        self.headers = headers  # lower-case names, in order received
        self.body = body  # the whole body, or its first bytes when ``stream`` is set
        self.keep_alive = keep_alive
        self.stream = stream


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
        self._head_done = False
        self._length: int | None = None  # Content-Length of the response being read
        self._stream: BodyStream | None = None
        self._release: Callable[[bool], None] | None = None
        self._paused = False
        self.last = False  # the replica said connection: close
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
        if self._waiter is None and self._stream is None:  # nobody asked: the replica is confused
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
            return
        waiter = self._waiter
        if waiter is not None and self._head_done and self._length is not None:
            # The head is in, the body is not complete: hand the answer over now, stream the rest.
            self._waiter = None
            self._stream = BodyStream(self, self._length, self._stream_closed)
            response = UpstreamResponse(
                self._parser.get_status_code(),
                self._headers,
                b"".join(self._body),
                self._parser.should_keep_alive(),
                self._stream,
            )
            self._body = []
            if not waiter.done():
                waiter.set_result(response)

    def _stream_closed(self, reusable: bool) -> None:
        self._stream = None
        release, self._release = self._release, None
        if release is not None:
            release(reusable)
        if not reusable:
            self.close()

    def pause(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and self._paused and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    # -- llhttp callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        for name, value in self._headers:
            if name == "content-length" and value.isdigit():
                self._length = int(value)  # streamed if it does not arrive with the head

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(body)
            return
        self._size += len(body)
        if self._length is None and self._size > self._limit:
            raise UpstreamTooLarge(
                f"response body exceeds the limit of {self._limit} bytes", response_started=True
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if self._stream is not None:
            self._stream.finish()
            return
        waiter = self._waiter
        self._waiter = None
        response = UpstreamResponse(
            self._parser.get_status_code(),
            self._headers,
            b"".join(self._body),
            self._parser.should_keep_alive(),
        )
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- use -----------------------------------------------------------------------
    def send(
        self, data: bytes, limit: int, timeout_s: float, release: Callable[[bool], None]
    ) -> asyncio.Future[UpstreamResponse]:
        """Write a request; the future resolves with the answer (or its head, if streamed).

        ``release(reusable)`` is called when a streamed body has been closed.
        """
        assert self._transport is not None and self._waiter is None
        if self.closed:  # lost while idle: writing would be dropped, and the answer never come
            waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
            waiter.set_exception(UpstreamError("connection closed by the replica while idle"))
            return waiter
        self._headers, self._body, self._size, self._limit = [], [], 0, limit
        self._started = self._head_done = False
        self._length, self._stream, self._release = None, None, release
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
        elif self._stream is not None and not self._stream.done:
            self._stream.finish(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def mark_last(self) -> None:
        self.last = True

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
        # An idle keep-alive connection first; if it turns out stale (the replica closed it,
        # or died; a send on a connection already closed fails at once) before any answer,
        # once more on a fresh connection, never on another idle one: when one is stale the
        # others usually are too (a killed replica leaves all of them dead), and they are
        # dropped.
        conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                return await self._exchange(conn, data, max_body_bytes, timeout_s)
            except UpstreamError as exc:
                if exc.response_started or isinstance(exc, UpstreamTimeout):
                    raise
                self._drop_idle()
        return await self._exchange(await self._open(), data, max_body_bytes, timeout_s)

    async def _exchange(
        self, conn: _Connection, data: bytes, max_body_bytes: int, timeout_s: float
    ) -> UpstreamResponse:
        """One request on ``conn``; the connection is closed on any failure."""
        try:
            response = await conn.send(
                data, max_body_bytes, timeout_s, functools.partial(self._checkin, conn)
            )
        except BaseException:  # failed or cancelled mid-request: the connection's state is unknown
            conn.close()
            raise
        if response.stream is None:
            self._checkin(conn, response.keep_alive)
        elif not response.keep_alive:
            conn.mark_last()
        return response

    def _drop_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _checkin(self, conn: _Connection, reusable: bool) -> None:
        usable = reusable and not conn.closed and not conn.last and not self._closed
        if usable and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close idle connections; ones in use close when their request ends."""
        self._closed = True
        self._drop_idle()
