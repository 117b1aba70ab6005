"""Prometheus metrics in text exposition format 0.0.4, without a client library.

A client library would cost import time on the cold-start path for what is a
few counters and histograms. Names follow Prometheus conventions (base units,
``_total`` for counters, ``_seconds`` for durations).

Runtime module: standard library only. Thread-safe: the batcher thread records
batches while the event loop records requests and renders scrapes.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "zerostart"

# Request latency: from 1 ms (a cached /health) to 30 s (a queue behind a slow GPU).
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKENS_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


# The exposition format's pieces: the one renderer of this project's metrics. The worker's
# Metrics below and the gateway's (platform/metrics.py) are both made of these families.
Labels = tuple[tuple[str, str], ...]
Samples = Callable[[], Iterable[tuple[Labels, float]]]  # read at scrape time


def label_set(pairs: Iterable[tuple[str, str]]) -> str:
    """``{k="v",...}`` with values escaped as the text format requires; "" for no labels."""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(x: float) -> str:
    """A sample value: floats with repr (round-trips), integers as integers."""
    return repr(float(x)) if isinstance(x, float) else str(x)


def family(
    name: str, help_text: str, kind: str, samples: Iterable[tuple[Labels, float]]
) -> list[str]:
    """One metric family: its ``# HELP`` and ``# TYPE`` lines, then a line per sample, in order."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out += [f"{name}{label_set(labels)} {number(v)}" for labels, v in samples]
    return out


class Counter:
    """A counter per label set: ``labels`` names them, ``inc(*values)`` gives their values."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *values: str, by: float = 1) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0) + by

    def get(self, *values: str) -> float:
        with self._lock:
            return self._values.get(values, 0)

    def by_first_label(self) -> dict[str, dict[str, int]]:
        """For two labels: {first: {second: count}} (cold starts by model, then path)."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for key, n in self._values.items():
                out.setdefault(key[0], {})[key[-1]] = int(n)
        return out

    def render(self) -> list[str]:
        with self._lock:
            values = sorted(self._values.items())
        samples = ((tuple(zip(self.labels, key, strict=True)), n) for key, n in values)
        return family(self.name, self.help, "counter", samples)


class Histogram:
    """Cumulative buckets per label set: ``labels`` names them, ``observe(x, *values)``."""

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> None:
        self.name, self.help, self.buckets, self.labels = name, help_text, buckets, labels
        self._series: dict[tuple[str, ...], list[float]] = {}  # per bucket, +Inf, then the sum
        self._lock = threading.Lock()

    def observe(self, value: float, *values: str) -> None:
        with self._lock:
            row = self._series.setdefault(values, [0] * (len(self.buckets) + 1) + [0.0])
            row[bisect.bisect_left(self.buckets, value)] += 1
            row[-1] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        for key, row in sorted(series.items()):
            labels = list(zip(self.labels, key, strict=True))
            out += histogram_series(self.name, self.buckets, labels, row)
        return out


class Gauges:
    """Labelled samples read at scrape time (a gauge, or a counter kept elsewhere), sorted."""

    def __init__(self, name: str, help_text: str, read: Samples, kind: str = "gauge") -> None:
        self.name, self.help, self.read, self.kind = name, help_text, read, kind

    def render(self) -> list[str]:
        return family(self.name, self.help, self.kind, sorted(self.read()))


def histogram_series(
    name: str, buckets: tuple[float, ...], labels: list[tuple[str, str]], row: list[float]
) -> list[str]:
    """One label set's ``_bucket`` (cumulative), ``_sum`` and ``_count`` lines.

    ``row``: the count per bucket, then the +Inf bucket's, then the sum of the values.
    """
    out = []
    cumulative = 0
    for bound, n in zip((*buckets, float("inf")), row[:-1], strict=True):
        cumulative += int(n)
        le = "+Inf" if bound == float("inf") else number(bound)
        out.append(f"{name}_bucket{label_set([*labels, ('le', le)])} {cumulative}")
    out.append(f"{name}_sum{label_set(labels)} {number(row[-1])}")
    out.append(f"{name}_count{label_set(labels)} {cumulative}")
    return out


class Metrics:
    """Everything /metrics shows; gauges that are cheap to read are read at scrape time."""

    def __init__(self) -> None:
        self.requests_total = Counter(
            f"{PREFIX}_requests_total",
            "Requests answered, by route and HTTP status.",
            ("route", "status"),
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a complete request to its response being ready.",
            LATENCY_BUCKETS_S,
            ("route",),
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Sequences per engine call.", BATCH_SIZE_BUCKETS
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens",
            "Tokens (sum of sequence lengths) per engine call.",
            BATCH_TOKENS_BUCKETS,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_duration_seconds", "Engine time per batch.", LATENCY_BUCKETS_S
        )
        self._gauges: dict[str, Gauges] = {}
        self._phases: dict[str, float] = {}

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests_total.inc(route, str(status))
        self.latency.observe(seconds, route)

    def requests(self, route: str, status: int) -> int:
        return int(self.requests_total.get(route, str(status)))

    def record_batch(self, sequences: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(sequences)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float], *, kind: str = "gauge"
    ) -> None:
        """A value read at scrape time; ``kind="counter"`` for one that only grows."""
        full = f"{PREFIX}_{name}"
        self._gauges[full] = Gauges(full, help_text, lambda: [((), read())], kind)

    def set_phases(self, phases: dict[str, float]) -> None:
        self._phases = dict(phases)

    def render(self) -> bytes:
        out = self.requests_total.render()
        for hist in (self.latency, self.batch_size, self.batch_tokens, self.batch_seconds):
            out += hist.render()
        for _, gauges in sorted(self._gauges.items()):
            out += gauges.render()
        phases = [((("phase", p),), float(s)) for p, s in self._phases.items()]  # start-up order
        out += family(
            f"{PREFIX}_startup_phase_seconds",
            "Duration of each start-up phase of this worker.",
            "gauge",
            phases,
        )
        return ("\n".join(out) + "\n").encode()
