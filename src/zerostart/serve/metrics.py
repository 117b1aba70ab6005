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


# The exposition format's pieces, shared with the gateway's metrics (platform/metrics.py).
def label_set(pairs: Iterable[tuple[str, str]]) -> str:
    """``{k="v",...}`` with values escaped as the text format requires; "" for no labels."""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(x: float) -> str:
    """A sample value: floats with repr (round-trips), integers as integers."""
    return repr(float(x)) if isinstance(x, float) else str(x)


class Histogram:
    """Cumulative buckets, per label set."""

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], label: str = ""
    ) -> None:
        self.name, self.help, self.buckets, self.label = name, help_text, buckets, label
        self._series: dict[str, list[float]] = {}  # label value -> [count per bucket..., +Inf, sum]
        self._lock = threading.Lock()

    def observe(self, value: float, label_value: str = "") -> None:
        with self._lock:
            row = self._series.setdefault(label_value, [0] * (len(self.buckets) + 1) + [0.0])
            row[bisect.bisect_left(self.buckets, value)] += 1
            row[-1] += value

    def count(self, label_value: str = "") -> int:
        with self._lock:
            row = self._series.get(label_value)
            return int(sum(row[:-1])) if row else 0

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        for value, row in sorted(series.items()):
            base = [(self.label, value)] if self.label else []
            out += histogram_series(self.name, self.buckets, base, row)
        return out


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
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}  # (route, status) -> count
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a complete request to its response being ready.",
            LATENCY_BUCKETS_S,
            label="route",
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
        self._gauges: dict[str, tuple[str, Callable[[], float], str]] = {}
        self._phases: dict[str, float] = {}

    def record_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, str(status))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
        self.latency.observe(seconds, route)

    def requests(self, route: str, status: int) -> int:
        with self._lock:
            return self._requests.get((route, str(status)), 0)

    def record_batch(self, sequences: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(sequences)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float], *, kind: str = "gauge"
    ) -> None:
        """A value read at scrape time; ``kind="counter"`` for one that only grows."""
        self._gauges[f"{PREFIX}_{name}"] = (help_text, read, kind)

    def set_phases(self, phases: dict[str, float]) -> None:
        self._phases = dict(phases)

    def render(self) -> bytes:
        name = f"{PREFIX}_requests_total"
        out = [
            f"# HELP {name} Requests answered, by route and HTTP status.",
            f"# TYPE {name} counter",
        ]
        with self._lock:
            counts = sorted(self._requests.items())
        out += [f"{name}{label_set([('route', r), ('status', s)])} {n}" for (r, s), n in counts]
        for hist in (self.latency, self.batch_size, self.batch_tokens, self.batch_seconds):
            out += hist.render()
        for gname, (help_text, read, kind) in sorted(self._gauges.items()):
            out += [
                f"# HELP {gname} {help_text}",
                f"# TYPE {gname} {kind}",
                f"{gname} {number(read())}",
            ]
        name = f"{PREFIX}_startup_phase_seconds"
        out += [
            f"# HELP {name} Duration of each start-up phase of this worker.",
            f"# TYPE {name} gauge",
        ]
        out += [
            f"{name}{label_set([('phase', p)])} {number(float(s))}" for p, s in self._phases.items()
        ]
        return ("\n".join(out) + "\n").encode()
