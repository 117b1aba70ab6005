"""What the gateway knows about each model: its replicas (seats), starts, queue and history.

Plain state with small helpers, no I/O; the gateway's core (``_core.py``)
changes it and ``/status`` and ``/metrics`` read it. Queued requests and
starts in progress are ids here; the driver (``gateway.py``) maps them to its
futures and tasks. Times are ``time.monotonic()`` seconds
unless a name says otherwise.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zerostart.paths import redact_paths
from zerostart.platform._types import Replica
from zerostart.platform.autoscaler import Scaler
from zerostart.platform.errors import StartError
from zerostart.platform.liveness import Health
from zerostart.platform_toml import ModelConfig

if TYPE_CHECKING:
    from zerostart.platform.upstream import UpstreamPool

BACKOFF_FIRST_S = 1.0  # after a failed start; doubles per failure
BACKOFF_MAX_S = 60.0


RECENT_STARTS = 8  # starts per model that /status keeps (the status page's waterfall)


@dataclass
class StartRecord:
    """One replica start, as /status and the cold-start header show it."""

    path: str
    total_ms: float
    phases_ms: dict[str, float]
    fallbacks: list[dict[str, str]]
    at: float  # wall clock (time.time())

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "total_ms": round(self.total_ms, 3),
            "phases_ms": {k: round(v, 3) for k, v in self.phases_ms.items()},
            "fallbacks": self.fallbacks,
            "at": self.at,
        }


class Seat:
    """A replica as the gateway sees it: the process, its load, its health.

    ``pool``: its connections, set by the driver when the seat is made (the
    start's readiness-check connection when there is one); the core never
    touches it.
    """

    __slots__ = (
        "draining",
        "health",
        "idle_s",
        "idle_since",
        "in_flight",
        "pool",
        "ready_at",
        "replica",
        "start",
    )

    def __init__(self, replica: Replica, start: StartRecord, now: float) -> None:
        self.replica = replica
        self.pool: UpstreamPool | None = None
        self.in_flight = 0
        self.draining = False
        self.ready_at = now
        self.start = start
        self.idle_s = 0.0  # seconds ready with nothing in flight, up to idle_since
        self.idle_since: float | None = now
        self.health = Health(since=now)  # liveness.py: process state and probes

    def busy(self, now: float) -> None:
        if self.idle_since is not None:
            self.idle_s += now - self.idle_since
            self.idle_since = None

    def idle(self, now: float) -> None:
        if self.idle_since is None:
            self.idle_since = now

    def idle_total(self, now: float) -> float:
        return self.idle_s + (0.0 if self.idle_since is None else now - self.idle_since)


class ModelRuntime:
    """A model's replicas, starts in progress, queue and scaler."""

    def __init__(self, config: ModelConfig, scaler: Scaler) -> None:
        self.config = config
        self.scaler = scaler
        self.seats: list[Seat] = []
        self.starts: set[int] = set()  # ids of starts in progress
        self.waiters: collections.deque[int] = collections.deque()  # ids of queued requests
        self.in_flight = 0
        self.desired = config.min_replicas
        self.panicking = False
        self.last_start: StartRecord | None = None
        self.recent_starts: collections.deque[StartRecord] = collections.deque(maxlen=RECENT_STARTS)
        self.failure: StartError | None = None
        self.failure_until = 0.0
        self.backoff_s = BACKOFF_FIRST_S
        self.retired_up_s = 0.0  # replica-seconds of replicas no longer serving
        self.retired_idle_s = 0.0
        # replicas taken out unasked, by why: exited, stopped, unresponsive, connection
        self.replaced: collections.Counter[str] = collections.Counter()

    @property
    def ready(self) -> int:
        return sum(1 for s in self.seats if not s.draining)

    @property
    def concurrency(self) -> int:
        return self.in_flight + len(self.waiters)

    @property
    def state(self) -> str:
        if self.seats:
            return "ready"
        if self.starts:
            return "starting"
        return "failed" if self.failure is not None else "zero"

    def retire(self, seat: Seat, now: float) -> None:
        """``seat`` takes no more work: bank its replica-seconds."""
        self.retired_up_s += now - seat.ready_at
        self.retired_idle_s += seat.idle_total(now)

    def replica_seconds(self, now: float) -> tuple[float, float]:
        """(up, idle): seconds replicas were ready, and ready with nothing in flight."""
        up = self.retired_up_s + sum(now - s.ready_at for s in self.seats)
        idle = self.retired_idle_s + sum(s.idle_total(now) for s in self.seats)
        return up, idle

    def status(self, now: float, *, cold_starts: dict[str, int], auth: bool) -> dict[str, Any]:
        """This model's entry in ``GET /status``."""
        c = self.config
        idle = self.scaler.idle_s(now)
        up, idle_replica_s = self.replica_seconds(now)
        return {
            "state": self.state,
            "source": {"kind": c.source_kind, "value": c.source},
            "device": c.device,
            "replicas": [
                {
                    "pid": s.replica.pid,
                    "port": s.replica.port,
                    "state": "draining" if s.draining else "ready",
                    "in_flight": s.in_flight,
                    "start_path": s.replica.start_path,
                    "up_s": round(now - s.ready_at, 3),
                }
                for s in self.seats
            ],
            "starting": len(self.starts),
            "queued": len(self.waiters),
            "in_flight": self.in_flight,
            "desired": self.desired,
            "panicking": self.panicking,
            "idle_s": None if idle is None else round(idle, 3),
            "cold_starts": cold_starts,
            "last_start": None if self.last_start is None else self.last_start.as_dict(),
            "recent_starts": [s.as_dict() for s in self.recent_starts],  # oldest first
            "replica_seconds": {"up": round(up, 3), "idle": round(idle_replica_s, 3)},
            "last_error": None if self.failure is None else redact_paths(str(self.failure)),
            "replaced": dict(self.replaced),
            "limits": {
                "min_replicas": c.min_replicas,
                "max_replicas": c.max_replicas,
                "concurrency": c.concurrency,
                "idle_timeout_s": c.idle_timeout_s,
                "max_queue": c.max_queue,
                "queue_timeout_s": c.queue_timeout_s,
            },
            "auth": auth,
        }
