"""A discrete-event fleet simulator (SimPy) that plays a trace against machine pools.

Theory of operation. Keep-alive decisions are per app and need nothing from the fleet, so
:mod:`zerostart.fleet.keepalive` turns the trace into *slot requests* (a replica starting
cold, a pre-warm, a scale-out) each holding a slot until a known time. This module plays
those requests against the pools in time order, in SimPy:

- a pool is machines of ``slots_per_machine`` slots; a request takes a ready slot on the
  fullest machine that has one (so machines empty out and can go back);
- with no ready slot the request queues and the pool orders machines, which are ready after
  ``allocation_time + health_check_time``; queued requests take their slots then;
- the buffer policy sets how many ready slots a pool holds beyond what is in use: ``none``
  (0), ``static:N`` (N per pool), ``lp`` (the LP's plan per window); a machine goes back as
  soon as it is empty and the pool has its buffer without it;
- the wait of a cold request is its wait for a slot plus a start-path time drawn from the
  measured samples (:mod:`zerostart.fleet.starttimes`). Invocations that arrive while the
  replica starts wait too (their number from the minute's count, their wait uniform up to
  the starter's); every other invocation finds its replica and waits 0.

Results per policy: wait percentiles over all invocations and over those that met a cold
start, the cold-start fraction, and slot-hours: machine (paid), replica-held, idle (paid but
no request in flight) and the buffer's share of it.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from zerostart.fleet.config import FleetConfig, PoolSpec
from zerostart.fleet.errors import FleetError
from zerostart.fleet.keepalive import COLD, KeepAlive, SlotRequests, parse_keepalive, slot_requests
from zerostart.fleet.lp import Demand, EmpiricalTail, Plan, fit_empirical_tail, solve_buffer
from zerostart.fleet.starttimes import StartTimes
from zerostart.fleet.trace import Trace

QUANTILES = (0.5, 0.99, 0.999)


@dataclass(frozen=True)
class Policy:
    """``buffer`` is none | static | lp; ``keepalive`` the replicas' keep-alive policy."""

    spec: str
    buffer: str
    static_slots: int
    keepalive: KeepAlive
    tail: str = "skellam"  # lp only: skellam | empirical | replay (the LP's model of demand)


def parse_policy(spec: str, default_keepalive_s: float) -> Policy:
    """``none``, ``static:N``, ``lp[:empirical|:replay]``, ``keepalive:10m``, ``hybrid``, or
    ``BUFFER+KEEPALIVE``."""
    buffer, static, ka, tail = "none", 0, KeepAlive("fixed", default_keepalive_s), "skellam"
    for part in spec.strip().split("+"):
        name, _, arg = part.partition(":")
        try:
            if name == "none" and not arg:
                buffer = "none"
            elif name == "static":
                buffer, static = "static", int(arg)
                if static < 0:
                    raise ValueError
            elif name == "lp" and arg in ("", "skellam", "empirical", "replay"):
                buffer, tail = "lp", arg or "skellam"
            else:
                ka = parse_keepalive(part)
        except ValueError:
            raise FleetError(
                f"unknown policy {part!r}",
                hint="use none, static:N, lp, lp:empirical, keepalive:DURATION, hybrid, or "
                "BUFFER+KEEPALIVE",
            ) from None
    return Policy(spec, buffer, static, ka, tail)


@dataclass
class _Pool:
    spec: PoolSpec
    target: Callable[[float], int]
    machines: dict[int, int] = field(default_factory=dict)  # id -> slots in use
    by_used: list[set[int]] = field(default_factory=list)
    free: int = 0
    pending: int = 0  # machines ordered, not yet ready
    queue: deque[Callable[[int], None]] = field(default_factory=deque)
    next_id: int = 0
    machine_s: float = 0.0  # slot-seconds paid
    last_t: float = 0.0
    stockouts: int = 0

    def __post_init__(self) -> None:
        self.by_used = [set() for _ in range(self.spec.slots_per_machine + 1)]

    def account(self, now: float) -> None:
        alive = len(self.machines) + self.pending
        self.machine_s += alive * self.spec.slots_per_machine * (now - self.last_t)
        self.last_t = now


class FleetSim:
    """One run: the pools, the SimPy environment, and what is measured."""

    def __init__(
        self, pools: Sequence[PoolSpec], targets: dict[str, Callable[[float], int]]
    ) -> None:
        self.env = simpy.Environment()
        self.pools = {p.name: _Pool(p, targets[p.name]) for p in pools}

    # -- slots ------------------------------------------------------------------------
    def acquire(self, pool: _Pool, grant: Callable[[int], None]) -> None:
        """Call ``grant(machine)`` now if a slot is ready, else when one is."""
        if pool.free > 0 and not pool.queue:
            grant(self._take(pool))
        else:
            pool.stockouts += 1
            pool.queue.append(grant)
        self._supply(pool)

    def release(self, pool: _Pool, machine: int) -> None:
        used = pool.machines[machine]
        pool.by_used[used].discard(machine)
        pool.machines[machine] = used - 1
        pool.by_used[used - 1].add(machine)
        pool.free += 1
        self._serve(pool)
        self._shrink(pool)

    def _take(self, pool: _Pool) -> int:
        spm = pool.spec.slots_per_machine
        for used in range(spm - 1, -1, -1):
            if pool.by_used[used]:
                m = next(iter(pool.by_used[used]))
                pool.by_used[used].discard(m)
                pool.machines[m] = used + 1
                pool.by_used[used + 1].add(m)
                pool.free -= 1
                return m
        raise AssertionError("no free slot")  # callers check pool.free first

    def _serve(self, pool: _Pool) -> None:
        while pool.queue and pool.free > 0:
            pool.queue.popleft()(self._take(pool))

    def _supply(self, pool: _Pool) -> None:
        spm = pool.spec.slots_per_machine
        want = pool.target(self.env.now) + len(pool.queue)
        have = pool.free + pool.pending * spm
        limit = pool.spec.max_slots // spm - len(pool.machines) - pool.pending
        order = min(-(-(want - have) // spm), limit) if want > have else 0
        if order > 0:
            pool.account(self.env.now)
            pool.pending += order
            ev = self.env.timeout(pool.spec.lead_time_s)
            ev.callbacks.append(functools.partial(self._on_arrival, pool, order))

    def _on_arrival(self, pool: _Pool, n: int, _event: object) -> None:
        self._arrive(pool, n)

    def _arrive(self, pool: _Pool, n: int) -> None:
        pool.account(self.env.now)
        pool.pending -= n
        for _ in range(n):
            m = pool.next_id
            pool.next_id += 1
            pool.machines[m] = 0
            pool.by_used[0].add(m)
            pool.free += pool.spec.slots_per_machine
        self._serve(pool)
        self._shrink(pool)

    def _shrink(self, pool: _Pool) -> None:
        spm = pool.spec.slots_per_machine
        target = pool.target(self.env.now)
        while pool.by_used[0] and not pool.queue and pool.free - spm >= target:
            pool.account(self.env.now)
            m = pool.by_used[0].pop()
            del pool.machines[m]
            pool.free -= spm

    def retarget(self, now: float) -> None:
        for pool in self.pools.values():
            self._supply(pool)
            self._shrink(pool)


def _weighted_quantiles(values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64],
                        zero_weight: float) -> list[float]:  # fmt: skip
    v = np.concatenate([[0.0], values])
    w = np.concatenate([[zero_weight], weights])
    order = np.argsort(v, kind="stable")
    v, cw = v[order], np.cumsum(w[order])
    if cw[-1] <= 0:
        return [0.0 for _ in QUANTILES]
    return [float(v[min(np.searchsorted(cw, q * cw[-1]), v.size - 1)]) for q in QUANTILES]


def run_policy(
    trace: Trace,
    requests: SlotRequests,
    cfg: FleetConfig,
    policy: Policy,
    start: StartTimes,
    *,
    plan: Plan | None = None,
    seed: int = 0,
    measure_from_s: float = 0.0,
) -> dict[str, Any]:
    """Simulate ``policy`` on ``requests`` (made from ``trace`` with ``policy.keepalive``).

    Only requests and slot-hours from ``measure_from_s`` on are measured: the time before
    warms the fleet up (every app starts the trace at zero replicas).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    pools = list(cfg.pools.values())
    horizon = trace.minutes * 60.0
    targets: dict[str, Callable[[float], int]] = {}
    for p in pools:
        if policy.buffer == "lp":
            if plan is None:
                raise FleetError("policy lp needs a plan")
            targets[p.name] = _scheduled(plan.slots[plan.pools.index(p.name)], plan.window_s)
        else:
            targets[p.name] = _constant(policy.static_slots if policy.buffer == "static" else 0)
    sim = FleetSim(pools, targets)
    env = sim.env
    pool_of_app = [sim.pools[cfg.pool_of(n)] for n in trace.names]
    n = requests.time.size
    start_draw = start.draw(cfg.start_path, n, rng)
    wait = np.full(n, np.nan)
    exec_s = start.exec_s

    def grant_for(i: int, pool: _Pool, t_req: float) -> Callable[[int], None]:
        def grant(machine: int) -> None:
            now = env.now
            wait[i] = now - t_req + start_draw[i]
            hold = max(requests.end[i], now + start_draw[i] + exec_s) - now
            ev = env.timeout(hold)
            ev.callbacks.append(lambda _e: sim.release(pool, machine))

        return grant

    def arrivals() -> Any:
        for i in range(n):
            t = float(requests.time[i])
            if t > env.now:
                yield env.timeout(t - env.now)
            pool = pool_of_app[int(requests.app[i])]
            sim.acquire(pool, grant_for(i, pool, t))

    def scaleouts() -> Any:
        extra = requests.scaleout
        if extra.size == 0:
            return
        app_pool = [pool_of_app[int(a)] for a in requests.scaleout_app]
        prev = np.zeros(len(app_pool), dtype=np.int64)
        for minute in range(extra.shape[1]):
            if minute * 60.0 > env.now:
                yield env.timeout(minute * 60.0 - env.now)
            cur = extra[:, minute]
            for k in np.nonzero(cur > prev)[0]:
                for level in range(int(prev[k]) + 1, int(cur[k]) + 1):
                    below = np.nonzero(extra[k, minute:] < level)[0]
                    end = (minute + below[0] if below.size else extra.shape[1]) * 60.0
                    sim.acquire(app_pool[k], functools.partial(_hold, app_pool[k], end))
            prev = cur

    def _hold(pool: _Pool, end: float, machine: int) -> None:
        ev = env.timeout(max(end - env.now, start.median(cfg.start_path)))
        ev.callbacks.append(lambda _e: sim.release(pool, machine))

    marks: dict[str, dict[str, float]] = {}

    def meter() -> Any:
        for label, delay in (("from", measure_from_s), ("to", horizon - measure_from_s)):
            yield env.timeout(delay)
            for p in sim.pools.values():
                p.account(env.now)
            marks[label] = {name: p.machine_s for name, p in sim.pools.items()}

    def windows() -> Any:
        step = plan.window_s if plan is not None else 3600.0
        while True:
            sim.retarget(env.now)
            yield env.timeout(step)

    env.process(windows())
    env.process(meter())
    env.process(arrivals())
    env.process(scaleouts())
    env.run(until=horizon + 1)
    paid = {name: marks["to"][name] - marks["from"][name] for name in sim.pools}
    measured = _Measured(measure_from_s, horizon, paid)
    app_pool = np.array(
        [list(sim.pools).index(cfg.pool_of(n)) for n in trace.names], dtype=np.int64
    )
    slot_wait = wait - start_draw
    return _metrics(
        trace, requests, policy, sim, wait, slot_wait, measured, app_pool, time.perf_counter() - t0
    )


def _constant(n: int) -> Callable[[float], int]:
    return lambda _t: n


def _scheduled(row: npt.NDArray[np.int64], window_s: float) -> Callable[[float], int]:
    return lambda t: int(row[int(t // window_s) % row.size])


@dataclass(frozen=True)
class _Measured:
    start_s: float
    end_s: float
    machine_s: dict[str, float]  # per pool: slot-seconds paid in the measured span


def _metrics(
    trace: Trace,
    req: SlotRequests,
    policy: Policy,
    sim: FleetSim,
    wait: npt.NDArray[np.float64],
    slot_wait: npt.NDArray[np.float64],
    m: _Measured,
    app_pool: npt.NDArray[np.int64],
    run_s: float,
) -> dict[str, Any]:
    inside = req.time >= m.start_s
    cold = (req.kind == COLD) & inside
    w = np.where(np.isnan(wait[cold]), m.end_s - req.time[cold], wait[cold])  # nan: still waiting
    extra = (req.minute_count[cold] - 1) * np.minimum(1.0, w / np.maximum(req.span_s[cold], 1e-9))
    extra += req.next_rate[cold] * np.clip(w - req.span_s[cold], 0.0, 60.0)
    values = np.concatenate([w, 0.25 * w, 0.75 * w])
    weights = np.concatenate([np.ones(w.size), extra / 2, extra / 2])
    first_minute = int(m.start_s // 60)
    invocations = trace.counts[:, first_minute:].sum(axis=1)
    total = float(invocations.sum())
    cold_weight = float(weights.sum())
    all_q = _weighted_quantiles(values, weights, max(total - cold_weight, 0.0))
    cold_q = _weighted_quantiles(values, weights, 0.0)
    per_app_cold = np.bincount(req.app[cold], minlength=len(trace.names))
    active = invocations > 0
    app_frac = per_app_cold[active] / invocations[active]
    held_req = np.clip(np.minimum(req.end, m.end_s) - np.maximum(req.time, m.start_s), 0, None)
    held_app = np.bincount(req.app, weights=held_req, minlength=len(trace.names))
    held_app[req.scaleout_app] += req.scaleout[:, first_minute:].sum(axis=1) * 60.0
    busy_s = float(req.busy_s[first_minute:].sum())
    machine_s = sum(m.machine_s.values())
    held_s = float(held_app.sum())
    cold_pool = app_pool[req.app[cold]]
    req_pool = app_pool[req.app[inside]]
    waited = ~(slot_wait[inside] <= 1e-9)  # nan (never served) counts as waited
    hour = (req.time[inside] // 3600).astype(np.int64) % 24
    pools: dict[str, Any] = {}
    for i, (name, pool) in enumerate(sim.pools.items()):
        sel = np.concatenate([cold_pool == i] * 3)
        held_p = float(held_app[app_pool == i].sum())
        pools[name] = {
            "cold_starts": int((cold_pool == i).sum()),
            "cold_wait_s": dict(
                zip(
                    ("p50", "p99", "p999"),
                    _weighted_quantiles(values[sel], weights[sel], 0.0),
                    strict=True,
                )
            ),
            "waited_for_machine": float(waited[req_pool == i].mean())
            if (req_pool == i).any()
            else 0.0,
            "waited_for_machine_by_hour": _share_by_hour(waited, hour, req_pool == i),
            "machine_slot_hours": m.machine_s[name] / 3600,
            "buffer_idle_slot_hours": max(m.machine_s[name] - held_p, 0.0) / 3600,
            "cost": m.machine_s[name] / 3600 * pool.spec.cost_per_hour,
        }
    return {
        "policy": policy.spec,
        "buffer": policy.buffer if policy.buffer != "static" else f"static:{policy.static_slots}",
        "keepalive": policy.keepalive.label,
        "measured_hours": (m.end_s - m.start_s) / 3600,
        "invocations": int(total),
        "cold_starts": int(cold.sum()),
        "prewarms": int(((req.kind != COLD) & inside).sum()),
        "slot_stockouts": int(sum(p.stockouts for p in sim.pools.values())),
        "cold_start_fraction": cold_weight / total if total else 0.0,
        "app_cold_start_pct_p75": float(np.percentile(app_frac, 75) * 100)
        if app_frac.size
        else 0.0,
        "wait_s": dict(zip(("p50", "p99", "p999"), all_q, strict=True)),
        "cold_wait_s": dict(zip(("p50", "p99", "p999"), cold_q, strict=True)),
        "machine_slot_hours": machine_s / 3600,
        "replica_slot_hours": held_s / 3600,
        "idle_slot_hours": (machine_s - busy_s) / 3600,
        "buffer_idle_slot_hours": max(machine_s - held_s, 0.0) / 3600,
        "cost": sum(p["cost"] for p in pools.values()),
        "pools": pools,
        "run_s": run_s,
    }


def _share_by_hour(
    flag: npt.NDArray[np.bool_], hour: npt.NDArray[np.int64], sel: npt.NDArray[np.bool_]
) -> list[float | None]:
    """Per hour of the day: the share of selected requests with ``flag`` (None: no request)."""
    n = np.bincount(hour[sel], minlength=24)
    k = np.bincount(hour[sel], weights=flag[sel].astype(np.float64), minlength=24)
    return [float(k[h] / n[h]) if n[h] else None for h in range(24)]


def net_demand_samples(
    trace: Trace, req: SlotRequests, cfg: FleetConfig, *, skip_s: float = 900.0
) -> tuple[dict[str, npt.NDArray[np.int64]], dict[str, npt.NDArray[np.int64]]]:
    """Per pool, at every slot request: ``X``, the slots it needs beyond a buffer, and its window.

    ``X(t) = held(t) - min(held(s) : t - L <= s <= t)``: the rise in slots held since their
    lowest point within one lead time ``L``, the request itself included. A pool holding
    ``b`` ready slots gives back what a release adds above ``b`` (the simulator's
    ``_shrink``), so releases before that low point cannot serve ``t``, and machines
    ordered after it are not ready by ``t``: a request waits about when ``X > b`` (exact
    for one-slot machines if the pool's orders arrive within ``L`` of that low point;
    machines of several slots keep up to ``slots_per_machine - 1`` extra, so it is
    conservative there). Samples before ``skip_s`` are dropped: the trace starts with
    every app at zero replicas.
    """
    pool_names = list(cfg.pools)
    app_pool = np.array([pool_names.index(cfg.pool_of(n)) for n in trace.names], dtype=np.int64)
    t_ev = [req.time, req.end]
    d_ev = [np.ones(req.time.size, dtype=np.int64), -np.ones(req.end.size, dtype=np.int64)]
    p_ev = [app_pool[req.app], app_pool[req.app]]
    s_ev = [np.ones(req.time.size, dtype=bool), np.zeros(req.end.size, dtype=bool)]
    if req.scaleout.size:
        step = np.diff(req.scaleout, axis=1, prepend=0)
        rows, minutes = np.nonzero(step)
        t_ev.append(minutes.astype(np.float64) * 60.0)
        d_ev.append(step[rows, minutes].astype(np.int64))
        p_ev.append(app_pool[req.scaleout_app[rows]])
        s_ev.append(np.zeros(rows.size, dtype=bool))
    t_all, d_all = np.concatenate(t_ev), np.concatenate(d_ev)
    p_all, s_all = np.concatenate(p_ev), np.concatenate(s_ev)
    values: dict[str, npt.NDArray[np.int64]] = {}
    windows: dict[str, npt.NDArray[np.int64]] = {}
    n_w = int(86400 // cfg.window_s)
    for i, name in enumerate(pool_names):
        sel = p_all == i
        # releases before starts at equal times: a slot given back can be taken at once
        order = np.lexsort((d_all[sel], t_all[sel]))
        t, held = t_all[sel][order], np.cumsum(d_all[sel][order])
        sample = s_all[sel][order]
        x = _rise_over(t, held, cfg.pools[name].lead_time_s, sample)
        keep = t[sample] >= skip_s
        values[name] = x[keep]
        windows[name] = (t[sample][keep] // cfg.window_s).astype(np.int64) % n_w
    return values, windows


def _rise_over(
    t: npt.NDArray[np.float64], held: npt.NDArray[np.int64], lead: float,
    sample: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:  # fmt: skip
    """``held[j] - min(held over [t[j] - lead, t[j]])`` at the events where ``sample`` holds.

    The level just before the window counts too (it lasts into the window). A monotonic
    deque: one pass over the events.
    """
    out = np.zeros(int(sample.sum()), dtype=np.int64)
    dq: deque[int] = deque()  # event indices, increasing held
    before = 0  # held just before the window: the last event at or before t - lead
    lo = 0
    k = 0
    tl, hl, sl = t.tolist(), held.tolist(), sample.tolist()
    for j in range(len(tl)):
        h = hl[j]
        while dq and hl[dq[-1]] >= h:
            dq.pop()
        dq.append(j)
        edge = tl[j] - lead
        while lo < j and tl[lo] <= edge:
            before = hl[lo]
            lo += 1
        while dq[0] < lo:
            dq.popleft()
        if sl[j]:
            low = min(hl[dq[0]], before) if lo > 0 else min(hl[dq[0]], 0)
            out[k] = h - low
            k += 1
    return out


def replay_tail(
    trace: Trace, req: SlotRequests, cfg: FleetConfig, *, skip_s: float = 900.0,
    min_samples: int = 50,
) -> EmpiricalTail:  # fmt: skip
    """Empirical tail points: the share of requests that wait at every buffer size ``b``.

    Per pool, the slot requests of ``trace`` are replayed against that pool alone once,
    for all ``b = 0..B`` at once (numpy vectors over ``b``), with the simulator's rules:
    a request waits when no slot is free or others queue; the pool orders machines of
    ``slots_per_machine`` to keep free + ordered >= b + queued, ready after the lead time;
    free slots beyond ``b`` go back a machine at a time (machines are not packed: a slot
    freed on a busy machine counts as returnable, the simulator cannot return it). ``B``
    is the largest :func:`net_demand_samples` value, past which no request waits. Per
    window the measured ``P(wait | b)`` (made non-increasing) are the tail points ``P(X >
    b)`` of an effective demand ``X``: ``S(k) = sum_{j >= k} P(X > j)``.
    """
    pool_names = list(cfg.pools)
    app_pool = np.array([pool_names.index(cfg.pool_of(n)) for n in trace.names], dtype=np.int64)
    rise, _ = net_demand_samples(trace, req, cfg, skip_s=skip_s)
    n_w = int(86400 // cfg.window_s)
    shortfalls: dict[str, tuple[npt.NDArray[np.float64] | None, ...]] = {}
    means: dict[str, npt.NDArray[np.float64]] = {}
    counts: dict[str, npt.NDArray[np.int64]] = {}
    for i, name in enumerate(pool_names):
        sel = app_pool[req.app] == i
        t_acq, t_end = req.time[sel], req.end[sel]
        big = int(rise[name].max()) + 1 if rise[name].size else 0
        if t_acq.size == 0 or big == 0:
            shortfalls[name] = (None,) * n_w
            means[name] = np.zeros(n_w)
            counts[name] = np.zeros(n_w, dtype=np.int64)
            continue
        waited, n = _replay_pool(cfg.pools[name], t_acq, t_end, big, n_w, cfg.window_s, skip_s)
        curves: list[npt.NDArray[np.float64] | None] = []
        mean = np.zeros(n_w)
        day = np.minimum.accumulate(waited.sum(axis=0) / max(n.sum(), 1))
        for t in range(n_w):
            p_wait = np.minimum.accumulate(waited[t] / n[t]) if n[t] >= min_samples else day
            f = np.concatenate([np.cumsum(p_wait[::-1])[::-1], [0.0]])
            curves.append(f)
            mean[t] = f[0]
        shortfalls[name], means[name] = tuple(curves), mean
        counts[name] = np.where(n >= min_samples, n, 0).astype(np.int64)
    return EmpiricalTail(shortfalls, means, counts)


def _replay_pool(
    pool: PoolSpec, t_acq: npt.NDArray[np.float64], t_end: npt.NDArray[np.float64], big: int,
    n_w: int, window_s: float, skip_s: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:  # fmt: skip
    """Requests that waited, per window and buffer size ``b = 0..big-1``, and requests."""
    spm, lead = pool.slots_per_machine, pool.lead_time_s
    # events: 0 release, 1 machines arrive (for acquisition j), 2 acquisition j
    n = t_acq.size
    t_ev = np.concatenate([t_end, t_acq + lead, t_acq])
    kind = np.concatenate([np.zeros(n), np.ones(n), np.full(n, 2)]).astype(np.int64)
    ref = np.concatenate([np.arange(n), np.arange(n), np.arange(n)])
    order = np.lexsort((ref, kind, t_ev))
    b = np.arange(big, dtype=np.int64)
    free = b.copy()  # the pool starts holding its buffer
    pend = np.zeros(big, dtype=np.int64)
    queue = np.zeros(big, dtype=np.int64)
    ordered: dict[int, npt.NDArray[np.int64]] = {}
    waited = np.zeros((n_w, big))
    count = np.zeros(n_w)
    win = ((t_acq // window_s).astype(np.int64)) % n_w

    def settle() -> None:
        served = np.minimum(free, queue)
        free[:] -= served
        queue[:] -= served
        back = np.where(queue == 0, np.maximum(free - b, 0) // spm, 0)
        free[:] -= back * spm

    for e in order.tolist():
        k, j = int(kind[e]), int(ref[e])
        if k == 0:
            free += 1
            settle()
        elif k == 1:
            got = ordered.pop(j, None)
            if got is not None:
                pend -= got
                free += got * spm
                settle()
        else:
            w = (free == 0) | (queue > 0)
            if t_acq[j] >= skip_s:
                waited[win[j]] += w
                count[win[j]] += 1
            free -= ~w
            queue += w
            short = b + queue - free - pend * spm
            got = np.where(short > 0, -(-short // spm), 0)
            if got.any():
                pend += got
                ordered[j] = got
    return waited, count


def demand_from_requests(trace: Trace, req: SlotRequests, cfg: FleetConfig) -> Demand:
    """Per app and window of the day: slot requests per second and mean slots held."""
    n_w = int(86400 // cfg.window_s)
    days = trace.minutes * 60.0 / 86400
    apps = len(trace.names)
    rate = np.zeros((apps, n_w))
    held = np.zeros((apps, n_w))
    w_idx = (req.time // cfg.window_s).astype(np.int64) % n_w
    np.add.at(rate, (req.app, w_idx), 1.0)
    rate /= max(days, 1e-9) * cfg.window_s
    n_abs = int(np.ceil(trace.minutes * 60.0 / cfg.window_s))
    for k in range(n_abs):
        lo, hi = k * cfg.window_s, (k + 1) * cfg.window_s
        overlap = np.clip(np.minimum(req.end, hi) - np.maximum(req.time, lo), 0.0, None)
        np.add.at(held[:, k % n_w], req.app, overlap)
    if req.scaleout.size:
        per_window = int(cfg.window_s // 60)
        for k in range(n_abs):
            block = req.scaleout[:, k * per_window : (k + 1) * per_window]
            held[req.scaleout_app, k % n_w] += block.sum(axis=1) * 60.0
            ups = np.maximum(np.diff(req.scaleout, axis=1, prepend=0), 0)[
                :, k * per_window : (k + 1) * per_window
            ]
            rate[req.scaleout_app, k % n_w] += ups.sum(axis=1) / (max(days, 1e-9) * cfg.window_s)
    held /= max(days, 1e-9) * cfg.window_s
    hold_sum = np.zeros((apps, n_w))
    starts = np.zeros((apps, n_w))
    np.add.at(hold_sum, (req.app, w_idx), np.maximum(req.end - req.time, 0.0))
    np.add.at(starts, (req.app, w_idx), 1.0)
    hold = np.where(starts > 0, hold_sum / np.maximum(starts, 1), 60.0)
    pools = tuple(cfg.pool_of(n) for n in trace.names)
    lead = np.array([cfg.pools[p].lead_time_s for p in pools])[req.app]
    lead_sum = np.zeros((apps, n_w))
    np.add.at(lead_sum, (req.app, w_idx), np.minimum(np.maximum(req.end - req.time, 0.0), lead))
    lead_hold = np.where(starts > 0, lead_sum / np.maximum(starts, 1), 0.0)
    return Demand(tuple(trace.names), pools, rate, held, cfg.window_s, hold, lead_hold)


def plan_from_trace(
    trace: Trace, cfg: FleetConfig, start: StartTimes, keepalive: KeepAlive, *,
    wait_penalty: float | None = None, concurrency: int = 32, seed: int = 0,
    tail: str = "skellam",
) -> Plan:  # fmt: skip
    """The LP's plan for the demand ``trace`` shows under ``keepalive``.

    ``tail``: ``skellam`` (the Poisson model) or ``empirical`` (the net slot demand measured
    on ``trace``, :func:`net_demand_samples`).
    """
    req = slot_requests(trace, keepalive, exec_s=start.exec_s, concurrency=concurrency, seed=seed)
    demand = demand_from_requests(trace, req, cfg)
    fitted = None
    if tail == "empirical":
        values, windows = net_demand_samples(trace, req, cfg)
        fitted = fit_empirical_tail(values, windows, int(86400 // cfg.window_s))
    elif tail == "replay":
        fitted = replay_tail(trace, req, cfg)
    elif tail != "skellam":
        raise FleetError(f"unknown tail model {tail!r}", hint="use skellam, empirical or replay")
    medians = {k: start.median(k) for k in start.samples}
    return solve_buffer(
        list(cfg.pools.values()), demand, medians,
        wait_penalty=cfg.wait_penalty if wait_penalty is None else wait_penalty,
        start_path=cfg.start_path, quotas=cfg.quotas,
        max_wait_probability=cfg.max_wait_probability, tail=fitted,
    )  # fmt: skip


def compare(
    test: Trace,
    cfg: FleetConfig,
    start: StartTimes,
    specs: Sequence[str],
    *,
    train: Trace | None = None,
    concurrency: int = 32,
    seed: int = 0,
    wait_penalty: float | None = None,
    measure_from_s: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run each policy on ``test``; ``lp`` plans on ``train`` (default: ``test`` itself).

    ``measure_from_s``: see :func:`run_policy`.
    """
    policies = [parse_policy(s, cfg.keepalive_s) for s in specs]
    cache: dict[KeepAlive, SlotRequests] = {}
    rows = []
    for pol in policies:
        if pol.keepalive not in cache:
            cache[pol.keepalive] = slot_requests(test, pol.keepalive, exec_s=start.exec_s,
                                                 concurrency=concurrency, seed=seed)  # fmt: skip
        plan = None
        if pol.buffer == "lp":
            plan = plan_from_trace(train or test, cfg, start, pol.keepalive,
                                   wait_penalty=wait_penalty, concurrency=concurrency, seed=seed + 1,
                                   tail=pol.tail)  # fmt: skip
        row = run_policy(test, cache[pol.keepalive], cfg, pol, start, plan=plan, seed=seed,
                         measure_from_s=measure_from_s)  # fmt: skip
        if plan is not None:
            row["plan_slots_per_pool"] = {p: plan.slots_for(p) for p in plan.pools}
            row["plan_stockout_per_pool"] = {  # predicted P(a request waits), rate-weighted
                p: float((plan.stockout[i] * plan.rate[i]).sum() / max(plan.rate[i].sum(), 1e-12))
                for i, p in enumerate(plan.pools)
            }
            row["tail"] = pol.tail
            row["plan_stockout_by_hour"] = {  # predicted P(a request waits) per window
                p: [round(float(x), 6) for x in plan.stockout[i]] for i, p in enumerate(plan.pools)
            }
            row["wait_penalty"] = cfg.wait_penalty if wait_penalty is None else wait_penalty
            if cfg.max_wait_probability is not None:
                row["max_wait_probability"] = cfg.max_wait_probability
        rows.append(row)
        if log:
            log(format_row(row))
    return rows


def format_row(r: dict[str, Any]) -> str:
    w, c = r["wait_s"], r["cold_wait_s"]
    return (
        f"{r['policy']:<22} cold {r['cold_start_fraction'] * 100:7.4f}%  "
        f"wait p50/p99/p99.9 {w['p50']:.3f}/{w['p99']:.3f}/{w['p999']:.3f} s  "
        f"cold-start wait p50/p99/p99.9 {c['p50']:.3f}/{c['p99']:.2f}/{c['p999']:.2f} s  "
        f"idle {r['idle_slot_hours']:9.1f} slot-h (buffer {r['buffer_idle_slot_hours']:8.1f})  "
        f"${r['cost']:9.2f}  [{r['run_s']:.1f} s]"
    )
