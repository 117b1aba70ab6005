"""Server settings: one immutable object, built once by the CLI or a test.

Every limit carries its unit in its name. Defaults follow Hugging Face
text-embeddings-inference where it has the same knob (max batch tokens, payload
limit, client batch size lives on the pipeline) and otherwise pick values that
keep one slow or hostile client from holding a worker hostage.

Runtime module: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from zerostart.errors import ServeError
from zerostart.limits import Limits

# TEI's default payload limit is 2 MB; 1 MiB is plenty for 32 texts of 512 tokens
# (about 4 KiB each) and bounds what one request can make us buffer.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# h11's own default for an incomplete request head is 16 KiB; browsers send < 8 KiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how much one client or one batch may take."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a worker sits behind a gateway
    port: int = 8080  # 0 picks a free port (tests); the ready line prints the real one
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_batch_size: int = 32  # sequences per engine call (Limits.max_batch_sequences)
    max_batch_tokens: int = 16384  # sum of sequence lengths per engine call (TEI's default)
    max_client_batch_size: int = 32  # inputs in one request; more is 422 (TEI: default and status)
    max_queue: int = 256  # queued jobs (requests) waiting for the engine before 429
    max_connections: int = 512  # open connections; more are closed right after accept
    header_timeout_s: float = 10.0  # whole request head must arrive within this (slowloris)
    body_timeout_s: float = 10.0  # longest wait for the next piece of a request body
    keepalive_timeout_s: float = 5.0  # idle keep-alive connections are closed after this
    drain_timeout_s: float = 30.0  # on SIGTERM: longest wait for in-flight work before exit
    backlog: int = 1024  # listen(2) backlog
    # TEI's --api-key: every route but GET /health needs "Authorization: Bearer KEY".
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        positive = (
            "max_body_bytes",
            "max_header_bytes",
            "max_batch_size",
            "max_batch_tokens",
            "max_client_batch_size",
            "max_queue",
            "max_connections",
            "header_timeout_s",
            "body_timeout_s",
            "keepalive_timeout_s",
            "backlog",
        )
        for name in positive:
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
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The limits a client may want to know (shown in /info)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_client_batch_size": self.max_client_batch_size,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
        }
