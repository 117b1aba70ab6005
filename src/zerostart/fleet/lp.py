"""The ready-capacity buffer as a linear program (OR-Tools GLOP).

Theory of operation (docs/fleet.md has the formulation and its sources):

Each pool ``p`` holds a buffer of ``b[p,t]`` ready slots in window ``t``: the autoscaler
orders machines whenever ready + ordered slots fall below ``b``, and an ordered machine is
ready after the pool's lead time ``L_p`` (allocation + health check). Replicas take slots
(cold starts, pre-warms, scale-outs) at rate ``lambda`` and give them back at rate ``delta``.
Replicas in use form an M/G/inf system, whose arrivals and departures are both Poisson
(Mirasol 1963). Over one lead time the net number of slots taken is ``D = A - R``: ``A``
the replicas that start and are still held at its end, ``R`` those held at its start that
have gone by then. For a stationary M/G/inf system these are independent Poisson variables
(thinnings of disjoint Poisson processes), both with mean ``lambda E[min(H, L)]`` for
hold times ``H`` (measured when the forecast has them, else exponential with the mean
hold); a forecast trend
shifts ``R``'s mean by the growth of the slots held over ``L``. ``D`` is a Skellam variable.
A request waits for a machine when ``D`` exceeds the buffer, so

- requests short of a slot (expected shortfall): ``S(b) = E[(D - b)+]``,
- ready slots standing idle: ``I(b) = E[(b - D)+] = b - E[D] + S(b)``,
- the mean extra wait of a request is about ``S(b) / lambda`` (Little's law).

``S`` is convex in ``b`` (second difference ``P(D = b) >= 0``), so its piecewise-linear
interpolation through the integers is the maximum of its secants: the LP writes
``w >= S(k) + (S(k+1) - S(k)) (b - k)`` for ``k = 0..K-1`` and minimises

    sum_{p,t} window_s * [ cost_p/3600 * (b - E[D] + w)  +  wait_penalty * w ]

subject to ``0 <= b <= K``, ``b + held[p,t] <= max_slots_p`` and each quota's sum. At
integer ``b`` the LP's objective is exact; a fractional optimum (only where quotas bind) is
rounded down and completed greedily, which is optimal for a separable convex objective
under disjoint sum constraints. The growth of the slots held is a central difference over
the windows of the day (cyclic).

Empirical tail (optional, ``solve_buffer(..., tail=EmpiricalTail)``). Real slot demand is
not Poisson: sparse apps start in bursts, busy apps scale in steps, and a release while
the pool already holds its buffer is given back, not kept. :func:`fit_empirical_tail`
replaces the Skellam ``D`` per pool and window by the measured distribution of ``X``, the
slots the pool needs beyond its buffer at a request's arrival (see
``simulate.net_demand_samples``), as ``S(k) = E[(X - k)+]`` over the samples. That is
convex in ``k`` for any distribution (a mean of convex functions), so the same secants
apply. A window with too few samples borrows its pool's whole-day distribution; a pool
with none keeps the Skellam curve.

Sources: the expected-shortfall function of base-stock inventory with Poisson lead-time
demand, C. C. Sherbrooke (1968), "METRIC: A multi-echelon technique for recoverable item
control", Operations Research 16(1); N. M. Mirasol (1963), "The output of an M/G/inf
queuing system is Poisson", Operations Research 11(2); secant (lambda-) formulation of a
separable convex piecewise-linear objective: Bertsimas & Tsitsiklis, "Introduction to
Linear Optimization" (1997), section 1.3.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from zerostart.fleet.config import PoolSpec, Quota
from zerostart.fleet.errors import PlanError


@dataclass(frozen=True)
class Demand:
    """Forecast per model and window: slot requests per second and mean slots held."""

    models: tuple[str, ...]
    model_pool: tuple[str, ...]
    rate: npt.NDArray[np.float64]  # (models, windows), slot requests / s
    held: npt.NDArray[np.float64]  # (models, windows), replicas holding a slot (mean)
    window_s: float
    hold_s: npt.NDArray[np.float64] | None = None  # (models, windows) mean hold; None: >> L
    # (models, windows) measured mean of min(hold, lead time of the model's pool); wins over hold_s
    lead_hold_s: npt.NDArray[np.float64] | None = None


@dataclass(frozen=True)
class EmpiricalTail:
    """Measured net slot demand per pool and window (:func:`fit_empirical_tail`).

    ``shortfall[pool][t]`` is ``S(k) = E[(X - k)+]`` for ``k = 0..max X`` (``None``: no
    history, the LP uses the Skellam curve), ``mean[pool][t]`` is ``E[X]``, and
    ``samples[pool][t]`` the window's own samples (0 where it borrowed the pool's day).
    """

    shortfall: Mapping[str, tuple[npt.NDArray[np.float64] | None, ...]]
    mean: Mapping[str, npt.NDArray[np.float64]]
    samples: Mapping[str, npt.NDArray[np.int64]]


def empirical_shortfall(
    x: npt.NDArray[np.int64], weights: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.float64]:
    """``S(k) = E[(X - k)+]``, ``k = 0..max(X, 0)``, over the samples ``x`` (integers)."""
    x = np.maximum(np.asarray(x, dtype=np.int64), 0)
    if x.size == 0:
        return np.zeros(1)
    w = np.ones(x.size) if weights is None else np.asarray(weights, dtype=np.float64)
    pmf = np.bincount(x, weights=w) / w.sum()
    over = 1.0 - np.cumsum(pmf)  # P(X > k), k = 0..max
    s = np.concatenate([[float((np.arange(pmf.size) * pmf).sum())], np.zeros(pmf.size - 1)])
    s[1:] = s[0] - np.cumsum(over[:-1])
    out: npt.NDArray[np.float64] = np.maximum(s, 0.0)
    out[-1] = 0.0
    return out


def fit_empirical_tail(
    values: Mapping[str, npt.NDArray[np.int64]],
    windows: Mapping[str, npt.NDArray[np.int64]],
    n_windows: int,
    *,
    min_samples: int = 50,
) -> EmpiricalTail:
    """Per pool: samples ``values[pool]`` falling in windows ``windows[pool]`` -> curves.

    A window with fewer than ``min_samples`` samples takes the pool's whole-day curve (the
    floor for unseen hours); a pool without samples gets ``None`` curves (Skellam).
    """
    shortfalls: dict[str, tuple[npt.NDArray[np.float64] | None, ...]] = {}
    means: dict[str, npt.NDArray[np.float64]] = {}
    counts: dict[str, npt.NDArray[np.int64]] = {}
    for pool, x in values.items():
        x = np.asarray(x, dtype=np.int64)
        w = np.asarray(windows[pool], dtype=np.int64) % n_windows
        if x.shape != w.shape:
            raise PlanError(f"pool {pool}: {x.size} samples but {w.size} windows")
        day = empirical_shortfall(x) if x.size else None
        day_mean = float(x.mean()) if x.size else 0.0
        curves: list[npt.NDArray[np.float64] | None] = []
        mean = np.full(n_windows, day_mean)
        n = np.bincount(w, minlength=n_windows).astype(np.int64)
        for t in range(n_windows):
            if n[t] >= max(min_samples, 1):
                xt = x[w == t]
                curves.append(empirical_shortfall(xt))
                mean[t] = float(xt.mean())
            else:
                curves.append(day)
                n[t] = 0
        shortfalls[pool], means[pool], counts[pool] = tuple(curves), mean, n
    return EmpiricalTail(shortfalls, means, counts)


@dataclass(frozen=True)
class Plan:
    """The LP's answer: ``slots[p, t]`` ready slots to hold in pool ``pools[p]``, window ``t``."""

    pools: tuple[str, ...]
    window_s: float
    slots: npt.NDArray[np.int64]
    lp_slots: npt.NDArray[np.float64]
    rate: npt.NDArray[np.float64]  # pool-level slot requests / s
    stockout: npt.NDArray[np.float64]  # P(a slot request finds no ready slot)
    slot_wait_s: npt.NDArray[np.float64]  # mean wait for a slot, per request
    start_s: float  # start-path time added to every request once it has a slot
    idle_slot_hours_per_day: float
    idle_cost_per_day: float
    wait_cost_per_day: float
    lp_objective_per_day: float
    solve_s: float
    build_s: float
    variables: int
    constraints: int

    def slots_for(self, pool: str) -> list[int]:
        return [int(x) for x in self.slots[self.pools.index(pool)]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "pools": {
                p: {
                    "slots": self.slots_for(p),
                    "slot_requests_per_hour": [round(x * 3600, 3) for x in self.rate[i]],
                    "stockout_probability": [round(float(x), 6) for x in self.stockout[i]],
                    "mean_wait_s": [round(float(x) + self.start_s, 4) for x in self.slot_wait_s[i]],
                }
                for i, p in enumerate(self.pools)
            },
            "idle_slot_hours_per_day": self.idle_slot_hours_per_day,
            "idle_cost_per_day": self.idle_cost_per_day,
            "wait_cost_per_day": self.wait_cost_per_day,
            "lp_objective_per_day": self.lp_objective_per_day,
            "solve_s": self.solve_s,
            "build_s": self.build_s,
            "variables": self.variables,
            "constraints": self.constraints,
        }


def _poisson(mu: float, kmax: int) -> npt.NDArray[np.float64]:
    if mu <= 0:
        return np.concatenate([[1.0], np.zeros(kmax)])
    k = np.arange(kmax + 1)
    logs = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, kmax + 1)))])
    pmf: npt.NDArray[np.float64] = np.exp(k * math.log(mu) - mu - logs)
    return pmf


def _reach(mu: float) -> int:
    """A point past which Poisson(mu) has no mass worth counting (< 1e-12)."""
    return int(mu + 12 * math.sqrt(mu) + 20) if mu > 0 else 0


def shortfall(up: float, down: float, kmax: int | None = None) -> npt.NDArray[np.float64]:
    """``S(k) = E[(A - R - k)+]``, ``A ~ Poisson(up)``, ``R ~ Poisson(down)``, ``k = 0..kmax``."""
    ka = _reach(up)
    kmax = ka if kmax is None else kmax
    if up <= 0:
        return np.zeros(kmax + 1)
    pa = _poisson(up, ka)
    pr = _poisson(down, _reach(down))
    pd = np.convolve(pa, pr[::-1])[pr.size - 1 :]  # P(D = d), d = 0..ka
    over = np.concatenate([np.cumsum(pd[::-1])[::-1][1:], [0.0]])  # P(D > k), k = 0..ka
    s = np.concatenate([[float((np.arange(pd.size) * pd).sum())], np.zeros(ka)])
    s[1:] = s[0] - np.cumsum(over[:-1])
    s = np.maximum(s, 0.0)
    out: npt.NDArray[np.float64] = (
        s[: kmax + 1] if kmax <= ka else np.concatenate([s, np.zeros(kmax - ka)])
    )
    return out


def lead_time_means(
    pools: Sequence[PoolSpec], demand: Demand
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Means of ``A`` and ``R`` per pool and window (see the module docstring)."""
    index = {p.name: i for i, p in enumerate(pools)}
    rows = np.array([index[p] for p in demand.model_pool], dtype=np.int64)
    lead = np.array([pools[i].lead_time_s for i in rows])[:, None]
    if demand.lead_hold_s is not None:
        exposure = demand.rate * np.minimum(demand.lead_hold_s, lead)
    elif demand.hold_s is None:
        exposure = demand.rate * lead
    else:
        h = np.maximum(demand.hold_s, 1e-9)
        exposure = demand.rate * h * -np.expm1(-lead / h)  # lambda E[min(H, L)], H exponential
    up = np.zeros((len(pools), demand.rate.shape[1]))
    np.add.at(up, rows, exposure)
    _, held = pool_demand(pools, demand)
    growth = (np.roll(held, -1, axis=1) - np.roll(held, 1, axis=1)) / (2 * demand.window_s)
    lead_p = np.array([p.lead_time_s for p in pools])[:, None]
    return up, np.maximum(up - growth * lead_p, 0.0)


def _check(pools: Sequence[PoolSpec], demand: Demand, wait_penalty: float) -> dict[str, int]:
    if not pools:
        raise PlanError("no machine pools", hint="add a [pools.NAME] table to fleet.toml")
    index = {p.name: i for i, p in enumerate(pools)}
    if len(index) != len(pools):
        raise PlanError("two pools share a name")
    for p in pools:
        if p.cost_per_hour < 0 or not math.isfinite(p.cost_per_hour):
            raise PlanError(
                f"pool {p.name}: cost_per_hour is {p.cost_per_hour}; costs must be >= 0"
            )
        if p.allocation_s < 0 or p.health_check_s < 0:
            raise PlanError(f"pool {p.name}: negative allocation or health-check time")
    if wait_penalty < 0 or not math.isfinite(wait_penalty):
        raise PlanError(f"wait_penalty is {wait_penalty}; it must be >= 0")
    if demand.window_s <= 0:
        raise PlanError(f"window of {demand.window_s} s; it must be > 0")
    shape = (len(demand.models), demand.rate.shape[1] if demand.rate.ndim == 2 else -1)
    bad_hold = any(a is not None and a.shape != shape for a in (demand.hold_s, demand.lead_hold_s))
    if (
        demand.rate.shape != shape
        or demand.held.shape != shape
        or bad_hold
        or len(demand.model_pool) != shape[0]
    ):
        raise PlanError("demand arrays must be (models, windows) with one pool per model")
    if shape[1] < 1:
        raise PlanError("demand has no time windows")
    for arr, what in ((demand.rate, "rate"), (demand.held, "held slots")):
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise PlanError(f"demand {what} must be finite and >= 0")
    for m, pool in zip(demand.models, demand.model_pool, strict=True):
        if pool not in index:
            raise PlanError(
                f"model {m} runs in pool {pool!r}, which is not defined",
                hint=f"pools: {', '.join(sorted(index))}",
            )
    if demand.rate.sum() <= 0:
        raise PlanError("zero demand: no model needs a slot in any window; there is nothing to plan",
                        hint="check the trace covers the models in fleet.toml")  # fmt: skip
    return index


def pool_demand(
    pools: Sequence[PoolSpec], demand: Demand
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Sum the models' demand into their pools: ``(rate, held)``, each ``(pools, windows)``."""
    index = {p.name: i for i, p in enumerate(pools)}
    rows = np.array([index[p] for p in demand.model_pool], dtype=np.int64)
    rate = np.zeros((len(pools), demand.rate.shape[1]))
    held = np.zeros_like(rate)
    np.add.at(rate, rows, demand.rate)
    np.add.at(held, rows, demand.held)
    return rate, held


def solve_buffer(
    pools: Sequence[PoolSpec],
    demand: Demand,
    start_times: Mapping[str, float],
    *,
    wait_penalty: float,
    start_path: str = "warm_slot",
    quotas: Sequence[Quota] = (),
    max_wait_probability: float | None = None,
    tail: EmpiricalTail | None = None,
) -> Plan:
    """Ready slots per pool and window that minimise idle cost + ``wait_penalty`` x waiting.

    ``max_wait_probability`` (optional service level): in every pool and window, at most this
    share of slot requests may wait for a machine, ``P(D > b) <= eps``: a lower bound on
    ``b`` (it aims at a tail percentile, where the penalty weighs the mean wait).
    ``tail``: measured curves (:func:`fit_empirical_tail`) in place of the Skellam model
    wherever they have data.

    ``start_times`` maps a start path to its time in seconds (e.g. the medians of
    :class:`~zerostart.fleet.starttimes.StartTimes`); it adds to every request's wait and does
    not change the plan. ``wait_penalty`` is in $ per request-second. Raises
    :class:`PlanError` for missing pools, negative costs, zero demand, demand above supply,
    or a solver failure.
    """
    from ortools.linear_solver import pywraplp

    t_build = time.perf_counter()
    _check(pools, demand, wait_penalty)
    if max_wait_probability is not None and not 0 < max_wait_probability < 1:
        raise PlanError(f"max_wait_probability is {max_wait_probability}; it must be in (0, 1)")
    if start_path not in start_times:
        raise PlanError(
            f"no time for start path {start_path!r}", hint=f"have {sorted(start_times)}"
        )
    rate, held = pool_demand(pools, demand)
    up, down = lead_time_means(pools, demand)
    n_p, n_t = rate.shape
    window = demand.window_s
    caps = np.zeros((n_p, n_t), dtype=np.int64)
    for i, p in enumerate(pools):
        room = p.max_slots - held[i]
        if (room < 0).any():
            t = int(np.argmax(room < 0))
            raise PlanError(
                f"pool {p.name}, window {t}: replicas need {held[i, t]:.1f} slots but max_slots is "
                f"{p.max_slots}: demand exceeds supply",
                hint="raise max_slots or move models to another pool",
            )
        if p.max_slots == 0 and rate[i].sum() > 0:
            raise PlanError(f"pool {p.name} has no supply (max_slots = 0) but models need it")
        caps[i] = np.floor(room).astype(np.int64)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if solver is None:
        raise PlanError("OR-Tools has no GLOP solver in this build")
    inf = solver.infinity()
    curves: dict[tuple[int, int], npt.NDArray[np.float64]] = {}
    b_vars: dict[tuple[int, int], Any] = {}
    objective = solver.Objective()
    constant = 0.0
    n_cons = 0
    means = up - down  # E[D]
    for i, p in enumerate(pools):
        c_s = p.cost_per_hour / 3600.0  # $ per slot-second
        measured = tail.shortfall.get(p.name) if tail is not None else None
        for t in range(n_t):
            f_emp = measured[t] if measured is not None else None
            if f_emp is not None and tail is not None:
                f = f_emp
                means[i, t] = tail.mean[p.name][t]
            else:
                f = shortfall(up[i, t], down[i, t])
            mu = means[i, t]
            natural = f.size - 1
            if natural == 0:
                continue
            curves[i, t] = f
            # Presolve: past the slot whose tail P(N > k) no longer pays for it, the objective
            # only rises, and every constraint bounds b from above, so no optimum lies beyond.
            theta = c_s / (c_s + wait_penalty) if c_s + wait_penalty > 0 else 1.0
            over = -np.diff(f)  # P(D > k), k = 0..natural-1
            k_max = int(np.argmax(over <= theta)) if (over <= theta).any() else natural
            k_min = 0
            if max_wait_probability is not None:
                ok = over <= max_wait_probability
                k_min = int(np.argmax(ok)) if ok.any() else natural
                if k_min > caps[i, t]:
                    raise PlanError(
                        f"pool {p.name}, window {t}: waiting at most {max_wait_probability:g} of "
                        f"the time needs {k_min} ready slots, the supply leaves {caps[i, t]}",
                        hint="raise max_slots or relax max_wait_probability",
                    )
            k_max = min(max(k_max, k_min), int(caps[i, t]))
            if k_max == 0:
                continue
            b = solver.NumVar(float(k_min), float(k_max), f"b_{i}_{t}")
            w = solver.NumVar(0.0, inf, f"w_{i}_{t}")
            b_vars[i, t] = b
            objective.SetCoefficient(b, window * c_s)
            objective.SetCoefficient(w, window * (c_s + wait_penalty))
            constant -= window * c_s * mu
            slopes = np.diff(f)
            for k in range(k_max):  # w >= f(k) + s_k (b - k)
                ct = solver.Constraint(float(f[k] - slopes[k] * k), inf)
                ct.SetCoefficient(w, 1.0)
                ct.SetCoefficient(b, float(-slopes[k]))
            n_cons += k_max
    for q in quotas:
        members = [i for i, p in enumerate(pools) if p.name in q.pools]
        for t in range(n_t):
            room = q.max_slots - sum(held[i, t] for i in members)
            if room < 0:
                raise PlanError(
                    f"quota {q.name}, window {t}: replicas alone exceed {q.max_slots} slots"
                )
            ct = solver.Constraint(-inf, float(room))
            for i in members:
                if (i, t) in b_vars:
                    ct.SetCoefficient(b_vars[i, t], 1.0)
            n_cons += 1
    objective.SetMinimization()
    build_s = time.perf_counter() - t_build
    t_solve = time.perf_counter()
    status = solver.Solve()
    solve_s = time.perf_counter() - t_solve
    if status == pywraplp.Solver.INFEASIBLE:
        raise PlanError(
            "no plan meets every quota", hint="raise the quotas or relax max_wait_probability"
        )
    if status != pywraplp.Solver.OPTIMAL:
        raise PlanError(f"GLOP did not find an optimum (status {status})")
    lp = np.zeros((n_p, n_t))
    for key, var in b_vars.items():
        lp[key] = var.solution_value()
    slots = _round(pools, quotas, held, lp, curves, caps, window, wait_penalty)
    return _summarise(pools, demand, rate, means, slots, lp, curves, start_times[start_path], wait_penalty,
                      solver.Objective().Value() + constant, solve_s, build_s,
                      solver.NumVariables(), n_cons)  # fmt: skip


def _round(
    pools: Sequence[PoolSpec],
    quotas: Sequence[Quota],
    held: npt.NDArray[np.float64],
    lp: npt.NDArray[np.float64],
    curves: dict[tuple[int, int], npt.NDArray[np.float64]],
    caps: npt.NDArray[np.int64],
    window: float,
    penalty: float,
) -> npt.NDArray[np.int64]:
    """Round the LP's ``b`` down, then add single slots while one lowers the exact objective."""
    slots = np.floor(lp + 1e-7).astype(np.int64)
    quota_of = {p.name: q for q in quotas for p in pools if p.name in q.pools}
    used: dict[tuple[str, int], float] = {}
    for q in quotas:
        members = [i for i, p in enumerate(pools) if p.name in q.pools]
        for t in range(lp.shape[1]):
            used[q.name, t] = float(sum(held[i, t] + slots[i, t] for i in members))

    def gain(i: int, t: int) -> float:
        f = curves[i, t]
        b = int(slots[i, t])
        if b + 1 >= f.size or b + 1 > caps[i, t]:
            return 0.0
        s = f[b + 1] - f[b]
        return float(window * (pools[i].cost_per_hour / 3600 * (1 + s) + penalty * s))

    heap = [(gain(i, t), i, t) for (i, t) in curves]
    heap = [h for h in heap if h[0] < -1e-12]
    heapq.heapify(heap)
    while heap:
        _g, i, t = heapq.heappop(heap)
        quota = quota_of.get(pools[i].name)
        if quota is not None and used[quota.name, t] + 1 > quota.max_slots + 1e-9:
            continue
        slots[i, t] += 1
        if quota is not None:
            used[quota.name, t] += 1
        g2 = gain(i, t)
        if g2 < -1e-12:
            heapq.heappush(heap, (g2, i, t))
    return slots


def _summarise(
    pools: Sequence[PoolSpec],
    demand: Demand,
    rate: npt.NDArray[np.float64],
    means: npt.NDArray[np.float64],
    slots: npt.NDArray[np.int64],
    lp: npt.NDArray[np.float64],
    curves: dict[tuple[int, int], npt.NDArray[np.float64]],
    start_s: float,
    penalty: float,
    lp_objective: float,
    solve_s: float,
    build_s: float,
    n_vars: int,
    n_cons: int,
) -> Plan:
    n_p, n_t = slots.shape
    stockout = np.zeros((n_p, n_t))
    slot_wait = np.zeros((n_p, n_t))
    idle_h = idle_cost = wait_cost = 0.0
    per_day = 86400.0 / (demand.window_s * n_t)
    for i, p in enumerate(pools):
        for t in range(n_t):
            b = int(slots[i, t])
            mu = means[i, t]
            f = curves.get((i, t))
            if f is None:  # no demand here: every held slot is idle
                idle = float(b)
                back = 0.0
            else:
                back = float(f[min(b, f.size - 1)])
                idle = b - mu + back
                stockout[i, t] = float(f[b] - f[b + 1]) if b + 1 < f.size else 0.0  # P(D > b)
            if rate[i, t] > 0:
                slot_wait[i, t] = back / rate[i, t]
            idle_h += idle * demand.window_s / 3600 * per_day
            idle_cost += idle * demand.window_s / 3600 * p.cost_per_hour * per_day
            wait_cost += back * demand.window_s * penalty * per_day
    return Plan(
        pools=tuple(p.name for p in pools),
        window_s=demand.window_s,
        slots=slots,
        lp_slots=lp,
        rate=rate,
        stockout=stockout,
        slot_wait_s=slot_wait,
        start_s=float(start_s),
        idle_slot_hours_per_day=idle_h,
        idle_cost_per_day=idle_cost,
        wait_cost_per_day=wait_cost,
        lp_objective_per_day=lp_objective * per_day,
        solve_s=solve_s,
        build_s=build_s,
        variables=n_vars,
        constraints=n_cons,
    )


def exact_cost(
    pools: Sequence[PoolSpec],
    up: npt.NDArray[np.float64],
    down: npt.NDArray[np.float64],
    slots: npt.NDArray[np.int64],
    window_s: float,
    wait_penalty: float,
) -> float:
    """The objective at integer ``slots`` without the LP ($ over the windows), for checks.

    ``up`` and ``down`` are :func:`lead_time_means`.
    """
    total = 0.0
    for i, p in enumerate(pools):
        for t in range(slots.shape[1]):
            b = int(slots[i, t])
            back = float(shortfall(up[i, t], down[i, t], b)[-1])
            idle = b - (up[i, t] - down[i, t]) + back
            total += window_s * (p.cost_per_hour / 3600 * idle + wait_penalty * back)
    return total
