"""The buffer LP against brute force, its shortfall function against a direct sum, bad input."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from zerostart.fleet.config import PoolSpec, Quota
from zerostart.fleet.errors import PlanError
from zerostart.fleet.lp import (
    Demand,
    empirical_shortfall,
    exact_cost,
    fit_empirical_tail,
    lead_time_means,
    shortfall,
    solve_buffer,
)

START = {"warm_slot": 0.06}


def _pmf(mu: float, n: int) -> list[float]:
    return [math.exp(-mu) * mu**k / math.factorial(k) for k in range(n)]


@pytest.mark.parametrize(("up", "down"), [(0.7, 0.0), (3.0, 2.5), (8.0, 8.0), (0.0, 4.0)])
def test_shortfall_is_the_expected_excess_of_a_poisson_difference(up: float, down: float) -> None:
    n = 60
    pa, pr = _pmf(up, n), _pmf(down, n)
    want = [
        sum(pa[a] * pr[r] * max(a - r - k, 0) for a in range(n) for r in range(n)) for k in range(8)
    ]
    assert shortfall(up, down, 7) == pytest.approx(want, abs=1e-9)


def _instance(seed: int) -> tuple[list[PoolSpec], Demand, list[Quota], float]:
    rng = np.random.default_rng(seed)
    pools = [
        PoolSpec(
            "a", "cpu", float(rng.uniform(0.05, 3)), 60, 10, max_slots=int(rng.integers(4, 12))
        ),
        PoolSpec("b", "cuda", float(rng.uniform(0.05, 3)), 200, 30, max_slots=40),
    ]
    demand = Demand(
        ("m1", "m2", "m3"), ("a", "b", "a"),
        rng.uniform(0, 0.03, (3, 2)), rng.uniform(0, 2, (3, 2)), 3600.0,
        rng.uniform(30, 900, (3, 2)),
    )  # fmt: skip
    quotas = [Quota("q", ("a", "b"), int(rng.integers(5, 14)))] if seed % 2 else []
    return pools, demand, quotas, float(rng.uniform(1e-4, 0.05))


@pytest.mark.parametrize("seed", range(6))
def test_plan_matches_brute_force_on_small_instances(seed: int) -> None:
    pools, demand, quotas, penalty = _instance(seed)
    plan = solve_buffer(pools, demand, START, wait_penalty=penalty, quotas=quotas)
    up, down = lead_time_means(pools, demand)
    held = np.zeros((2, 2))
    for m, p in enumerate(demand.model_pool):
        held[0 if p == "a" else 1] += demand.held[m]

    def feasible(s: np.ndarray) -> bool:
        if any(s[i, t] + held[i, t] > pools[i].max_slots for i in range(2) for t in range(2)):
            return False
        return all(
            s[:, t].sum() + held[:, t].sum() <= q.max_slots for q in quotas for t in range(2)
        )

    table = {(i, t): shortfall(up[i, t], down[i, t], 16) for i in range(2) for t in range(2)}

    def cost(s: np.ndarray) -> float:  # the objective, summed independently of the LP code
        total = 0.0
        for (i, t), f in table.items():
            b = int(s[i, t])
            idle = b - (up[i, t] - down[i, t]) + f[b]
            total += 3600.0 * (pools[i].cost_per_hour / 3600 * idle + penalty * f[b])
        return total

    best = min(
        (np.array(c).reshape(2, 2) for c in itertools.product(range(16), repeat=4)
         if feasible(np.array(c).reshape(2, 2))),
        key=cost,
    )  # fmt: skip
    best_cost = cost(best)
    assert exact_cost(pools, up, down, best, 3600.0, penalty) == pytest.approx(best_cost, rel=1e-9)
    assert feasible(plan.slots)
    assert exact_cost(pools, up, down, plan.slots, 3600.0, penalty) == pytest.approx(
        best_cost, rel=1e-9
    )
    # the LP is a relaxation: never above the integer optimum (its value is per day: 2 windows x 12)
    assert plan.lp_objective_per_day / 12 <= best_cost + 1e-6


def test_more_penalty_buys_more_slots_and_less_waiting() -> None:
    pools, demand, _, _ = _instance(0)
    cheap = solve_buffer(pools, demand, START, wait_penalty=1e-5)
    dear = solve_buffer(pools, demand, START, wait_penalty=1.0)
    assert dear.slots.sum() > cheap.slots.sum()
    assert dear.stockout.max() < cheap.stockout.max()
    assert dear.idle_slot_hours_per_day > cheap.idle_slot_hours_per_day


def _one_pool(**kw: object) -> list[PoolSpec]:
    spec = {
        "name": "a",
        "device": "cpu",
        "cost_per_hour": 1.0,
        "allocation_s": 60.0,
        "health_check_s": 5.0,
    }
    spec.update(kw)
    return [PoolSpec(**spec)]  # type: ignore[arg-type]


def _demand(rate: float = 0.01, held: float = 1.0, pool: str = "a") -> Demand:
    return Demand(("m",), (pool,), np.full((1, 3), rate), np.full((1, 3), held), 3600.0)


@pytest.mark.parametrize(
    ("pools", "demand", "penalty", "message"),
    [
        ([], _demand(), 0.01, "no machine pools"),
        (_one_pool(), _demand(rate=0.0), 0.01, "zero demand"),
        (_one_pool(cost_per_hour=-1.0), _demand(), 0.01, "costs must be >= 0"),
        (_one_pool(), _demand(), -0.5, "wait_penalty"),
        (_one_pool(), _demand(pool="gpu"), 0.01, "not defined"),
        (_one_pool(max_slots=0), _demand(held=0.0), 0.01, "no supply"),
        (_one_pool(max_slots=3), _demand(held=5.0), 0.01, "demand exceeds supply"),
        (_one_pool(), _demand(rate=float("nan")), 0.01, "finite"),
    ],
)
def test_degenerate_input_is_a_clear_error(
    pools: list[PoolSpec], demand: Demand, penalty: float, message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        solve_buffer(pools, demand, START, wait_penalty=penalty)


def test_unknown_start_path_is_refused() -> None:
    with pytest.raises(PlanError, match="start path"):
        solve_buffer(_one_pool(), _demand(), START, wait_penalty=0.01, start_path="snapshot")


def test_service_level_bounds_the_share_of_requests_that_wait() -> None:
    pools, demand, _, _ = _instance(2)
    pools = [replace(p, max_slots=40) for p in pools]
    plan = solve_buffer(pools, demand, START, wait_penalty=1e-6, max_wait_probability=0.01)
    free = solve_buffer(pools, demand, START, wait_penalty=1e-6)
    assert (plan.stockout <= 0.01).all()
    assert free.stockout.max() > 0.01  # the bound is what made the difference
    tight = [PoolSpec("a", "cpu", 1.0, 600.0, 0.0, max_slots=3)]
    with pytest.raises(PlanError, match=r"needs \d+ ready slots"):
        solve_buffer(
            tight, _demand(rate=0.05, held=0.0), START, wait_penalty=0.0, max_wait_probability=0.001
        )


def test_empirical_fit_reproduces_a_known_tail() -> None:
    """Samples of a known distribution (Poisson 6 minus Poisson 2, clipped at 0) -> its S(k)."""
    rng = np.random.default_rng(3)
    x = rng.poisson(6.0, 400_000) - rng.poisson(2.0, 400_000)
    fit = fit_empirical_tail({"a": x}, {"a": np.zeros(x.size, dtype=np.int64)}, 1)
    f = fit.shortfall["a"][0]
    assert f is not None
    exact = shortfall(6.0, 2.0, f.size - 1)
    assert f == pytest.approx(exact, abs=0.01)
    over, over_exact = -np.diff(f), -np.diff(exact)  # P(X > k)
    assert over[:15] == pytest.approx(over_exact[:15], abs=0.003)
    assert (np.diff(f, 2) >= -1e-12).all()  # convex: the LP's secants stay exact


def test_empirical_fit_handles_empty_and_sparse_history() -> None:
    fit = fit_empirical_tail(
        {"none": np.zeros(0, dtype=np.int64), "sparse": np.array([3, 0, 5]),
         "zeros": np.zeros(100, dtype=np.int64)},
        {"none": np.zeros(0, dtype=np.int64), "sparse": np.array([0, 1, 1]),
         "zeros": np.arange(100) % 2},
        2, min_samples=2,
    )  # fmt: skip
    assert fit.shortfall["none"] == (None, None)  # no history: the LP keeps the Skellam curve
    day = fit.shortfall["sparse"][0]  # one sample: borrows the pool's day
    assert day is not None and day == pytest.approx(empirical_shortfall(np.array([3, 0, 5])))
    assert fit.samples["sparse"].tolist() == [0, 2]
    assert all(f is not None and f.tolist() == [0.0] for f in fit.shortfall["zeros"])
    pools = [PoolSpec(p, "cpu", 1.0, 60.0, 0.0, max_slots=50) for p in ("none", "sparse", "zeros")]
    demand = Demand(("m1", "m2", "m3"), ("none", "sparse", "zeros"), np.full((3, 2), 0.01),
                    np.zeros((3, 2)), 3600.0)  # fmt: skip
    plan = solve_buffer(pools, demand, START, wait_penalty=0.01, tail=fit)
    assert plan.slots_for("zeros") == [0, 0]  # never more than 0 net demand: nothing to hold
    assert plan.slots_for("sparse")[1] <= 5  # never past the largest sample
    assert plan.slots_for("none") == solve_buffer(
        pools, demand, START, wait_penalty=0.01
    ).slots_for("none")


def test_empirical_tail_sets_the_service_level() -> None:
    """With measured curves, ``max_wait_probability`` bounds the measured share that waits."""
    rng = np.random.default_rng(5)
    x = rng.negative_binomial(2, 0.2, 50_000)  # over-dispersed: mean 8, variance 40
    fit = fit_empirical_tail({"a": x}, {"a": np.zeros(x.size, dtype=np.int64)}, 1)
    pools = [PoolSpec("a", "cpu", 1.0, 60.0, 0.0, max_slots=200)]
    demand = Demand(("m",), ("a",), np.full((1, 1), 0.1), np.zeros((1, 1)), 3600.0)
    plan = solve_buffer(
        pools, demand, START, wait_penalty=1e-6, max_wait_probability=0.01, tail=fit
    )
    b = plan.slots_for("a")[0]
    assert (x > b).mean() <= 0.01 < (x > b - 1).mean()
    assert plan.stockout[0, 0] == pytest.approx((x > b).mean())
