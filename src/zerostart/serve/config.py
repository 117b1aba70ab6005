"""Server settings: one immutable object, built once by the CLI or a test.

Every limit carries its unit in its name. Defaults follow Hugging Face
text-embeddings-inference where it has the same knob (max batch tokens, payload
limit, client batch size lives on the pipeline) and otherwise pick values that
keep one slow or hostile client from holding a worker hostage.

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from zerostart._records import Frozen
from zerostart.errors import ServeError
from zerostart.limits import Limits

# TEI's default payload limit is 2 MB; 1 MiB is plenty for 32 texts of 512 tokens
# (about 4 KiB each) and bounds what one request can make us buffer.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# h11's own default for an incomplete request head is 16 KiB; browsers send < 8 KiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# Trailer fields (after a chunked body's last chunk) are read and dropped, never
# merged into the head (RFC 9110 section 6.5.1); no client of ours sends any, so
# a few KiB is generous, and bounds what httptools buffers for one endless field.
DEFAULT_MAX_TRAILER_BYTES = 4 * 1024
# A body must arrive whole within this, however steadily it trickles (Apache
# mod_reqtimeout's body=20-40 seconds; 1 MiB in 30 s is 35 KB/s).
DEFAULT_BODY_DEADLINE_S = 30.0


# ServerConfig's settings that must be > 0
_POSITIVE = (
    "max_body_bytes",
    "max_header_bytes",
    "max_batch_size",
    "max_batch_tokens",
    "max_client_batch_size",
    "max_queue",
    "max_connections",
    "max_connections_per_client",
    "max_trailer_bytes",
    "header_timeout_s",
    "body_timeout_s",
    "body_deadline_s",
    "keepalive_timeout_s",
    "backlog",
)


class ServerConfig(Frozen):
    """Where to listen and how much one client or one batch may take.

    Immutable (a plain class, ``zerostart._records``: equal by value, ``api_key``
    not in its repr); :meth:`new` returns a checked copy. ServeError names a bad value.
    """

    __slots__ = (
        "api_key",
        "auto_truncate",
        "backlog",
        "body_deadline_s",
        "body_timeout_s",
        "drain_timeout_s",
        "header_timeout_s",
        "host",
        "keepalive_timeout_s",
        "max_batch_size",
        "max_batch_tokens",
        "max_body_bytes",
        "max_client_batch_size",
        "max_connections",
        "max_connections_per_client",
        "max_header_bytes",
        "max_queue",
        "max_trailer_bytes",
        "port",
    )
    _repr_hidden = frozenset({"api_key"})
    host: str
    port: int
    max_body_bytes: int
    max_header_bytes: int
    max_batch_size: int
    max_batch_tokens: int
    max_client_batch_size: int
    auto_truncate: bool
    max_queue: int
    max_connections: int
    max_connections_per_client: int
    max_trailer_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    body_deadline_s: float
    keepalive_timeout_s: float
    drain_timeout_s: float
    backlog: int
    api_key: str | None

    def __init__(
        self,
        host: str = "127.0.0.1",  # loopback unless told otherwise: a worker sits behind a gateway
        port: int = 8080,  # 0 picks a free port (tests); the ready line prints the real one
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_batch_size: int = 32,  # sequences per engine call (Limits.max_batch_sequences)
        max_batch_tokens: int = 16384,  # sum of sequence lengths per engine call (TEI's default)
        max_client_batch_size: int = 32,  # inputs in one request; more is 422 (TEI's default)
        # TEI's --auto-truncate (default true since TEI 1.9.0): a request that does not say
        # "truncate" has over-long inputs cut to the model's length instead of refused (422).
        auto_truncate: bool = True,
        max_queue: int = 256,  # queued jobs (requests) waiting for the engine before 429
        max_connections: int = 512,  # open connections; more are closed right after accept
        # open connections from one client address (a 503 above it): one slow or hostile
        # client cannot take every connection. Half of max_connections: the gateway's
        # connections to a replica come from one address and number at most its concurrency.
        max_connections_per_client: int = 256,
        max_trailer_bytes: int = DEFAULT_MAX_TRAILER_BYTES,
        header_timeout_s: float = 10.0,  # whole request head must arrive within this (slowloris)
        body_timeout_s: float = 10.0,  # longest wait for the next piece of a request body
        body_deadline_s: float = DEFAULT_BODY_DEADLINE_S,  # the whole body, from the head's end
        keepalive_timeout_s: float = 5.0,  # idle keep-alive connections are closed after this
        drain_timeout_s: float = 30.0,  # on SIGTERM: longest wait for in-flight work before exit
        backlog: int = 1024,  # listen(2) backlog
        # TEI's --api-key: every route but GET /health needs "Authorization: Bearer KEY".
        api_key: str | None = None,
    ) -> None:
        values = locals()
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ServeError(f"server setting {name} must be > 0, got {getattr(self, name)!r}")
        if self.drain_timeout_s < 0:
            raise ServeError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ServeError("api_key must not be empty", hint="unset API_KEY or give a key")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"port must be in 0..65535, got {self.port}")

    @property
    def limits(self) -> Limits:
        """Per-request and per-engine-call limits, for request parsing, the batcher and the
        engine alike (``zerostart.limits``): one object, so no part keeps its own default."""
        return Limits(
            max_client_batch_size=self.max_client_batch_size,
            max_batch_sequences=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )

    def new(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return self._replace(**changes)

    @property
    def http(self) -> HttpLimits:
        """The limits one HTTP connection enforces (``serve/_h1core.py``, ``serve/http.py``)."""
        return HttpLimits(
            max_head_bytes=self.max_header_bytes,
            max_body_bytes=self.max_body_bytes,
            max_trailer_bytes=self.max_trailer_bytes,
            head_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            body_deadline_s=self.body_deadline_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            max_connections=self.max_connections,
            max_connections_per_client=self.max_connections_per_client,
        )

    def public(self) -> dict[str, Any]:
        """The limits a client may want to know (shown in /info)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_client_batch_size": self.max_client_batch_size,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
            "max_connections_per_client": self.max_connections_per_client,
            "max_header_bytes": self.max_header_bytes,
            "max_trailer_bytes": self.max_trailer_bytes,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "body_deadline_s": self.body_deadline_s,
        }


class HttpLimits(NamedTuple):
    """What one HTTP/1.1 connection may cost us: bytes, seconds, connections.

    Built from a :class:`ServerConfig` (``config.http``, validated there), the
    worker's or the gateway's; read by the protocol core (``serve/_h1core.py``:
    bytes and deadlines, refusing with 431 / 413 / 408) and the driver
    (``serve/http.py``: connection counts, 503; keep-alive and linger). Sizes in
    bytes, times in seconds, all > 0. Immutable; :meth:`new` returns a checked
    copy. A NamedTuple rather than a frozen dataclass: the class is made at import,
    on the worker's cold-start path, for a sixth of the cost.
    """

    max_head_bytes: int = DEFAULT_MAX_HEADER_BYTES  # request line + header fields: 431 above
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # decoded body: 413 above
    max_trailer_bytes: int = DEFAULT_MAX_TRAILER_BYTES  # chunked trailer section: 431 above
    head_timeout_s: float = 10.0  # the whole head, from its first byte: 408
    body_timeout_s: float = 10.0  # the longest pause inside a body: 408
    body_deadline_s: float = DEFAULT_BODY_DEADLINE_S  # the whole body (and trailers): 408
    keepalive_timeout_s: float = 5.0  # idle between requests: closed silently
    max_connections: int = 512  # open connections: 503 and close above
    max_connections_per_client: int = 256  # open connections from one address: 503 above
    linger_s: float = 2.0  # input drained after we half-closed, so the kernel sends no RST
    max_pipelined: int = 16  # requests queued on one connection before reading pauses

    def new(self, **changes: Any) -> HttpLimits:
        """A copy with ``changes`` applied; :class:`ServeError` if a limit is not > 0."""
        limits = self._replace(**changes)
        for name, value in zip(limits._fields, limits, strict=True):
            if value <= 0:
                raise ServeError(f"HTTP limit {name} must be > 0, got {value!r}")
        return limits
