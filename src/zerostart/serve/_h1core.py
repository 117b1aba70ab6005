"""The HTTP/1.1 request reader, free of I/O: bytes and a clock in, events out.

:class:`RequestReader` feeds bytes to llhttp (``httptools``) and turns its
callbacks into a short list of events per call: a complete :class:`Request`,
:class:`ExpectContinue` (the client waits for ``100 Continue``), a
:class:`Refusal` (answer it, then close: the reader stops), or
:class:`Upgraded`. Its state moves only along ``_h1state.py``'s table. It owns
every rule about what a request may be; the driver (``http.py``) owns the
socket, the answers and the timers, asking :meth:`RequestReader.deadline` when
the current state times out and :meth:`RequestReader.expire` when it did.

What is refused, and why (each a test in tests/unit/test_h1_core.py):

* 431: a head over ``max_head_bytes``, or trailers over ``max_trailer_bytes``
  (counted exactly per complete field, and raw for every read that completed
  nothing, since httptools buffers a field until it ends);
* 413: a body over ``max_body_bytes``, from Content-Length before it is sent;
* 408: a head not whole within ``head_timeout_s``; a body that pauses longer
  than ``body_timeout_s`` or is not whole ``body_deadline_s`` after its head;
* 400 (RFC 9112 section 3.2, RFC 9110 section 5.3): an HTTP/1.1 request without
  ``Host``; more than one ``Host``, ``Authorization``, ``Content-Type`` or
  ``Content-Length`` field; a ``Host`` that is not a host; a target that is not a
  path or an ``http(s)://`` URL; malformed HTTP (llhttp's own message).

Trailer fields are counted against their limit and dropped: they never reach
``Request.headers`` (RFC 9110 section 6.5.1), so a key or a host sent after
the body cannot replace the head's. Other repeated fields are combined with
``", "`` (RFC 9110 section 5.3). The target is made canonical once, here
(percent-encoded unreserved characters decoded, dot segments removed, RFC 3986
sections 6.2.2.2 and 5.2.4), so that the path a key is checked against is the
path that is routed and forwarded. An absolute-form target's authority
replaces ``Host`` (RFC 9112 section 3.2.2).

Runtime module: standard library and httptools.
"""

from __future__ import annotations

import re

import httptools

from zerostart._records import Record
from zerostart.serve._h1state import READ_BUDGET, READ_TIMER, Read, ReadInput, next_read
from zerostart.serve.config import HttpLimits

# More than one of these is ambiguous (which key? which host?): 400, not "last wins".
SINGLETON_FIELDS = frozenset({"host", "authorization", "content-type", "content-length"})
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_REG_NAME = _UNRESERVED | frozenset("!$&'()*+,;=%")  # RFC 3986 section 3.2.2
_IP_LITERAL = _HEX | frozenset(":.")
# absolute-form (RFC 9112 section 3.2.2): compiled on first use, off the cold-start path
_ABSOLUTE = r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)\Z"


def valid_host(host: str) -> bool:
    """RFC 3986 section 3.2.2 ``host [":" port]``: a reg-name or an ``[IP-literal]``."""
    if host[:1] == "[":
        end = host.find("]")
        if end < 0 or not set(host[1:end]) <= _IP_LITERAL:
            return False
        rest = host[end + 1 :]
    else:
        name = host.partition(":")[0]
        if not set(name) <= _REG_NAME:
            return False
        rest = host[len(name) :]
    return not rest or (rest[0] == ":" and set(rest[1:]) <= _DIGITS)


class Request(Record):
    """One complete request, as the core hands it to the server (a plain class:
    ``zerostart._records``)."""

    __slots__ = (
        "body",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "received_at",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
        http_version: str,
        received_at: float,
    ) -> None:
        self.method = method
        self.target = target  # canonical: path (dot segments removed) plus optional ?query
        self.headers = headers  # lower-case names; repeated fields joined with ", "; no trailers
        self.body = body
        self.keep_alive = keep_alive
        self.http_version = http_version
        self.received_at = received_at  # the reader's time.perf_counter() when it was complete

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class Refusal:
    """Answer ``status`` with TEI's error body, then close; ``bug`` when it is our fault."""

    __slots__ = ("bug", "error_type", "message", "status")

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "Validation",
        bug: BaseException | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.error_type = error_type
        self.bug = bug

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.message!r})"


class ExpectContinue:
    """The head asked for ``100 Continue`` and passed every check."""

    __slots__ = ()


class Upgraded:
    """llhttp stopped at ``Connection: upgrade``: answer what came, then close."""

    __slots__ = ()


# (Plain classes, not dataclasses: each dataclass costs an exec() at import, on the
# worker's cold-start path.)
Event = Request | Refusal | ExpectContinue | Upgraded


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing with a refusal."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def canonical_target(target: str) -> tuple[str, str | None]:
    """``(path?query, authority or None)`` for a request target; ValueError if it is none.

    Origin-form (``/path?q``) and absolute-form (``http://host/path?q``, whose
    authority the caller uses as the host, RFC 9112 section 3.2.2). The path:
    percent-encoded unreserved characters decoded, other escapes upper-cased,
    dot segments removed (RFC 3986 sections 6.2.2 and 5.2.4); the query and
    a fragment: kept and dropped as sent.
    """
    authority = None
    if not target.startswith("/"):
        m = re.match(_ABSOLUTE, target, re.DOTALL)
        if m is None or m.group(1).lower() not in ("http", "https") or not m.group(2):
            raise ValueError(f"request target {target[:80]!r} is not a path")
        authority, target = m.group(2), m.group(3)
        if "@" in authority:
            raise ValueError("a request target must not carry user information")
        if not target.startswith("/"):
            target = "/" + target
    path, sep, query = target.partition("?")
    if "#" in path:
        path, sep, query = path.partition("#")[0], "", ""
    else:
        query = query.partition("#")[0]
    if "%" in path:
        path = _normalize_escapes(path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path + sep + query, authority


def _normalize_escapes(path: str) -> str:
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or not set(pair) <= _HEX:
            raise ValueError(f"bad percent-escape in the path {path[:80]!r}")
        char = chr(int(pair, 16))
        out.append(char if char in _UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/./b/../c`` -> ``/a/c``."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


class RequestReader:
    """Reads requests off one connection's bytes; see the module docstring.

    ``receive(data, now)`` returns the events that ``data`` completed, in order;
    ``now`` is the caller's clock (seconds, ``time.perf_counter()``), used for the
    deadlines and ``Request.received_at``. After a :class:`Refusal` or
    :class:`Upgraded` the reader is ``STOPPED`` and ignores further bytes.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.state = Read.IDLE
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._now = 0.0
        self._calls = 0  # callbacks that completed something during the current feed
        self._counted = 0  # head or trailer bytes: complete fields, counted exactly
        self._raw = 0  # bytes of reads that completed nothing, in a budgeted state
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._head_start = 0.0
        self._body_start = 0.0
        self._progress = 0.0  # when the body last moved

    @property
    def receiving_body(self) -> bool:
        """The head was read and the body (or its trailers) is still arriving."""
        return self.state in (Read.BODY, Read.CHUNK, Read.TRAILERS)

    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.state is Read.STOPPED:
            return []
        self._now = now
        events: list[Event] = []
        self._events = events
        self._calls = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.state is Read.IDLE:
                self._move(ReadInput.UPGRADE)
                events.append(Upgraded())
            else:
                self._stop(Refusal(400, "cannot upgrade in the middle of a request"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._stop(cause.refusal)
            elif isinstance(cause, Exception):  # a bug in a callback: the driver logs it
                self._stop(Refusal(500, "internal error reading the request", "Backend", cause))
            else:
                self._stop(Refusal(400, f"malformed HTTP request: {exc}"))
        else:
            budget = READ_BUDGET[self.state]
            if budget is not None and not self._calls:
                # Nothing completed: httptools holds these bytes in a field it is still
                # reading (or they are framing), so they count raw against the budget.
                self._raw += len(data)
                limit = getattr(self.limits, budget[0])
                if self._raw > limit:
                    self._stop(Refusal(budget[1], self._too_large(budget[0], limit)))
        return events

    def deadline(self) -> tuple[float, str] | None:
        """``(when, what)``: the time by which the current state must move on, or None."""
        timer = READ_TIMER[self.state]
        if timer == "head":
            return self._head_start + self.limits.head_timeout_s, "head"
        if timer == "body":
            pause = self._progress + self.limits.body_timeout_s
            whole = self._body_start + self.limits.body_deadline_s
            if pause < whole:
                return pause, f"body (no byte for {self.limits.body_timeout_s:g} s)"
            return whole, f"body (not whole {self.limits.body_deadline_s:g} s after the head)"
        return None

    def expire(self, now: float) -> Refusal | None:
        """The 408 to answer if the current deadline has passed at ``now`` (the reader stops)."""
        due = self.deadline()
        if due is None or now < due[0]:
            return None
        refusal = Refusal(408, f"request {due[1]} not received in time", "Timeout")
        self._stop(refusal)
        return refusal

    # -- llhttp callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._move(ReadInput.BEGIN)
        self._calls += 1
        self._counted = self._raw = 0
        self._url = bytearray()
        self._headers = {}
        self._body = bytearray()
        self._head_start = self._now

    def on_url(self, url: bytes) -> None:
        self._calls += 1
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._calls += 1
        if self.state is not Read.HEAD:  # a trailer field: counted, then dropped
            self._move(ReadInput.FIELD)
            self._count(len(name) + len(value) + 4)
            return
        self._count(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        if old is None:
            self._headers[key] = text
        elif key in SINGLETON_FIELDS:
            raise _Refused(Refusal(400, f"more than one {key} header field"))
        else:
            self._headers[key] = f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._calls += 1
        headers = self._headers
        host = headers.get("host")
        if host is None and self._parser.get_http_version() == "1.1":
            raise _Refused(Refusal(400, "an HTTP/1.1 request needs a Host header field"))
        url = self._url
        if url[:1] != b"/" or b"%" in url or b"/." in url or b"#" in url:  # else: canonical
            try:
                target, authority = canonical_target(url.decode("latin-1"))
            except ValueError as exc:
                raise _Refused(Refusal(400, str(exc))) from None
            if authority is not None:
                host = headers["host"] = authority
            self._url = bytearray(target.encode("latin-1"))
        if host and not valid_host(host):
            raise _Refused(Refusal(400, f"Host {host[:80]!r} is not a host name"))
        length = headers.get("content-length")
        if length is not None and int(length) > self.limits.max_body_bytes:
            # llhttp has already checked it is a number; refuse before reading the body.
            raise _Refused(Refusal(413, self._body_too_large()))
        self._move(ReadInput.HEAD_DONE)
        self._counted = self._raw = 0  # trailers count from zero
        self._body_start = self._progress = self._now
        if headers.get("expect", "").lower() == "100-continue":
            self._events.append(ExpectContinue())

    def on_chunk_header(self) -> None:
        self._calls += 1
        self._move(ReadInput.CHUNK)
        self._progress = self._now

    def on_body(self, body: bytes) -> None:
        self._calls += 1
        self._move(ReadInput.DATA)
        if len(self._body) + len(body) > self.limits.max_body_bytes:
            raise _Refused(Refusal(413, self._body_too_large()))
        self._body += body
        self._progress = self._now

    def on_message_complete(self) -> None:
        self._calls += 1
        self._move(ReadInput.COMPLETE)
        parser = self._parser
        self._events.append(
            Request(
                method=parser.get_method().decode("ascii", "replace"),
                target=self._url.decode("latin-1"),
                headers=self._headers,
                body=bytes(self._body),
                keep_alive=parser.should_keep_alive(),
                http_version=parser.get_http_version(),
                received_at=self._now,
            )
        )
        self._body = bytearray()

    # -- helpers -------------------------------------------------------------------
    def _move(self, event: ReadInput) -> None:
        self.state = next_read(self.state, event)

    def _stop(self, refusal: Refusal) -> None:
        self._move(ReadInput.REFUSE)
        self._events.append(refusal)

    def _count(self, n: int) -> None:
        self._counted += n
        if self._counted > (head := self.limits.max_head_bytes) and self.state is Read.HEAD:
            raise _Refused(Refusal(431, self._too_large("max_head_bytes", head)))
        if (
            self._counted > (trailer := self.limits.max_trailer_bytes)
            and self.state is not Read.HEAD
        ):
            raise _Refused(Refusal(431, self._too_large("max_trailer_bytes", trailer)))

    @staticmethod
    def _too_large(field: str, limit: int) -> str:
        what = "request head" if field == "max_head_bytes" else "trailer section"
        return f"{what} exceeds {limit} bytes"

    def _body_too_large(self) -> str:
        return f"request body exceeds the limit of {self.limits.max_body_bytes} bytes"
