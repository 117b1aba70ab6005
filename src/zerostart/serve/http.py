"""HTTP/1.1 over asyncio on llhttp (``httptools``): one ``Protocol`` per connection.

Theory of operation
-------------------
llhttp parses; this module owns everything llhttp does not: limits, timeouts,
ordering, and closing politely. Per connection:

* Bytes go into the parser; its callbacks assemble a :class:`Request`. A
  complete request is appended to ``_pending``; one responder task answers
  pending requests strictly in order (pipelining is safe: a response is never
  written before the responses to earlier requests). Too many pipelined
  requests pause reading.
* One timer per connection, re-armed as the connection changes state:

  ====== ===================================== ======================= ===========
  kind   armed when                            length                  on expiry
  ====== ===================================== ======================= ===========
  head   connection opens; a request begins    ``header_timeout_s``    408, close
  body   head complete; each body chunk       ``body_timeout_s``      408, close
  idle   last response written, nothing left   ``keepalive_timeout_s`` close
  linger we closed our side (write_eof)        ``LINGER_S``            abort
  ====== ===================================== ======================= ===========

  A fresh connection that never sends a byte is closed silently at ``head``.
* Limits: the request head (URL + headers) may not exceed ``max_header_bytes``
  (431), the body ``max_body_bytes`` (413, answered as soon as Content-Length
  says so, before reading the body, so ``Expect: 100-continue`` clients never
  send it). Errors are queued behind earlier responses, then the connection
  closes.
* Closing: after an error the client may still be sending; closing a socket
  with unread input makes the kernel send RST, which can destroy the response
  in flight. So we half-close (FIN), discard input for ``LINGER_S``, then abort.
* A client that half-closes (shutdown(SHUT_WR)) after its request still gets
  its answer; a client that vanishes cancels its responder, which cancels its
  queued job.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httptools

from zerostart.serve.config import ServerConfig

log = logging.getLogger("zerostart.serve")

LINGER_S = 2.0  # how long we keep draining a client's input after we half-closed
MAX_PIPELINED = 16  # queued requests per connection before we stop reading

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    424: "Failed Dependency",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    method: str
    target: str  # as sent: path plus optional query
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    keep_alive: bool
    http_version: str
    received_at: float  # time.perf_counter() when the request was complete

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class BodyStream(Protocol):
    """The rest of a response body, written as it comes (a proxy's upstream answer).

    ``length`` is the whole body's size in bytes (``Response.body`` included);
    ``aclose`` is always awaited once, whether the body was sent, cut short, or
    never started (the client left): it releases what the stream holds.
    """

    length: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # close the connection after this response
    stream: BodyStream | None = None  # more body after ``body``, written with backpressure

    def serialize(self, *, keep_alive: bool, http_version: str = "1.1") -> bytes:
        length = self.stream.length if self.stream is not None else len(self.body)
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"content-type: {self.content_type}",
            f"content-length: {length}",
        ]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        if not keep_alive:
            lines.append("connection: close")
        elif http_version == "1.0":
            lines.append("connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def error_response(
    status: int, message: str, error_type: str, *, headers: list[tuple[str, str]] | None = None
) -> Response:
    """TEI's error body: ``{"error": "...", "error_type": "..."}``."""
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    return Response(status, body, headers=headers or [])


class Host(Protocol):
    """What a connection needs from the server that owns it."""

    config: ServerConfig
    connections: set[HttpConnection]
    draining: bool

    def handle(self, request: Request) -> Awaitable[Response]: ...


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpConnection(asyncio.Protocol):
    def __init__(self, host: Host) -> None:
        self._host = host
        self._config = host.config
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: collections.deque[Request | Response] = collections.deque()
        self._responder: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._write_ready: asyncio.Future[None] | None = None
        # parse state of the request being received
        self._parsing = False  # between message begin and message complete
        self._in_head = False  # between message begin and headers complete
        self._head_bytes = 0  # URL and complete header lines, counted by the callbacks
        self._raw_head_bytes = 0  # bytes of chunks received entirely inside the head
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        # connection state
        self._began = False  # a request has begun on this connection (drain: see ListeningHost)
        self._eof = False  # the client half-closed
        self._closing = False  # we close once pending responses are written
        self._discarding = False  # we half-closed; input is read and dropped
        self._lost = False
        self._reading_paused = False

    # -- state the server looks at ---------------------------------------------
    @property
    def busy(self) -> bool:
        """A request is being answered or waits to be (a head in progress does not count)."""
        receiving_body = self._parsing and not self._in_head
        return bool(self._pending) or self._responder is not None or receiving_body

    @property
    def receiving(self) -> bool:
        """Open, and its (first or next) request's head has not fully arrived: a connection
        accepted a moment ago is this, with its request usually already on the wire."""
        if self._lost or self._closing:
            return False
        return not self._began or (self._parsing and self._in_head)

    def close_if_idle(self) -> None:
        """Close a keep-alive connection between requests; a draining server calls this.

        Not one that never sent a request, nor one half-way through a head: the drain
        answers their request with 503 (``on_message_complete``) rather than drop it.
        """
        if not self.busy and not self.receiving and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._host.connections.add(self)
        if len(self._host.connections) > self._config.max_connections:
            self._refuse(503, "too many open connections; retry later", "Overloaded")
            return
        self._arm("head", self._config.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._host.connections.discard(self)
        self._cancel_timer()
        if self._responder is not None:
            self._responder.cancel()  # the client is gone; its queued job is dropped
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    def eof_received(self) -> bool:
        self._eof = True
        if not self.busy:
            self._close()
        return True  # keep our side open: a half-closed client still gets its answers

    def data_received(self, data: bytes) -> None:
        if self._discarding or self._closing:
            return
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at "Connection: upgrade"; we do not upgrade: answer, then close.
            self._stop_reading()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause), "Validation")
            elif isinstance(cause, Exception):
                log.error("bug in a parser callback", exc_info=cause)
                self._refuse(500, "internal error while reading the request", "Backend")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}", "Validation")
            return
        if self._in_head and was_in_head:
            # The callbacks count complete header lines exactly, but llhttp buffers a
            # header value until it ends; a chunk that began and ended inside the head
            # was all head bytes, so count it raw too (bounds what a trickle can pile up).
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self._config.max_header_bytes:
                self._refuse(431, self._head_too_large(), "Validation")

    # -- llhttp callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._began = True
        self._parsing = self._in_head = True
        self._head_bytes = self._raw_head_bytes = 0
        self._url.clear()
        self._headers = {}
        self._body = bytearray()
        self._arm("head", self._config.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._config.max_body_bytes:
            # llhttp has already checked it is a number; refuse before reading the body.
            raise _Refused(413, self._body_too_large())
        if self._headers.get("expect", "").lower() == "100-continue" and not self.busy_before():
            assert self._transport is not None
            self._transport.write(CONTINUE)
        self._arm("body", self._config.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._config.max_body_bytes:
            raise _Refused(413, self._body_too_large())
        self._body += body
        self._arm("body", self._config.body_timeout_s)

    def on_message_complete(self) -> None:
        self._parsing = False
        self._cancel_timer()
        request = Request(
            method=self._parser.get_method().decode("ascii", "replace"),
            target=self._url.decode("latin-1"),
            headers=self._headers,
            body=bytes(self._body),
            keep_alive=self._parser.should_keep_alive(),
            http_version=self._parser.get_http_version(),
            received_at=time.perf_counter(),
        )
        self._body = bytearray()
        if self._host.draining:
            # Arrived after shutdown began: refuse it with 503 + connection: close (its body
            # was read whole, so closing sends no RST), never drop it unanswered.
            self._refuse(503, "the server is shutting down; retry", "Unhealthy")
            return
        self._enqueue(request)

    # -- helpers -----------------------------------------------------------------
    def busy_before(self) -> bool:
        """Earlier requests on this connection still await their responses."""
        return bool(self._pending) or self._responder is not None

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._config.max_header_bytes:
            raise _Refused(431, self._head_too_large())

    def _head_too_large(self) -> str:
        return f"request head exceeds {self._config.max_header_bytes} bytes"

    def _body_too_large(self) -> str:
        return f"request body exceeds the limit of {self._config.max_body_bytes} bytes"

    def _enqueue(self, item: Request | Response) -> None:
        self._pending.append(item)
        if len(self._pending) >= MAX_PIPELINED:
            self._pause_reading()
        if self._responder is None:
            self._responder = self._loop.create_task(self._respond())

    def _refuse(self, status: int, message: str, error_type: str) -> None:
        """Answer (after earlier responses) with an error, then close."""
        self._parsing = self._in_head = False
        self._cancel_timer()
        self._stop_reading()
        self._enqueue(error_response(status, message, error_type))

    def _stop_reading(self) -> None:
        self._closing = True
        self._pause_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and self._reading_paused and not self._closing:
            self._reading_paused = False
            self._transport.resume_reading()

    async def _respond(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._pending and not self._lost:
                item = self._pending.popleft()
                if len(self._pending) < MAX_PIPELINED // 2:
                    self._resume_reading()
                if isinstance(item, Response):
                    response, keep, version = item, False, "1.1"
                else:
                    try:
                        response = await self._host.handle(item)
                    except Exception:  # a bug must not leave the client waiting for nothing
                        log.exception("internal error answering %s %s", item.method, item.target)
                        response = error_response(
                            500, "internal error (logged by the server)", "Internal"
                        )
                        response.close = True
                    keep = (
                        item.keep_alive
                        and not response.close
                        and not self._host.draining
                        and not (self._closing and not self._pending)
                        and not (self._eof and not self._pending and not self._parsing)
                    )
                    version = item.http_version
                if response.stream is not None:
                    if not await self._write_streamed(response, keep, version):
                        return
                    if not keep:
                        self._close()
                        return
                    continue
                if self._lost:
                    return
                transport.write(response.serialize(keep_alive=keep, http_version=version))
                if not keep:
                    self._close()
                    return
                if self._write_ready is not None:
                    await self._write_ready
        finally:
            self._responder = None
        if self._lost:
            return
        if self._host.draining or (self._eof and not self._parsing):
            self._close()
        elif not self._parsing:
            self._arm("idle", self._config.keepalive_timeout_s)

    async def _write_streamed(self, response: Response, keep: bool, version: str) -> bool:
        """Head and body of a streamed response; False if the connection is gone (or cut)."""
        transport = self._transport
        stream = response.stream
        assert transport is not None and stream is not None
        try:
            if self._lost:
                return False
            transport.write(response.serialize(keep_alive=keep, http_version=version))
            async for chunk in stream:
                if self._lost:
                    return False
                transport.write(chunk)
                if self._write_ready is not None:
                    await self._write_ready
        except Exception as exc:  # the body's source failed after the head went out
            log.warning("response body cut short: %s", exc)
            transport.abort()  # the client sees a short body, not a wrong one
            return False
        finally:
            await stream.aclose()
        return not self._lost

    def _close(self) -> None:
        """Close our side politely: FIN now, drop further input, abort after LINGER_S."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._discarding:
            return
        self._pending.clear()
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        self._discarding = True
        self._closing = True
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # read and drop, so the kernel does not RST
        self._arm("linger", LINGER_S)

    def _arm(self, kind: str, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_kind = kind
        self._timer = self._loop.call_later(seconds, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or self._lost:
            return
        kind = self._timer_kind
        if kind == "linger":
            transport.abort()
        elif kind == "idle" or (kind == "head" and not self._parsing):
            transport.close()
        else:
            log.info("closing a connection: request %s not received in time", kind)
            self._refuse(408, f"request {kind} not received in time", "Timeout")


DRAIN_POLL_S = 0.02  # how often a draining server re-checks for busy connections
# How long a draining server waits for the request of a connection that has sent none
# yet (accepted just before SIGTERM, or taken from the backlog then): such a client has
# usually written it already; 2 s covers one descheduled on a loaded node (load ~9
# measured), and a silent connection cannot hold the shutdown longer.
DRAIN_FIRST_REQUEST_S = 2.0


class ListeningHost:
    """Listening, shutdown and drain shared by the worker's Server and the platform's Gateway.

    A subclass sets ``config`` (its ServerConfig) and implements ``handle``; it
    calls ``_listen()`` from its ``start()`` and drains in its own ``_drain()``
    with ``_drain_connections()`` and ``_close_connections()``. ``begin_shutdown``
    accepts what waits in the listening socket's backlog, stops accepting and closes
    idle keep-alive connections; the drain gives a connection that has not sent its
    request yet ``DRAIN_FIRST_REQUEST_S`` to send it, and answers any request that
    completes after shutdown began with 503 + ``connection: close``: every accepted
    connection gets an answer. A second call stops waiting for stragglers (``_force``).
    """

    config: ServerConfig

    def __init__(self) -> None:
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self._listener: asyncio.Server | None = None
        self._shutdown: asyncio.Event | None = None
        self._force = False
        self._port: int | None = None
        self._adopting: set[asyncio.Task[object]] = set()  # backlog taken at shutdown

    def handle(self, request: Request) -> Awaitable[Response]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The port bound by start() (the real one when config.port is 0)."""
        assert self._port is not None, "start() first"
        return self._port

    async def _listen(self) -> None:
        """Bind and listen on config.host:port; OSError when that is not possible."""
        loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        self._listener = await loop.create_server(
            lambda: HttpConnection(self),
            self.config.host,
            self.config.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )
        self._port = int(self._listener.sockets[0].getsockname()[1])

    def _shutdown_started(self) -> None:
        """Hook: log and mark what the subclass needs when draining begins."""

    def begin_shutdown(self) -> None:
        """Stop accepting and start draining; a second call stops waiting for stragglers."""
        if self.draining:
            self._force = True
            return
        self._shutdown_started()
        self.draining = True
        if self._listener is not None:
            self._adopt_backlog()
            self._listener.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self._shutdown is not None:
            self._shutdown.set()

    def _adopt_backlog(self) -> None:
        """Accept every connection the kernel completed but we had not accepted yet.

        Closing a listening socket resets the connections in its accept queue: the
        clients' connect() succeeded and they sent their request, but they never get
        an answer (with the first-request wait: 206-231 of 600 per round, load ~9,
        tests/integration/test_drain.py). Taken here, each gets its
        request answered with 503 by the drain. Between the last accept and the close
        nothing else runs, so only a handshake completing in those microseconds is lost.
        """
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        for listening in self._listener.sockets:
            sock = socket.socket(
                listening.family, listening.type, fileno=os.dup(listening.fileno())
            )
            try:
                sock.setblocking(False)
                while True:
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # EMFILE and the like: the rest are lost
                        log.warning("drain: cannot accept the backlog: %s", exc)
                        break
                    conn.setblocking(False)
                    task = loop.create_task(
                        loop.connect_accepted_socket(lambda: HttpConnection(self), conn)
                    )
                    self._adopting.add(task)
                    task.add_done_callback(self._adopting.discard)
            finally:
                sock.close()

    def _receiving(self, until: float) -> bool:
        """Just-accepted connections whose request may still come (until loop time ``until``)."""
        if self._adopting:
            return True
        if asyncio.get_running_loop().time() >= until:
            return False
        return any(c.receiving for c in self.connections)

    async def serve_until_shutdown(self) -> None:
        """Serve until :meth:`begin_shutdown`, then drain and return."""
        assert self._shutdown is not None, "start() first"
        await self._shutdown.wait()
        await self._drain()

    async def _drain(self) -> None:
        await self._drain_connections(lambda: any(c.busy for c in self.connections))
        await self._close_connections()

    async def _drain_connections(self, busy: Callable[[], bool]) -> float:
        """Wait until ``busy()`` is false, the drain timeout passes or a second shutdown.

        Closes connections as they go idle. Returns the deadline (loop time), for
        what the subclass still waits for.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        first_requests = loop.time() + min(DRAIN_FIRST_REQUEST_S, self.config.header_timeout_s)
        while (
            not self._force
            and loop.time() < deadline
            and (busy() or self._receiving(first_requests))
        ):
            for conn in list(self.connections):
                conn.close_if_idle()
            await asyncio.sleep(DRAIN_POLL_S)
        return deadline

    async def _close_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        if self._listener is not None:
            await self._listener.wait_closed()
