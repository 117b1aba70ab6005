"""How many warm slots to hold: static, or the buffer LP re-solved on a schedule (issue 11).

Theory of operation
-------------------
The gateway records, per model, request arrivals and replica starts in a sliding
window (:class:`Recent`, 1-second buckets over ``[pool] demand_window``) and every
start's time by path. With ``[pool] sizing = "lp"`` a :class:`PoolSizer` task wakes
every ``resolve_interval`` and, in a thread (the solve never runs on the event loop):

1. builds this node's LP input (:func:`node_input`): one pool per slot kind (``cpu``,
   ``cuda``, ``container`` for image models) whose lead time is the time to boot a
   replacement slot, measured by this process (median of the pool's recent slot
   boots), else the cold boot's median in ``bench/results/`` (a slot boot is a cold
   boot without the model: interpreter, imports, the canary's check), else
   :data:`DEFAULT_LEAD_S`; demand per model from its arrival rate ``lambda`` and
   ``idle_timeout`` ``tau`` under the platform's keep-alive (Poisson arrivals; a
   replica starts when a request comes more than ``tau`` after the last one):
   ``starts = lambda e^(-lambda tau)``, mean replica life ``H = (e^(lambda tau) - 1)
   / lambda``, replicas held ``1 - e^(-lambda tau)`` (renewal-reward: a cycle is a
   life plus an idle gap of mean ``1/lambda``). The slot request rate is the larger
   of that prediction and the starts actually counted in the window (scale-outs,
   replacements). A model with ``min_replicas >= 1`` never starts from zero.
2. solves :func:`zerostart.fleet.lp.solve_buffer` (GLOP) with one window, the
   ``[pool]`` costs and ``wait_penalty``, and the start-path times measured by this
   process (``bench/results/`` for paths it has not used yet);
3. sets each kind's size with :meth:`WarmPool.resize`, never above the configured
   ``[pool] cpu`` / ``cuda`` (container slots share the CPU maximum), and logs one
   line with the new sizes and why.

No demand at all skips the solve: every kind goes to 0. A failed solve keeps the
sizes it had and says why in ``/status``. OR-Tools (the ``fleet`` extra) is
imported by the first solve, never at import of this module.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zerostart.platform_toml import PlatformConfig

if TYPE_CHECKING:
    from zerostart.platform.metrics import GatewayMetrics
    from zerostart.platform.pool import WarmPool

log = logging.getLogger("zerostart.platform.sizing")

BUCKET_S = 1.0  # arrival buckets: fixed memory however high the rate
RECENT_STARTS = 32  # start times kept per path
DEFAULT_LEAD_S = 0.25  # no measurement, no bench/results: ~215 ms cold boot (README) + margin
PATHS = ("warm_slot", "snapshot", "cold_boot")


class RateWindow:
    """Events per second over the last ``window_s`` seconds (or since ``since``, if later)."""

    def __init__(self, window_s: float, since: float) -> None:
        self.window_s = window_s
        self.since = since
        self._buckets: deque[list[float]] = deque()  # [bucket start, count]
        self._total = 0

    def add(self, now: float, n: int = 1) -> None:
        start = math.floor(now / BUCKET_S) * BUCKET_S
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([start, float(n)])
        self._total += n
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + BUCKET_S <= now - self.window_s:
            self._total -= int(self._buckets.popleft()[1])

    def count(self, now: float) -> int:
        self._expire(now)
        return self._total

    def rate(self, now: float) -> float:
        """Events / s; the span is the window, or the time since ``since`` (at least a bucket)."""
        span = max(min(self.window_s, now - self.since), BUCKET_S)
        return self.count(now) / span


class Recent:
    """What the gateway measured: arrivals and starts per model, start times per path."""

    def __init__(self, window_s: float, now: float | None = None) -> None:
        self.window_s = window_s
        self.since = time.monotonic() if now is None else now
        self.arrivals: dict[str, RateWindow] = {}
        self.starts: dict[str, RateWindow] = {}
        self.start_s: dict[str, deque[float]] = {p: deque(maxlen=RECENT_STARTS) for p in PATHS}

    def _window(self, table: dict[str, RateWindow], model: str) -> RateWindow:
        w = table.get(model)
        if w is None:
            w = table[model] = RateWindow(self.window_s, self.since)
        return w

    def arrival(self, model: str, now: float) -> None:
        self._window(self.arrivals, model).add(now)

    def started(self, model: str, path: str, seconds: float, now: float) -> None:
        self._window(self.starts, model).add(now)
        self.start_s.setdefault(path, deque(maxlen=RECENT_STARTS)).append(seconds)

    def arrival_rate(self, model: str, now: float) -> float:
        w = self.arrivals.get(model)
        return w.rate(now) if w is not None else 0.0

    def start_rate(self, model: str, now: float) -> float:
        w = self.starts.get(model)
        return w.rate(now) if w is not None else 0.0

    def start_medians(self) -> dict[str, float]:
        return {p: statistics.median(v) for p, v in self.start_s.items() if v}

    def status(self, now: float, models: list[str]) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "models": {
                m: {
                    "arrivals_per_s": round(self.arrival_rate(m, now), 4),
                    "starts_per_s": round(self.start_rate(m, now), 4),
                }
                for m in models
            },
            "start_s": {p: round(v, 4) for p, v in self.start_medians().items()},
        }


# -- the node's LP input and its answer (pure) ------------------------------------------------


@dataclass(frozen=True)
class ModelLoad:
    """One model's recent load: what the LP's demand row is made of."""

    name: str
    kind: str  # slot kind: cpu | cuda | container
    arrivals_per_s: float
    starts_per_s: float  # counted in the window (any path, any reason)
    idle_timeout_s: float
    min_replicas: int = 0


@dataclass(frozen=True)
class NodeInput:
    """Everything one re-plan needs; built on the event loop, solved in a thread."""

    models: tuple[ModelLoad, ...]
    max_slots: Mapping[str, int]  # per kind: the configured maximum
    cost_per_hour: Mapping[str, float]  # $ per slot-hour, per kind
    lead_s: Mapping[str, float]  # per kind: a new slot's boot time
    lead_source: Mapping[str, str]
    start_s: Mapping[str, float]  # per start path (reported with the plan; does not move it)
    wait_penalty: float  # $ per request-second short of a slot
    window_s: float


@dataclass(frozen=True)
class Sizing:
    """One re-plan's answer: slots per kind, and one line per kind saying why."""

    sizes: dict[str, int]
    reasons: dict[str, str]
    lp_slots: dict[str, int] = field(default_factory=dict)  # before the cap
    expected_wait_s: dict[str, float] = field(default_factory=dict)
    solve_s: float = 0.0


def keepalive_demand(
    arrivals_per_s: float, idle_timeout_s: float, min_replicas: int = 0
) -> tuple[float, float, float]:
    """``(starts / s, replicas held, mean replica life s)`` under keep-alive ``idle_timeout_s``.

    Poisson arrivals at ``lambda``; a replica lives until ``tau`` passes without a request.
    A life is a busy period of mean ``(e^(lambda tau) - 1) / lambda`` (Wald's identity on the
    gaps shorter than ``tau``), the cycle adds an idle gap of mean ``1 / lambda``, so starts
    come at ``lambda e^(-lambda tau)`` and a replica is up ``1 - e^(-lambda tau)`` of the time.
    With ``min_replicas >= 1`` a replica is always up and none starts from zero.
    """
    lam, tau = max(arrivals_per_s, 0.0), idle_timeout_s
    x = min(lam * tau, 700.0)  # e^700 is near the float limit; such a model never idles anyway
    life = math.expm1(x) / lam if x > 1e-9 else tau
    if min_replicas >= 1:
        return 0.0, float(min_replicas), life
    if lam <= 0:
        return 0.0, 0.0, life
    return lam * math.exp(-x), -math.expm1(-x), life


def plan_sizes(node: NodeInput) -> Sizing:
    """Solve the buffer LP for ``node``; sizes per kind, capped at ``node.max_slots``.

    Raises :class:`~zerostart.fleet.errors.PlanError` when the LP does (e.g. a negative
    cost); without OR-Tools, ``ImportError``.
    """
    kinds = [k for k, n in node.max_slots.items() if n > 0]
    sizes = dict.fromkeys(node.max_slots, 0)
    reasons = {k: "no slots may be held (configured maximum 0)" for k in node.max_slots}
    rows = []
    for m in node.models:
        if m.kind not in kinds:
            continue
        starts, held, life = keepalive_demand(m.arrivals_per_s, m.idle_timeout_s, m.min_replicas)
        rows.append((m, max(starts, m.starts_per_s), held, life))
    total = {k: sum(r[1] for r in rows if r[0].kind == k) for k in kinds}
    for k in kinds:
        arrivals = sum(r[0].arrivals_per_s for r in rows if r[0].kind == k)
        reasons[k] = (
            f"no slot requests expected ({arrivals * 60:.2f} arrivals/min over "
            f"{node.window_s:g} s keep their replicas warm or there are none)"
        )
    kinds = [k for k in kinds if total[k] > 0]
    if not kinds:
        return Sizing(sizes, reasons)

    import numpy as np

    from zerostart.fleet.config import PoolSpec
    from zerostart.fleet.lp import Demand, solve_buffer

    rows = [r for r in rows if r[0].kind in kinds]
    pools = [
        PoolSpec(
            name=k,
            device="cuda" if k == "cuda" else "cpu",
            cost_per_hour=node.cost_per_hour[k],
            allocation_s=0.0,  # the node is up; a slot only boots
            health_check_s=node.lead_s[k],  # the cap comes after: the log says what the LP wanted
        )
        for k in kinds
    ]
    demand = Demand(
        models=tuple(r[0].name for r in rows),
        model_pool=tuple(r[0].kind for r in rows),
        rate=np.array([[r[1]] for r in rows], dtype=np.float64),
        held=np.array([[r[2]] for r in rows], dtype=np.float64),
        window_s=node.window_s,
        hold_s=np.array([[r[3]] for r in rows], dtype=np.float64),
    )
    start_s = dict(node.start_s)
    start_s.setdefault("warm_slot", min(node.lead_s.values()))
    plan = solve_buffer(pools, demand, start_s, wait_penalty=node.wait_penalty)
    out = Sizing(sizes, reasons, solve_s=plan.solve_s + plan.build_s)
    for i, k in enumerate(plan.pools):
        lp = int(plan.slots[i, 0])
        n = min(lp, node.max_slots[k])
        sizes[k] = n
        out.lp_slots[k] = lp
        out.expected_wait_s[k] = float(plan.slot_wait_s[i, 0])
        reasons[k] = (
            f"{plan.rate[i, 0] * 3600:.1f} slot requests/h, a slot boots in "
            f"{node.lead_s[k] * 1e3:.0f} ms ({node.lead_source[k]}), "
            f"P(no ready slot) {plan.stockout[i, 0]:.2%}"
            + (f", LP wants {lp}, capped at max {node.max_slots[k]}" if lp > n else "")
        )
    return out


# -- the schedule --------------------------------------------------------------------------------


def _bench_dirs() -> list[Path]:
    """Where ``bench/results`` may be: the working folder, then this checkout's."""
    here = Path(__file__).resolve().parents[3] / "bench" / "results"
    return [Path("bench/results"), here]


def bench_start_times() -> tuple[dict[str, float], str]:
    """Start-path medians from ``bench/results/`` (``fleet/starttimes.py``), and from where."""
    from zerostart.fleet.errors import FleetError
    from zerostart.fleet.starttimes import load_start_times

    for folder in _bench_dirs():
        if (folder / "coldstart_cpu.json").is_file():
            try:
                times = load_start_times(folder)
            except FleetError:
                continue
            return {p: times.median(p) for p in times.samples}, f"bench {folder}"
    return dict.fromkeys(PATHS, DEFAULT_LEAD_S), "no bench/results: default"


class PoolSizer:
    """Re-plans ``pool``'s sizes every ``[pool] resolve_interval``; see the module docstring."""

    def __init__(self, config: PlatformConfig, pool: WarmPool, recent: Recent) -> None:
        self.config = config
        self.pool = pool
        self.recent = recent
        c = config.pool
        # what the starter opened the pool with: the maxima, per kind
        self.max_slots = {
            k: min(n, c.cuda if k == "cuda" else c.cpu) for k, n in pool.sizes.items()
        }
        self.replans = 0
        self.failures = 0
        self.last: Sizing | None = None
        self.last_at: float | None = None
        self.last_error: str | None = None
        self._bench: tuple[dict[str, float], str] | None = None

    def node_input(self, now: float) -> NodeInput:
        """The LP input from what this process measured (on the event loop: cheap reads)."""
        c = self.config.pool
        loads = []
        for m in self.config.models.values():
            if m.source_kind == "reference":
                continue  # no slot path for a registry reference (starter.py)
            kind = "container" if m.source_kind == "image" else m.device
            loads.append(ModelLoad(
                m.name, kind, self.recent.arrival_rate(m.name, now),
                self.recent.start_rate(m.name, now), m.idle_timeout_s, m.min_replicas,
            ))  # fmt: skip
        bench, bench_source = self._bench or ({}, "")
        lead, source = {}, {}
        for k in self.max_slots:
            boots = list(self.pool.boot_s[k])
            if boots:
                lead[k], source[k] = statistics.median(boots), f"median of {len(boots)} slot boots"
            else:
                lead[k] = bench.get("cold_boot", DEFAULT_LEAD_S)
                source[k] = f"cold boot, {bench_source}"
        start_s = {**bench, **self.recent.start_medians()}
        return NodeInput(
            tuple(loads), dict(self.max_slots),
            {k: c.cost_per_hour(k) for k in self.max_slots}, lead, source, start_s,
            c.wait_penalty, c.demand_window_s,
        )  # fmt: skip

    async def replan(self) -> Sizing | None:
        """One re-plan: solve in a thread, resize the pool, log one line. None if it failed."""
        if self._bench is None:
            self._bench = await asyncio.to_thread(bench_start_times)
        node = self.node_input(time.monotonic())
        try:
            sizing = await asyncio.to_thread(plan_sizes, node)
        except Exception as exc:  # PlanError, or a solver bug: keep the sizes we have
            self.failures += 1
            self.last_error = str(exc)
            log.warning("event=pool_replan_failed sizes_kept reason=%s", exc)
            return None
        was = {k: self.pool.resize(k, n) for k, n in sizing.sizes.items()}
        self.replans += 1
        self.last, self.last_at, self.last_error = sizing, time.time(), None
        log.info(
            "event=pool_replan %s | %s",
            " ".join(f"{k}={n}(was {was[k]})" for k, n in sizing.sizes.items()),
            "; ".join(f"{k}: {r}" for k, r in sizing.reasons.items()),
        )
        return sizing

    async def run(self) -> None:
        """Re-plan every ``resolve_interval`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.pool.resolve_interval_s)
            await self.replan()

    def status(self) -> dict[str, Any]:
        c = self.config.pool
        out: dict[str, Any] = {
            "sizing": "lp",
            "resolve_interval_s": c.resolve_interval_s,
            "max_slots": dict(self.max_slots),
            "sizes": {k: self.pool.sizes[k] for k in self.max_slots},
            "replans": self.replans,
            "failures": self.failures,
            "last_error": self.last_error,
        }
        if self.last is not None:
            out["last"] = {
                "at": self.last_at,
                "sizes": self.last.sizes,
                "lp_slots": self.last.lp_slots,
                "reasons": self.last.reasons,
                "expected_slot_wait_s": self.last.expected_wait_s,
                "solve_s": round(self.last.solve_s, 6),
            }
        return out


def register_gauges(
    metrics: GatewayMetrics,
    models: list[str],
    recent: Recent,
    sizes: Callable[[], Mapping[str, int]],
    sizer: Callable[[], PoolSizer | None],
) -> None:
    """``/metrics``: arrival rates, the pool's target size and maximum, re-plans."""

    def arrivals() -> list[tuple[tuple[tuple[str, str], ...], float]]:
        now = time.monotonic()
        return [((("model", m),), recent.arrival_rate(m, now)) for m in models]

    def target() -> list[tuple[tuple[tuple[str, str], ...], float]]:
        return [((("device", d),), float(n)) for d, n in sizes().items()]

    def maxima() -> list[tuple[tuple[tuple[str, str], ...], float]]:
        s = sizer()
        return [((("device", d),), float(n)) for d, n in s.max_slots.items()] if s else []

    def replans() -> list[tuple[tuple[tuple[str, str], ...], float]]:
        s = sizer()
        if s is None:
            return []
        return [
            ((("result", "ok"),), float(s.replans)),
            ((("result", "failed"),), float(s.failures)),
        ]

    metrics.gauge(
        "arrival_rate_per_second",
        "Requests per second per model over the pool's demand window.",
        arrivals,
    )
    metrics.gauge("pool_target_slots", "Warm slots the pool holds now, by device kind.", target)
    metrics.gauge("pool_max_slots", "Most warm slots the LP may set, by device kind.", maxima)
    metrics.gauge("pool_replans_total", "Re-plans of the pool's size.", replans, kind="counter")
