"""The gateway's Prometheus metrics (text exposition format 0.0.4).

Series (all prefixed ``zerostart_gateway_``):

=============================== ========= ==========================================
name                            type      labels
=============================== ========= ==========================================
requests_total                  counter   model, status
request_duration_seconds        histogram model (complete request to response ready)
queue_wait_seconds              histogram model (time waiting for a replica)
cold_starts_total               counter   model, path
start_failures_total            counter   model, path
start_fallbacks_total           counter   model, path (the path that was skipped)
start_phase_seconds             histogram model, phase
replica_deaths_total            counter   model
replicas_replaced_total         counter   model, reason (exited/stopped/unresponsive/connection)
retries_total                   counter   model
scale_events_total              counter   model, direction (up/down), reason
replicas                        gauge     model, state (starting/ready/draining)
queue_depth                     gauge     model
replica_seconds_total           counter   model, state (up/idle: ready, ready and unused)
slots                           gauge     device, state (ready/booting; from the warm pool)
slot_events_total               counter   device, event (the pool's counters)
=============================== ========= ==========================================

No client library (the worker's import time): the families (``Counter``,
``Histogram``, ``Gauges``) and the one text renderer are the worker's, in
``serve/metrics.py``; this module only names the gateway's series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from zerostart.serve.metrics import CONTENT_TYPE as CONTENT_TYPE
from zerostart.serve.metrics import LATENCY_BUCKETS_S as WORKER_LATENCY_BUCKETS_S
from zerostart.serve.metrics import Counter, Gauges, Histogram, Labels, Samples

if TYPE_CHECKING:
    from zerostart.platform._state import ModelRuntime

PREFIX = "zerostart_gateway"

# From a 1 ms warm answer to a 30 s queue timeout: the worker's buckets and 0.5 ms below them
# (a forwarded answer on a kept connection).
LATENCY_BUCKETS_S = (0.0005, *WORKER_LATENCY_BUCKETS_S)


def _counter(name: str, help_text: str, labels: tuple[str, ...]) -> Counter:
    return Counter(f"{PREFIX}_{name}", help_text, labels)


def _histogram(name: str, help_text: str, labels: tuple[str, ...]) -> Histogram:
    return Histogram(f"{PREFIX}_{name}", help_text, LATENCY_BUCKETS_S, labels)


class GatewayMetrics:
    def __init__(self) -> None:
        m = ("model",)
        self.requests = _counter(
            "requests_total", "Requests answered, by model and HTTP status.", ("model", "status")
        )
        self.duration = _histogram(
            "request_duration_seconds", "Complete request to response ready, queue included.", m
        )
        self.queue_wait = _histogram(
            "queue_wait_seconds", "Time a request waited for a free replica.", m
        )
        self.cold_starts = _counter(
            "cold_starts_total", "Replicas started, by start path.", ("model", "path")
        )
        self.start_failures = _counter(
            "start_failures_total", "Starts that failed, by the last path tried.", ("model", "path")
        )
        self.fallbacks = _counter(
            "start_fallbacks_total",
            "Start paths skipped or failed before the one that worked.",
            ("model", "path"),
        )
        self.phases = _histogram(
            "start_phase_seconds",
            "Duration of each phase of a replica's start.",
            ("model", "phase"),
        )
        self.deaths = _counter("replica_deaths_total", "Replicas that exited unasked.", m)
        self.replaced = _counter(
            "replicas_replaced_total",
            "Replicas taken out unasked (dead, stopped, not answering its health probe, or "
            "its connection failed), by reason.",
            ("model", "reason"),
        )
        self.retries = _counter(
            "retries_total", "Requests re-sent once after their replica failed.", m
        )
        self.scale_events = _counter(
            "scale_events_total",
            "Replica count changes decided by the autoscaler.",
            ("model", "direction", "reason"),
        )
        self._gauges: list[Gauges] = []

    def gauge(self, name: str, help_text: str, read: Samples, kind: str = "gauge") -> None:
        """A family read at scrape time: ``read()`` gives its (labels, value) samples."""
        self._gauges.append(Gauges(f"{PREFIX}_{name}", help_text, read, kind))

    def render(self) -> bytes:
        out: list[str] = []
        families: list[Counter | Histogram | Gauges] = [
            self.requests,
            self.duration,
            self.queue_wait,
            self.cold_starts,
            self.start_failures,
            self.fallbacks,
            self.phases,
            self.deaths,
            self.replaced,
            self.retries,
            self.scale_events,
            *self._gauges,
        ]
        for family in families:
            out += family.render()
        return ("\n".join(out) + "\n").encode()


def register_gauges(
    metrics: GatewayMetrics,
    models: Mapping[str, ModelRuntime],
    pool_status: Callable[[], dict[str, Any] | None],
) -> None:
    """The gateway's read-at-scrape series: replicas, queues, replica-seconds, warm slots."""

    def replicas() -> list[tuple[Labels, float]]:
        out: list[tuple[Labels, float]] = []
        for name, rt in models.items():
            draining = sum(1 for s in rt.seats if s.draining)
            for state, n in (
                ("starting", len(rt.starts)),
                ("ready", rt.ready),
                ("draining", draining),
            ):
                out.append(((("model", name), ("state", state)), float(n)))
        return out

    def queues() -> list[tuple[Labels, float]]:
        return [((("model", name),), float(len(rt.waiters))) for name, rt in models.items()]

    def seconds() -> list[tuple[Labels, float]]:
        now = time.monotonic()
        out: list[tuple[Labels, float]] = []
        for name, rt in models.items():
            up, idle = rt.replica_seconds(now)
            out += [
                ((("model", name), ("state", "up")), up),
                ((("model", name), ("state", "idle")), idle),
            ]
        return out

    def pool() -> dict[str, dict[str, int]]:
        status = pool_status() or {}
        p = status.get("pool")
        return p if isinstance(p, dict) else {}

    def slots() -> list[tuple[Labels, float]]:
        return [
            ((("device", device), ("state", state)), float(row.get(state, 0)))
            for device, row in pool().items()
            for state in ("ready", "booting")
        ]

    def slot_events() -> list[tuple[Labels, float]]:
        return [
            ((("device", device), ("event", event)), float(n))
            for device, row in pool().items()
            for event, n in row.items()
            if event not in ("size", "ready", "booting")
        ]

    metrics.gauge("replicas", "Replicas by model and state.", replicas)
    metrics.gauge("queue_depth", "Requests waiting for a replica.", queues)
    metrics.gauge("slots", "Warm-pool slots by device kind and state.", slots)
    metrics.gauge(
        "slot_events_total",
        "Warm-pool slot events by device kind (assigned, unhealthy, died, ...).",
        slot_events,
        kind="counter",
    )
    metrics.gauge(
        "replica_seconds_total",
        "Seconds replicas were ready (state=up), and ready with nothing in flight (state=idle).",
        seconds,
        kind="counter",
    )
