"""Keep-alive policies: when each app's replica is held, and which requests start it cold.

An app's keep-alive decisions depend on its own invocations only, never on the fleet, so
they are computed here, per app, vectorised over its active minutes; the fleet simulator
then plays the resulting slot requests against the machine pools.

Within a minute of the trace the invocations are placed uniformly: only the first and the
last matter (a replica kept alive for a minute or more sees no gap inside a minute), so they
are drawn as the minimum and maximum of ``c`` uniforms.

Policies (Shahrad et al., ATC'20, section 4):

- ``fixed``: keep the replica ``keepalive_s`` after its last request (AWS Lambda: 10 min).
- ``hybrid``: the paper's hybrid histogram policy. Per app, a histogram of idle times (1-min
  bins, 4-hour range). After each invocation the replica is unloaded and re-loaded after the
  *pre-warm window* (the 5th percentile, 10 % earlier), then kept for the *keep-alive
  window* (to the 99th percentile, 10 % later); with a pre-warm window of 0 it simply stays.
  While the histogram is not representative (fewer than ``min_samples`` idle times, or the
  CV of its bin counts below 2) the standard keep-alive applies: no pre-warm, the histogram's
  range (4 h). When most idle times fall outside the range the paper forecasts the next one
  with ARIMA; here with the random-walk forecast (the last idle time, ARIMA(0,1,0)), pre-warm
  at 85 % of it and keep-alive for 30 % (the paper's 15 % margin either side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from zerostart.fleet.trace import Trace

COLD, PREWARM = 0, 1


@dataclass(frozen=True)
class KeepAlive:
    kind: str = "fixed"  # fixed | hybrid
    keepalive_s: float = 600.0
    range_min: int = 240  # hybrid: histogram range, 1-minute bins (paper: 4 hours)
    head: float = 0.05
    tail: float = 0.99
    margin: float = 0.10
    cv_threshold: float = 2.0
    min_samples: int = 10
    oob_share: float = 0.5
    arima_margin: float = 0.15

    @property
    def label(self) -> str:
        return "hybrid" if self.kind == "hybrid" else f"keepalive:{self.keepalive_s:g}s"


@dataclass
class SlotRequests:
    """Every replica start, sorted by time; ``end`` is when its slot is given back."""

    time: npt.NDArray[np.float64]
    end: npt.NDArray[np.float64]
    app: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int8]
    minute_count: npt.NDArray[np.int64]  # invocations in the cold start's minute
    span_s: npt.NDArray[np.float64]  # cold start -> end of its minute
    next_rate: npt.NDArray[np.float64]  # invocations / s in the following minute (0 if none)
    invocations: npt.NDArray[np.int64]  # per app
    scaleout: npt.NDArray[np.int64]  # (apps with scale-out..., minutes): extra replicas held
    scaleout_app: npt.NDArray[np.int64]
    busy_s: npt.NDArray[np.float64]  # per minute: slot-seconds with a request in flight


def _first_last(
    minutes: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    base = minutes * 60.0
    first = base + 60.0 * (1.0 - rng.random(minutes.size) ** (1.0 / counts))
    rest = np.maximum(counts - 1, 1)
    last = np.where(
        counts > 1, first + (base + 60.0 - first) * rng.random(minutes.size) ** (1.0 / rest), first
    )
    return first, last


def _hybrid_windows(
    gaps: npt.NDArray[np.float64], p: KeepAlive
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Pre-warm and keep-alive (seconds) after each of ``gaps.size + 1`` invocations."""
    n = gaps.size + 1
    it_min = np.floor(gaps / 60.0).astype(np.int64)
    oob = it_min >= p.range_min
    in_range = np.where(oob, -1, it_min)
    bins, inv = np.unique(in_range, return_inverse=True)
    onehot = np.zeros((n, bins.size), dtype=np.int64)
    onehot[np.arange(1, n), inv] = 1
    hist = np.cumsum(onehot, axis=0)  # row j: idle times 0..j-1
    valid = bins >= 0
    hist_in, bins_in = hist[:, valid], bins[valid]
    total = hist_in.sum(axis=1)
    n_oob = hist[:, ~valid].sum(axis=1) if (~valid).any() else np.zeros(n, dtype=np.int64)
    prewarm = np.zeros(n)
    keep = np.full(n, p.range_min * 60.0)  # the standard keep-alive
    if bins_in.size:
        cum = np.cumsum(hist_in, axis=1)
        safe = np.maximum(total, 1)[:, None]
        head = bins_in[np.argmax(cum >= p.head * safe, axis=1)]
        tail = bins_in[np.argmax(cum >= p.tail * safe, axis=1)]
        mean = total / p.range_min
        sq = (hist_in.astype(np.float64) ** 2).sum(axis=1) / p.range_min
        cv = np.sqrt(np.maximum(sq - mean**2, 0.0)) / np.maximum(mean, 1e-12)
        good = (total >= p.min_samples) & (cv >= p.cv_threshold)
        pw = head * 60.0 * (1 - p.margin)
        end = (tail + 1) * 60.0 * (1 + p.margin)
        prewarm = np.where(good, pw, prewarm)
        keep = np.where(good, end - pw, keep)
    last_gap = np.concatenate([[0.0], gaps])
    arima = (n_oob > 0) & (n_oob > p.oob_share * (n_oob + total)) & (last_gap > 0)
    prewarm = np.where(arima, last_gap * (1 - p.arima_margin), prewarm)
    keep = np.where(arima, last_gap * 2 * p.arima_margin, keep)
    return prewarm, keep


def _app_holds(
    minutes: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    policy: KeepAlive,
    exec_s: float,
    horizon_s: float,
    rng: np.random.Generator,
) -> tuple[list[npt.NDArray[Any]], ...]:
    first, last = _first_last(minutes, counts, rng)
    last = last + exec_s
    gaps = np.maximum(first[1:] - last[:-1], 0.0)
    if policy.kind == "hybrid":
        pw, ka = _hybrid_windows(gaps, policy)
    else:
        pw, ka = np.zeros(minutes.size), np.full(minutes.size, policy.keepalive_s)
    pg, kg = pw[:-1], ka[:-1]
    cont = (pg == 0) & (gaps <= kg)
    brk = np.nonzero(~cont)[0]
    hit = (pg[brk] > 0) & (gaps[brk] >= pg[brk]) & (gaps[brk] <= pg[brk] + kg[brk])
    wasted = (pg[brk] > 0) & (gaps[brk] > pg[brk] + kg[brk])
    # session ends: at each break, and after the last invocation
    ends = np.concatenate([last[brk] + np.where(pg[brk] == 0, kg[brk], 0.0),
                           [last[-1] + (ka[-1] if pw[-1] == 0 else 0.0)]])  # fmt: skip
    nxt = brk + 1
    starts = np.concatenate([[first[0]], np.where(hit, last[brk] + pg[brk], first[nxt])])
    kinds = np.concatenate([[COLD], np.where(hit, PREWARM, COLD)]).astype(np.int8)
    cold_idx = np.concatenate([[0], nxt])
    # a pre-warmed replica nobody used: its own hold
    w = brk[wasted]
    extra_s = last[w] + pg[w]
    extra_e = extra_s + kg[w]
    if pw[-1] > 0:
        extra_s = np.append(extra_s, last[-1] + pw[-1])
        extra_e = np.append(extra_e, last[-1] + pw[-1] + ka[-1])
    span = minutes[cold_idx] * 60.0 + 60.0 - starts
    nxt_minute = np.append(minutes, -2)[np.minimum(cold_idx + 1, minutes.size)]
    next_rate = np.where(nxt_minute == minutes[cold_idx] + 1,
                         np.append(counts, 0)[np.minimum(cold_idx + 1, minutes.size)] / 60.0, 0.0)  # fmt: skip
    keep_extra = extra_s < horizon_s
    return (
        [starts, extra_s[keep_extra]],
        [np.minimum(ends, horizon_s), np.minimum(extra_e[keep_extra], horizon_s)],
        [kinds, np.full(int(keep_extra.sum()), PREWARM, dtype=np.int8)],
        [counts[cold_idx], np.zeros(int(keep_extra.sum()), dtype=np.int64)],
        [np.maximum(span, 0.0), np.zeros(int(keep_extra.sum()))],
        [next_rate, np.zeros(int(keep_extra.sum()))],
    )


def slot_requests(
    trace: Trace,
    policy: KeepAlive,
    *,
    exec_s: float,
    concurrency: int = 32,
    target_utilization: float = 0.7,
    seed: int = 0,
) -> SlotRequests:
    """Every replica start the policy makes on ``trace`` (deterministic per ``seed``).

    Replicas beyond the first (scale-out when ``count x exec_s`` per minute exceeds
    ``concurrency x target_utilization``, Knative's KPA target) are kept per minute with a
    60 s scale-down delay (KPA's stable window) and returned per app in ``scaleout``.
    """
    rng = np.random.default_rng(seed)
    horizon_s = trace.minutes * 60.0
    parts: list[list[npt.NDArray[Any]]] = [[] for _ in range(6)]
    app_ids: list[npt.NDArray[np.int64]] = []
    for a in range(len(trace.names)):
        row = trace.counts[a]
        minutes = np.nonzero(row)[0]
        if minutes.size == 0:
            continue
        out = _app_holds(minutes, row[minutes], policy, exec_s, horizon_s, rng)
        for k in range(6):
            parts[k] += out[k]
        app_ids.append(np.full(sum(x.size for x in out[0]), a, dtype=np.int64))
    cat = [np.concatenate(p) if p else np.zeros(0) for p in parts]
    apps = np.concatenate(app_ids) if app_ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(cat[0], kind="stable")
    per_replica = 60.0 * concurrency * target_utilization / exec_s  # invocations / minute
    need = np.ceil(trace.counts / per_replica).astype(np.int64)
    busy = np.minimum(need, trace.counts * exec_s / 60.0).sum(axis=0) * 60.0
    heavy = np.nonzero(need.max(axis=1) > 1)[0]
    extra = np.maximum(need[heavy] - 1, 0)
    if extra.size:
        extra[:, 1:] = np.maximum(extra[:, 1:], extra[:, :-1])  # 60 s scale-down delay
    return SlotRequests(
        time=cat[0][order],
        end=cat[1][order],
        app=apps[order],
        kind=cat[2][order].astype(np.int8),
        minute_count=cat[3][order].astype(np.int64),
        span_s=cat[4][order],
        next_rate=cat[5][order],
        invocations=trace.counts.sum(axis=1),
        scaleout=extra,
        scaleout_app=heavy,
        busy_s=busy,
    )


def parse_keepalive(spec: str) -> KeepAlive:
    """``keepalive:10m`` -> fixed 600 s; ``hybrid`` -> the paper's policy."""
    from zerostart.units import parse_duration

    if spec == "hybrid":
        return KeepAlive(kind="hybrid")
    name, _, arg = spec.partition(":")
    if name == "keepalive" and arg:
        s = parse_duration(arg)
        if not math.isfinite(s):
            raise ValueError(f"{spec!r}: keep-alive must be finite")
        return KeepAlive(kind="fixed", keepalive_s=s)
    raise ValueError(f"{spec!r} is not a keep-alive policy (keepalive:DURATION or hybrid)")
