"""Pool sizing: recent demand -> the buffer LP -> warm slots per device kind.

The plan is checked against the LP's own exact objective (brute force over every size
up to the maximum), and the mapping's direction: no traffic -> no slots; traffic that
makes replicas start -> slots; more such traffic -> more; never above the maximum.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from zerostart.platform.sizing import (
    ModelLoad,
    NodeInput,
    RateWindow,
    keepalive_demand,
    plan_sizes,
)
from zerostart.platform_toml import ConfigError, parse

SRC = Path(__file__).resolve().parents[2] / "src"


def node(*models: ModelLoad, max_cpu: int = 8, lead_s: float = 0.5) -> NodeInput:
    return NodeInput(
        models=models,
        max_slots={"cpu": max_cpu, "cuda": 0, "container": 0},
        cost_per_hour={"cpu": 0.05, "cuda": 1.0, "container": 0.05},
        lead_s={"cpu": lead_s, "cuda": lead_s, "container": lead_s},
        lead_source={"cpu": "test", "cuda": "test", "container": "test"},
        start_s={"warm_slot": 0.05, "cold_boot": 0.2},
        wait_penalty=0.01,
        window_s=60.0,
    )


def load(name: str, rate: float, *, starts: float = 0.0, idle_s: float = 1.0) -> ModelLoad:
    return ModelLoad(name, "cpu", rate, starts, idle_s)


def test_keepalive_demand_matches_a_simulation() -> None:
    lam, tau = 0.7, 1.0
    starts, held, life = keepalive_demand(lam, tau)
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(1 / lam, 200_000))
    gaps = np.diff(t)
    sim_starts = (1 + (gaps > tau).sum()) / t[-1]
    up = np.minimum(gaps, tau).sum() + tau  # a replica lives tau past each request
    assert starts == pytest.approx(sim_starts, rel=0.02)
    assert held == pytest.approx(up / t[-1], rel=0.02)
    assert life == pytest.approx(held / starts, rel=1e-9)
    assert keepalive_demand(0.0, 60.0)[:2] == (0.0, 0.0)
    assert keepalive_demand(5.0, 60.0, min_replicas=2)[:2] == (0.0, 2.0)


def test_idle_node_holds_no_slot_and_skips_the_solve() -> None:
    s = plan_sizes(node(load("a", 0.0), load("b", 0.0)))
    assert s.sizes["cpu"] == 0 and s.lp_slots == {}
    assert "no slot requests" in s.reasons["cpu"]


def test_busier_models_get_more_slots_capped_at_the_maximum() -> None:
    one = plan_sizes(node(load("a", 0.67))).sizes["cpu"]
    many = plan_sizes(node(*(load(f"m{i}", 0.67) for i in range(10)))).sizes["cpu"]
    scaling = plan_sizes(node(load("a", 0.67, starts=5.0))).sizes["cpu"]  # starts counted
    assert 1 <= one < many and one < scaling
    capped = plan_sizes(node(*(load(f"m{i}", 0.67) for i in range(10)), max_cpu=2))
    assert capped.sizes["cpu"] == 2 and capped.lp_slots["cpu"] == many
    assert "capped at max 2" in capped.reasons["cpu"]
    # a model whose replica never idles long enough to stop needs no slot
    assert plan_sizes(node(load("hot", 50.0, idle_s=60.0))).sizes["cpu"] == 0


def test_the_size_is_the_exact_optimum_of_the_lp_objective() -> None:
    from zerostart.fleet.config import PoolSpec
    from zerostart.fleet.lp import Demand, exact_cost, lead_time_means

    models = (load("a", 0.4), load("b", 1.2, starts=0.5), load("c", 0.05, idle_s=5.0))
    n = node(*models, max_cpu=50)
    got = plan_sizes(n).sizes["cpu"]
    rows = [keepalive_demand(m.arrivals_per_s, m.idle_timeout_s) for m in models]
    rate = [max(r[0], m.starts_per_s) for r, m in zip(rows, models, strict=True)]
    pool = PoolSpec("cpu", "cpu", 0.05, 0.0, 0.5, max_slots=100)
    demand = Demand(
        tuple(m.name for m in models), ("cpu",) * 3,
        np.array([[x] for x in rate]), np.array([[r[1]] for r in rows]), 60.0,
        hold_s=np.array([[r[2]] for r in rows]),
    )  # fmt: skip
    up, down = lead_time_means([pool], demand)
    costs = [
        exact_cost([pool], up, down, np.array([[b]], dtype=np.int64), 60.0, 0.01) for b in range(30)
    ]
    assert got == int(np.argmin(costs))
    assert got > 0 and math.isfinite(costs[got])


def test_rate_window_slides() -> None:
    w = RateWindow(10.0, since=0.0)
    for t in range(5):
        w.add(t + 0.5, n=2)
    assert w.rate(5.0) == pytest.approx(10 / 5.0)  # only 5 s have passed
    for t in range(5, 30):
        w.add(t + 0.5)
    assert w.rate(30.0) == pytest.approx(1.0)  # the 2/s burst has left the window
    assert w.count(100.0) == 0


def test_lp_sizing_without_ortools_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import zerostart.platform_toml as config

    monkeypatch.setattr(config, "ortools_available", lambda: False)
    text = '[pool]\nsizing = "lp"\n[models.a]\nbundle = "/b"\n'
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert info.value.key == "pool.sizing"
    assert "pip install 'zerostart[fleet]'" in str(info.value)
    assert parse(text.replace('"lp"', '"static"'), env={}).pool.sizing == "static"


def test_ortools_absent_really_refuses() -> None:
    """The same refusal in a fresh interpreter where OR-Tools cannot be found."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ortools"] = None  # as if not installed: find_spec fails
        from zerostart.platform_toml import parse
        from zerostart.platform_toml import ConfigError
        try:
            parse('[pool]\\nsizing = "lp"\\n[models.a]\\nbundle = "/b"\\n', env={})
        except ConfigError as exc:
            print("refused:", exc, exc.hint)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60, check=True)  # fmt: skip
    assert "refused: pool.sizing" in out.stdout and "zerostart[fleet]" in out.stdout


def test_static_gateway_never_imports_ortools() -> None:
    """A gateway with static sizing starts, serves /status and stops without the LP."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        from zerostart.platform_toml import parse
        from zerostart.platform.gateway import Gateway
        from zerostart.platform.starter import PathStarter

        async def main():
            c = parse('[gateway]\\nport = 0\\n[pool]\\ncpu = 0\\n[models.a]\\nbundle = "/b"\\n')
            gw = Gateway(c, PathStarter(None, snapshots=False))
            await gw.start()
            status = gw.status()
            gw.metrics.render()
            await gw.stop_all()
            print(status["pool_sizing"]["sizing"])
            print(sorted(m for m in sys.modules if m.startswith(("ortools", "zerostart.fleet"))))

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60, check=True)  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0] == "static"
    # nothing of the fleet (durations are zerostart/units.py, a leaf both read)
    assert lines[1] == "[]", out.stdout
