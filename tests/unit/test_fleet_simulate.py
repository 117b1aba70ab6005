"""The keep-alive policies and the fleet simulator on traces whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from zerostart.fleet.config import FleetConfig, PoolSpec
from zerostart.fleet.errors import FleetError
from zerostart.fleet.keepalive import COLD, PREWARM, KeepAlive, slot_requests
from zerostart.fleet.simulate import compare, parse_policy, run_policy
from zerostart.fleet.starttimes import StartTimes
from zerostart.fleet.trace import Trace

LEAD_S = 100.0  # allocation 90 s + health check 10 s
SLOT_S = 0.5  # the start path once a slot is ready


def _trace(every_min: int, days: int = 1, apps: int = 1) -> Trace:
    counts = np.zeros((apps, days * 1440), dtype=np.int64)
    counts[:, ::every_min] = 1
    return Trace(tuple(f"app{i}" for i in range(apps)), counts)


def _fleet(**plan: float) -> FleetConfig:
    pool = PoolSpec("a", "cpu", cost_per_hour=1.0, allocation_s=90.0, health_check_s=10.0)
    return FleetConfig(pools={"a": pool}, default_pool="a", **plan)  # type: ignore[arg-type]


START = StartTimes.fixed(exec_s=0.05, warm_slot=SLOT_S)


def test_fixed_keepalive_counts_cold_starts() -> None:
    trace = _trace(every_min=5)
    long = slot_requests(trace, KeepAlive("fixed", 600.0), exec_s=0.05)
    short = slot_requests(trace, KeepAlive("fixed", 60.0), exec_s=0.05)
    assert (long.kind == COLD).sum() == 1  # gaps of ~5 min never outlast 10 min
    assert (short.kind == COLD).sum() == 288  # every invocation: gaps of 4-6 min > 1 min
    # the single replica is held from the first invocation to the last + 10 min (clipped)
    assert long.end[0] - long.time[0] == pytest.approx(1440 * 60 - long.time[0], abs=1e-6)


def test_hybrid_learns_a_periodic_app_and_prewarms_it() -> None:
    trace = _trace(every_min=30, days=2)
    hybrid = slot_requests(trace, KeepAlive("hybrid"), exec_s=0.05)
    assert (hybrid.kind == COLD).sum() == 1  # standard 4 h keep-alive first, then pre-warms
    prewarms = (hybrid.kind == PREWARM).sum()
    assert prewarms >= 2 * 48 - 15  # after 10 idle times the histogram is representative
    # idle times fall in the 29-minute bin: pre-warm after 0.9 x 29 min, keep to 1.1 x 30 min
    pre = hybrid.kind == PREWARM
    assert np.all(hybrid.end[pre] - hybrid.time[pre] <= 1.1 * 30 * 60 - 0.9 * 29 * 60 + 1e-6)
    fixed = slot_requests(trace, KeepAlive("fixed", 600.0), exec_s=0.05)
    assert (hybrid.end - hybrid.time).sum() < 0.75 * (fixed.end - fixed.time).sum()


def test_no_buffer_waits_for_a_machine_and_a_static_buffer_does_not() -> None:
    trace = _trace(every_min=60)
    cfg = _fleet(keepalive_s=60.0)
    none, static = compare(trace, cfg, START, ["none", "static:1"], measure_from_s=3600.0)
    # every hourly request finds no machine (the last one left with its replica): lead + start
    assert none["cold_starts"] == 23
    assert none["cold_wait_s"]["p50"] == pytest.approx(LEAD_S + SLOT_S)
    assert none["cold_wait_s"]["p999"] == pytest.approx(LEAD_S + SLOT_S)
    assert static["cold_wait_s"]["p99"] == pytest.approx(SLOT_S)
    assert static["cold_start_fraction"] == pytest.approx(1.0)
    # a buffer of one slot costs about one slot all day, and no more than one extra per request
    measured_h = 23.0
    extra_h = 23 * (LEAD_S + 60.0 + 60.0) / 3600
    assert measured_h < static["machine_slot_hours"] < measured_h + extra_h
    assert none["machine_slot_hours"] < 23 * (60.0 + 60.0 + SLOT_S) / 3600 + 1e-6


def test_lp_plan_sets_the_buffer_and_removes_machine_waits() -> None:
    counts = np.random.default_rng(3).poisson(0.1, (40, 1440))  # independent apps, ~1 per 10 min
    trace = Trace(tuple(f"app{i}" for i in range(40)), counts)
    cfg = _fleet(keepalive_s=60.0, wait_penalty=0.05)
    none, lp = compare(trace, cfg, START, ["none", "lp"], measure_from_s=3600.0)
    assert none["cold_wait_s"]["p99"] > LEAD_S  # without a buffer the tail waits for machines
    assert lp["cold_wait_s"]["p50"] == pytest.approx(SLOT_S)
    assert lp["cold_wait_s"]["p99"] < 0.2 * none["cold_wait_s"]["p99"]
    assert min(lp["plan_slots_per_pool"]["a"]) >= 1
    assert lp["buffer_idle_slot_hours"] > none["buffer_idle_slot_hours"]


def test_policy_specs() -> None:
    assert parse_policy("static:3", 60).static_slots == 3
    combo = parse_policy("lp+keepalive:5m", 60)
    assert (combo.buffer, combo.keepalive.keepalive_s) == ("lp", 300.0)
    assert parse_policy("hybrid", 60).keepalive.kind == "hybrid"
    for bad in ("static:-1", "fast", "keepalive:soon"):
        with pytest.raises(FleetError, match="unknown policy"):
            parse_policy(bad, 60)


def test_lp_without_a_plan_is_refused() -> None:
    trace = _trace(every_min=60)
    req = slot_requests(trace, KeepAlive("fixed", 60.0), exec_s=0.05)
    with pytest.raises(FleetError, match="needs a plan"):
        run_policy(trace, req, _fleet(), parse_policy("lp", 60), START)


def test_rise_over_a_lead_time_matches_brute_force() -> None:
    from zerostart.fleet.simulate import _rise_over

    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0, 100, 300))
    held = np.cumsum(rng.choice([-1, 1], 300)) + 50
    sample = rng.random(300) < 0.5
    got = _rise_over(t, held, 7.0, sample)
    want = []
    for j in np.nonzero(sample)[0]:
        inside = held[(t >= t[j] - 7.0) & (t <= t[j])]
        before = held[t < t[j] - 7.0]
        low = min(inside.min(), before[-1] if before.size else 0)
        want.append(held[j] - low)
    assert got.tolist() == want


def test_replay_tail_predicts_the_simulated_wait_in_a_one_slot_pool() -> None:
    """In-sample, one-slot machines: the replay's P(wait | b) is the simulator's share."""
    from zerostart.fleet.simulate import replay_tail
    from zerostart.fleet.tracegen import GenParams, generate

    trace = generate(GenParams(apps=150, days=1, seed=4))
    pool = PoolSpec("gpu", "cuda", 1.0, 180.0, 30.0, slots_per_machine=1, max_slots=10_000)
    cfg = FleetConfig(pools={"gpu": pool}, default_pool="gpu", keepalive_s=60.0)
    req = slot_requests(trace, KeepAlive("fixed", 60.0), exec_s=START.exec_s, seed=0)
    fit = replay_tail(trace, req, cfg, min_samples=10**9)  # one curve for the whole day
    curve = fit.shortfall["gpu"][0]
    assert curve is not None
    for b in (1, 3, 6):
        row = compare(trace, cfg, START, [f"static:{b}"], measure_from_s=900.0)[0]
        predicted = float(curve[b] - curve[b + 1]) if b + 1 < curve.size else 0.0
        assert predicted == pytest.approx(row["pools"]["gpu"]["waited_for_machine"], abs=0.02)
    with pytest.raises(FleetError, match="tail model"):
        from zerostart.fleet.simulate import plan_from_trace

        plan_from_trace(trace, cfg, START, KeepAlive("fixed", 60.0), tail="bogus")
