"""The states of an HTTP/1.1 server connection, as tables.

Theory of operation
-------------------
A connection has two sides, each a small state machine held here as data;
the code that moves them (``_h1core.py`` for reading, ``http.py`` for the
connection) looks a transition up and never decides one itself. A transition
that is not in a table is a bug in that code, raised as :class:`StateBug`,
never a client's fault: what a client can do wrong is refused by the reader
with a status before it could reach a missing transition.

**Reading** (:class:`Read`, one request at a time, pipelined requests one
after another). llhttp (``httptools``) parses; its callbacks are the inputs::

    IDLE --begin--> HEAD --head_done--> BODY --complete--> IDLE
                                        BODY --chunk--> CHUNK --data--> BODY
                                                        CHUNK --field--> TRAILERS
                                        CHUNK, TRAILERS --complete--> IDLE
    (any) --refuse--> STOPPED       IDLE --upgrade--> STOPPED

``CHUNK`` is "a chunk-size line was read": its data (``data``) or, after the
last chunk (size 0), the trailer section (``field``) follows; httptools does
not report the size, so the next callback tells. Each state names the timer
that runs while in it and the byte budget its bytes count against
(:data:`READ_TIMER`, :data:`READ_BUDGET`): a head is bounded by
``max_head_bytes`` (431) and the head timeout; a body by ``max_body_bytes``
(413), the longest pause and the whole-body deadline; trailers by
``max_trailer_bytes`` (431) and the body's timers. Trailer fields are counted
and dropped, never merged into the head (RFC 9110 section 6.5.1).

**Connection** (:class:`Conn`)::

    OPEN --stop_reading--> CLOSING --half_close--> LINGER --lost--> CLOSED
    OPEN, CLOSING --half_close / close--> LINGER / CLOSED

``OPEN`` reads requests and answers them in order. ``CLOSING`` reads no more
(an error was queued, or the client upgraded) and closes once the queued
answers are written. ``LINGER``: we sent FIN and drop what the client still
sends for ``linger_s``, so that the kernel does not answer unread input with
an RST that could destroy our last response; then abort. ``CLOSED``: gone.

The states are ``StrEnum`` on purpose: a table lookup hashes two members per
llhttp callback, and ``str``'s cached hash costs a fraction of ``Enum``'s
Python-level one (the HTTP layer's hot path, bench/http_layer_bench.py).

Runtime module: standard library only.
"""

from __future__ import annotations

import enum

from zerostart.errors import ServeError


class StateBug(ServeError):
    """A transition that no table holds: a bug in the code driving the machine."""


class Read(enum.StrEnum):
    IDLE = "idle"  # between requests: nothing of the next one received
    HEAD = "head"  # request line and header fields
    BODY = "body"  # body bytes (or between chunks)
    CHUNK = "chunk"  # a chunk-size line was read: chunk data or the trailers follow
    TRAILERS = "trailers"  # the trailer section of a chunked body
    STOPPED = "stopped"  # refused (or upgraded): nothing more is parsed


class ReadInput(enum.StrEnum):
    BEGIN = "begin"  # on_message_begin
    HEAD_DONE = "head_done"  # on_headers_complete
    CHUNK = "chunk_header"  # on_chunk_header
    DATA = "data"  # on_body
    FIELD = "field"  # on_header after the head: a trailer field
    COMPLETE = "complete"  # on_message_complete
    REFUSE = "refuse"  # a limit or a rule was broken: answer with an error
    UPGRADE = "upgrade"  # llhttp stopped at "Connection: upgrade"


READ_TRANSITIONS: dict[tuple[Read, ReadInput], Read] = {
    (Read.IDLE, ReadInput.BEGIN): Read.HEAD,
    (Read.HEAD, ReadInput.HEAD_DONE): Read.BODY,
    (Read.BODY, ReadInput.DATA): Read.BODY,
    (Read.BODY, ReadInput.CHUNK): Read.CHUNK,
    (Read.BODY, ReadInput.COMPLETE): Read.IDLE,
    (Read.CHUNK, ReadInput.DATA): Read.BODY,
    (Read.CHUNK, ReadInput.FIELD): Read.TRAILERS,
    (Read.CHUNK, ReadInput.COMPLETE): Read.IDLE,
    (Read.TRAILERS, ReadInput.FIELD): Read.TRAILERS,
    (Read.TRAILERS, ReadInput.COMPLETE): Read.IDLE,
    (Read.IDLE, ReadInput.UPGRADE): Read.STOPPED,
    **{(state, ReadInput.REFUSE): Read.STOPPED for state in Read},
}

# The timer that runs in each state: the head's, the body's (the longest pause
# and the whole-body deadline), or none (the connection's keep-alive or
# first-request timer, http.py's).
READ_TIMER: dict[Read, str | None] = {
    Read.IDLE: None,
    Read.HEAD: "head",
    Read.BODY: "body",
    Read.CHUNK: "body",
    Read.TRAILERS: "body",
    Read.STOPPED: None,
}

# The budget that raw bytes received in each state count against (HttpLimits
# field, status above it). BODY counts decoded body bytes exactly in on_body.
READ_BUDGET: dict[Read, tuple[str, int] | None] = {
    Read.IDLE: None,
    Read.HEAD: ("max_head_bytes", 431),
    Read.BODY: None,
    Read.CHUNK: ("max_trailer_bytes", 431),
    Read.TRAILERS: ("max_trailer_bytes", 431),
    Read.STOPPED: None,
}


def next_read(state: Read, event: ReadInput) -> Read:
    """The reading side's next state; :class:`StateBug` if the table has no such move."""
    try:
        return READ_TRANSITIONS[state, event]
    except KeyError:
        raise StateBug(f"reading: no transition from {state.name} on {event.name}") from None


class Conn(enum.StrEnum):
    OPEN = "open"  # reading requests, answering in order
    CLOSING = "closing"  # reading stopped; close once the queued answers are written
    LINGER = "linger"  # FIN sent; input read and dropped until linger_s, then abort
    CLOSED = "closed"  # the transport is gone


class ConnInput(enum.StrEnum):
    STOP_READING = "stop_reading"  # an error answer was queued, or an upgrade
    HALF_CLOSE = "half_close"  # we wrote our last answer: FIN, then linger
    CLOSE = "close"  # close at once (the client half-closed first, or is idle)
    LOST = "lost"  # connection_lost


CONN_TRANSITIONS: dict[tuple[Conn, ConnInput], Conn] = {
    (Conn.OPEN, ConnInput.STOP_READING): Conn.CLOSING,
    (Conn.CLOSING, ConnInput.STOP_READING): Conn.CLOSING,
    (Conn.OPEN, ConnInput.HALF_CLOSE): Conn.LINGER,
    (Conn.CLOSING, ConnInput.HALF_CLOSE): Conn.LINGER,
    (Conn.OPEN, ConnInput.CLOSE): Conn.CLOSED,
    (Conn.CLOSING, ConnInput.CLOSE): Conn.CLOSED,
    (Conn.LINGER, ConnInput.CLOSE): Conn.CLOSED,
    **{(state, ConnInput.LOST): Conn.CLOSED for state in Conn},
}

READING_CONN = frozenset({Conn.OPEN})  # states in which request bytes are parsed


def next_conn(state: Conn, event: ConnInput) -> Conn:
    """The connection's next state; :class:`StateBug` if the table has no such move."""
    try:
        return CONN_TRANSITIONS[state, event]
    except KeyError:
        raise StateBug(f"connection: no transition from {state.name} on {event.name}") from None
