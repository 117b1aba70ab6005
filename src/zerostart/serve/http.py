"""HTTP/1.1 over asyncio: the driver around the I/O-free reader, shared by worker and gateway.

Theory of operation
-------------------
``_h1core.RequestReader`` decides what a request is and when one is refused
(limits, deadlines, framing, Host and target rules); ``_h1state.py`` holds
both state machines as tables. This module does the I/O, per connection:

* Bytes go to the reader; its events come back in order: a complete
  :class:`Request` is appended to ``_pending``, a :class:`Refusal` queues its
  error answer and stops reading (state ``CLOSING``), ``ExpectContinue``
  writes ``100 Continue`` when nothing is queued before it. One responder task
  answers pending requests strictly in order (pipelining is safe: a response is
  never written before the responses to earlier requests). Too many pipelined
  requests (``max_pipelined``) pause reading.
* One timer per connection. While a request is being read it runs to the
  reader's own deadline (head: ``head_timeout_s``; body and trailers: the
  longest pause ``body_timeout_s`` and the whole-body ``body_deadline_s``),
  and its expiry asks the reader, which answers 408 or, if the request moved
  on meanwhile, a later deadline (the timer is not re-armed per chunk).
  Between requests it is the connection's own:

  ====== ===================================== ======================= ===========
  kind   armed when                            length                  on expiry
  ====== ===================================== ======================= ===========
  first  the connection opens                  ``head_timeout_s``      close
  idle   last response written, nothing left   ``keepalive_timeout_s`` close
  linger we closed our side (write_eof)        ``linger_s``            abort
  ====== ===================================== ======================= ===========

* Connections: more than ``max_connections`` open, or more than
  ``max_connections_per_client`` from one client address, and the new one is
  answered 503 (``Retry-After``) and closed at once.
* Closing: after an error the client may still be sending; closing a socket
  with unread input makes the kernel send RST, which can destroy the response
  in flight. So we half-close (FIN), discard input for ``linger_s``, then abort.
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
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from zerostart._records import Record
from zerostart.serve._h1core import ExpectContinue, Refusal, Request, RequestReader, Upgraded
from zerostart.serve._h1state import READING_CONN, Conn, ConnInput, Read, next_conn
from zerostart.serve.config import HttpLimits, ServerConfig

__all__ = [
    "BodyStream",
    "HttpConnection",
    "ListeningHost",
    "Request",
    "Response",
    "error_response",
]

log = logging.getLogger("zerostart.serve")

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


class BodyStream(Protocol):
    """The rest of a response body, written as it comes (a proxy's upstream answer).

    ``length`` is the whole body's size in bytes (``Response.body`` included);
    ``aclose`` is always awaited once, whether the body was sent, cut short, or
    never started (the client left): it releases what the stream holds.
    """

    length: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Response(Record):
    """What the server writes back (a plain class: ``zerostart._records``)."""

    __slots__ = ("body", "close", "content_type", "headers", "status", "stream")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
        close: bool = False,
        stream: BodyStream | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers: list[tuple[str, str]] = [] if headers is None else headers
        self.close = close  # close the connection after this response
        self.stream = stream  # more body after ``body``, written with backpressure

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
    clients: collections.Counter[str]  # open connections per client address
    read_buffer: memoryview  # where every connection's reads land (BufferedProtocol)
    draining: bool

    @property
    def limits(self) -> HttpLimits: ...

    def handle(self, request: Request) -> Awaitable[Response]: ...


class HttpConnection(asyncio.BufferedProtocol):
    def __init__(self, host: Host) -> None:
        self._host = host
        self._limits = host.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = RequestReader(self._limits)
        self._state = Conn.OPEN
        self._client: str | None = None  # counted in host.clients while set
        self._pending: collections.deque[Request | Response] = collections.deque()
        self._responder: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""  # "first", "idle", "linger", or "read" (the reader's deadline)
        self._timer_at = 0.0  # loop time the timer fires at
        self._write_ready: asyncio.Future[None] | None = None
        self._began = False  # a request has begun on this connection (drain: see ListeningHost)
        self._eof = False  # the client half-closed
        self._reading_paused = False

    # -- state the server looks at ---------------------------------------------
    @property
    def busy(self) -> bool:
        """A request is being answered or waits to be (a head in progress does not count)."""
        return bool(self._pending) or self._responder is not None or self._reader.receiving_body

    @property
    def receiving(self) -> bool:
        """Open, and its (first or next) request's head has not fully arrived: a connection
        accepted a moment ago is this, with its request usually already on the wire."""
        if self._state is not Conn.OPEN:
            return False
        return not self._began or self._reader.state is Read.HEAD

    def close_if_idle(self) -> None:
        """Close a keep-alive connection between requests; a draining server calls this.

        Not one that never sent a request, nor one half-way through a head: the drain
        answers their request with 503 (``data_received``) rather than drop it.
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
        host = self._host
        host.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        host.clients[self._client] += 1
        if len(host.connections) > self._limits.max_connections:
            self._turn_away("too many open connections; retry later")
        elif host.clients[self._client] > self._limits.max_connections_per_client:
            self._turn_away(
                f"too many open connections from {self._client} "
                f"(max_connections_per_client {self._limits.max_connections_per_client}); "
                "retry later"
            )
        else:
            self._arm("first", self._limits.head_timeout_s)

    def _turn_away(self, message: str) -> None:
        """503 and close at once, without lingering: a refused connection holds no slot."""
        assert self._transport is not None
        self._state = next_conn(self._state, ConnInput.CLOSE)
        response = error_response(503, message, "Overloaded", headers=[("retry-after", "1")])
        self._transport.write(response.serialize(keep_alive=False))
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = next_conn(self._state, ConnInput.LOST)
        host = self._host
        host.connections.discard(self)
        if self._client is not None:
            host.clients[self._client] -= 1
            if host.clients[self._client] <= 0:
                del host.clients[self._client]
            self._client = None
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

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._host.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._host.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._state not in READING_CONN:
            return  # closing or lingering: input is read and dropped
        self._began = True
        reader = self._reader
        for event in reader.receive(data, time.perf_counter()):
            if isinstance(event, Request):
                if self._timer_kind in ("first", "idle", "read"):
                    self._cancel_timer()  # answering it takes what it takes
                if self._host.draining:
                    # Arrived after shutdown began: refuse it with 503 + connection: close
                    # (its body was read whole, so closing sends no RST), never drop it.
                    self._refuse(Refusal(503, "the server is shutting down; retry", "Unhealthy"))
                    return
                self._enqueue(event)
            elif isinstance(event, ExpectContinue):
                if not self._pending and self._responder is None and self._transport is not None:
                    self._transport.write(CONTINUE)
            elif isinstance(event, Refusal):
                self._refuse(event)
            elif isinstance(event, Upgraded):
                self._stop_reading()  # we do not upgrade: answer, then close
        if self._state in READING_CONN:
            self._follow_reader()

    # -- helpers -----------------------------------------------------------------
    def _follow_reader(self) -> None:
        """Run the timer to the reader's deadline while a request is being read."""
        due = self._reader.deadline()
        if due is None:
            if self._timer_kind == "read":
                self._cancel_timer()
            return
        at = self._loop.time() + (due[0] - time.perf_counter())
        if self._timer_kind != "read" or at < self._timer_at:
            self._arm("read", at - self._loop.time())

    def _enqueue(self, item: Request | Response) -> None:
        self._pending.append(item)
        if len(self._pending) >= self._limits.max_pipelined:
            self._pause_reading()
        if self._responder is None:
            self._responder = self._loop.create_task(self._respond())

    def _refuse(self, refusal: Refusal) -> None:
        """Answer (after earlier responses) with an error, then close."""
        if refusal.bug is not None:
            log.error("bug while reading a request", exc_info=refusal.bug)
        self._cancel_timer()
        self._stop_reading()
        self._enqueue(error_response(refusal.status, refusal.message, refusal.error_type))

    def _stop_reading(self) -> None:
        self._state = next_conn(self._state, ConnInput.STOP_READING)
        self._pause_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and self._reading_paused and self._state in READING_CONN:
            self._reading_paused = False
            self._transport.resume_reading()

    def _gone(self) -> bool:
        return self._state is Conn.CLOSED

    def _mid_request(self) -> bool:
        return self._reader.state is not Read.IDLE

    async def _respond(self) -> None:
        transport = self._transport
        assert transport is not None
        host = self._host
        try:
            while self._pending and not self._gone():
                item = self._pending.popleft()
                if len(self._pending) < self._limits.max_pipelined // 2:
                    self._resume_reading()
                if isinstance(item, Response):
                    response, keep, version = item, False, "1.1"
                else:
                    try:
                        response = await host.handle(item)
                    except Exception:  # a bug must not leave the client waiting for nothing
                        log.exception("internal error answering %s %s", item.method, item.target)
                        response = error_response(
                            500, "internal error (logged by the server)", "Internal"
                        )
                        response.close = True
                    last = not self._pending
                    keep = (
                        item.keep_alive
                        and not response.close
                        and not host.draining
                        and not (self._state is not Conn.OPEN and last)
                        and not (self._eof and last and not self._mid_request())
                    )
                    version = item.http_version
                if response.stream is not None:
                    if not await self._write_streamed(response, keep, version):
                        return
                    if not keep:
                        self._close()
                        return
                    continue
                if self._gone():
                    return
                transport.write(response.serialize(keep_alive=keep, http_version=version))
                if not keep:
                    self._close()
                    return
                if self._write_ready is not None:
                    await self._write_ready
        finally:
            self._responder = None
        if self._gone():
            return
        if host.draining or (self._eof and not self._mid_request()):
            self._close()
        elif not self._mid_request():
            self._arm("idle", self._limits.keepalive_timeout_s)

    async def _write_streamed(self, response: Response, keep: bool, version: str) -> bool:
        """Head and body of a streamed response; False if the connection is gone (or cut)."""
        transport = self._transport
        stream = response.stream
        assert transport is not None and stream is not None
        try:
            if self._gone():
                return False
            transport.write(response.serialize(keep_alive=keep, http_version=version))
            async for chunk in stream:
                if self._gone():
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
        return not self._gone()

    def _close(self) -> None:
        """Close our side politely: FIN now, drop further input, abort after ``linger_s``."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._state is Conn.LINGER:
            return
        self._pending.clear()
        if self._eof or not transport.can_write_eof():
            self._state = next_conn(self._state, ConnInput.CLOSE)
            transport.close()
            return
        self._state = next_conn(self._state, ConnInput.HALF_CLOSE)
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # read and drop, so the kernel does not RST
        self._arm("linger", self._limits.linger_s)

    def _arm(self, kind: str, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_kind = kind
        self._timer_at = self._loop.time() + seconds
        self._timer = self._loop.call_at(self._timer_at, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = ""

    def _expired(self) -> None:
        self._timer = None
        kind, self._timer_kind = self._timer_kind, ""
        transport = self._transport
        if transport is None or self._gone():
            return
        if kind == "linger":
            transport.abort()
        elif kind == "read":
            refusal = self._reader.expire(time.perf_counter())
            if refusal is not None:
                log.info("closing a connection: %s", refusal.message)
                self._refuse(refusal)
            else:
                self._follow_reader()  # the request moved on: its next deadline
        elif not self._mid_request():  # "first" or "idle", nothing of a request received
            self._state = next_conn(self._state, ConnInput.CLOSE)
            transport.close()


READ_BUFFER_BYTES = 64 * 1024  # one read's most; shared by all connections of a host
DRAIN_POLL_S = 0.02  # how often a draining server re-checks for busy connections
# How long a draining server waits for the request of a connection that has sent none
# yet (accepted just before SIGTERM, or taken from the backlog then): such a client has
# usually written it already; 2 s covers one descheduled on a loaded node (load ~9
# measured), and a silent connection cannot hold the shutdown longer.
DRAIN_FIRST_REQUEST_S = 2.0


# Classic BPF (linux/filter.h): one instruction, BPF_RET | BPF_K with k = 0: keep 0 bytes,
# i.e. drop the packet. SO_ATTACH_FILTER is 26 on every Linux architecture
# (asm-generic/socket.h); Python's socket module does not export it.
_SO_ATTACH_FILTER = 26
_BPF_DROP_ALL = (0x06, 0, 0, 0)  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}


def refuse_new_connections(sock: socket.socket) -> bool:
    """Make a listening TCP socket drop every packet it receives from now on.

    A SYN that arrives afterwards is dropped, so no new connection completes; the
    client retransmits it (after ~1 s, RFC 6298's initial RTO) and, the socket
    being closed by then, is refused: a refusal before anything was sent, which a
    client may retry safely. Connections already completed stay in the accept queue
    for ``accept()``. This closes the race between a draining server's last
    ``accept()`` and ``close()``, in which a handshake completing would otherwise be
    reset by the close after the client had sent its request.

    Returns False (and changes nothing) where the platform has no socket filters
    (not Linux) or refuses this one; the drain then works as without it.
    """
    import struct  # only at drain: keeps the import off the worker's cold start

    if not sys.platform.startswith("linux"):
        return False
    from array import array

    program = array("B", struct.pack("=HBBI", *_BPF_DROP_ALL))
    address, _ = program.buffer_info()
    fprog = struct.pack("@HP", 1, address)  # struct sock_fprog {u16 len; sock_filter *}
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("drain: cannot filter the listening socket: %s", exc)
        return False
    return True


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
        # Every connection reads into this one buffer (asyncio calls get_buffer, recv_into,
        # buffer_updated back to back on the loop's thread, and the bytes are copied out at
        # once): no 256 KiB allocation per read, which glibc may serve with mmap + mremap +
        # munmap, three system calls per request (seen with strace: 30-60 % more CPU).
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self.connections: set[HttpConnection] = set()
        self.clients: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._limits: HttpLimits | None = None
        self._listener: asyncio.Server | None = None
        self._shutdown: asyncio.Event | None = None
        self._force = False
        self._port: int | None = None
        self._adopting: set[asyncio.Task[object]] = set()  # backlog taken at shutdown

    def handle(self, request: Request) -> Awaitable[Response]:
        raise NotImplementedError

    @property
    def limits(self) -> HttpLimits:
        """What each connection enforces (built from ``config`` on first use)."""
        if self._limits is None:
            self._limits = self.config.http
        return self._limits

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
        request answered with 503 by the drain. Before the last accept, a filter that
        drops every packet is put on the listening socket (``refuse_new_connections``):
        without it, a handshake completing between the last accept and the close was
        reset after the client had sent its request (5 of 600 in one CI round, a
        loaded 2-core machine descheduling the worker in that window).
        """
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        for listening in self._listener.sockets:
            sock = socket.socket(
                listening.family, listening.type, fileno=os.dup(listening.fileno())
            )
            try:
                refuse_new_connections(sock)
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
