"""``zerostart up`` with ``[pool] sizing = "lp"``: the pool's size follows the traffic.

A real gateway (subprocess, real slots and workers on loopback) re-plans every
second: with no traffic the LP holds no slot; after requests that make the model
start from zero again and again, it holds slots again (at most the configured 2),
and says why in one log line per re-plan, in /status and in /metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import Gateway, metric, wait_until

pytest.importorskip("ortools", reason="pool.sizing = 'lp' needs the fleet extra (OR-Tools)")
pytestmark = pytest.mark.integration


def cpu_size(gw: Gateway) -> int:
    return int(gw.status()["pool_sizing"]["sizes"]["cpu"])


def test_lp_sizing_follows_traffic(tmp_path: Path, embed_bundle: Path) -> None:
    toml = f"""
[autoscaler]
tick = 0.1
[pool]
sizing = "lp"
cpu = 2
resolve_interval = 1
demand_window = "30s"
[models.embed]
bundle = "{embed_bundle}"
idle_timeout = 0.5
cpu = "1"            # deploy-only keys: accepted and ignored by up
memory = "1Gi"
"""
    gw = Gateway(tmp_path, toml)
    try:
        # idle: the first re-plans see no arrivals and hold nothing
        assert wait_until(lambda: gw.status()["pool_sizing"]["replans"] >= 1, 30), gw.stderr()
        assert wait_until(lambda: cpu_size(gw) == 0, 30), gw.status()
        idle_metrics = gw.metrics()
        assert metric(idle_metrics, "zerostart_gateway_pool_target_slots", device="cpu") == 0
        assert metric(idle_metrics, "zerostart_gateway_pool_max_slots", device="cpu") == 2
        # traffic: a request every ~1.2 s, each after the replica scaled to zero (0.5 s idle)
        answers: list[Any] = []
        for _ in range(6):
            code, _, body = gw.request("POST", "/models/embed/embed", {"inputs": "hello"})
            assert code == 200, body
            answers.append(body)
            time.sleep(1.2)
        assert wait_until(lambda: cpu_size(gw) >= 1, 30), gw.status()
        status = gw.status()
        sizing = status["pool_sizing"]
        assert sizing["sizing"] == "lp" and sizing["max_slots"]["cpu"] == 2
        assert 1 <= sizing["last"]["sizes"]["cpu"] <= 2
        assert "slot requests/h" in sizing["last"]["reasons"]["cpu"]
        assert status["demand"]["models"]["embed"]["arrivals_per_s"] > 0
        assert status["demand"]["models"]["embed"]["starts_per_s"] > 0
        busy_metrics = gw.metrics()
        assert metric(busy_metrics, "zerostart_gateway_pool_target_slots", device="cpu") >= 1
        assert metric(busy_metrics, "zerostart_gateway_arrival_rate_per_second", model="embed") > 0
        assert metric(busy_metrics, "zerostart_gateway_pool_replans_total", result="ok") >= 2
        lines = [ln for ln in gw.stderr().splitlines() if "event=pool_replan " in ln]
        assert any("cpu=0" in ln for ln in lines) and any(
            "cpu=1" in ln or "cpu=2" in ln for ln in lines
        ), lines
        assert all(len(a) == 1 and len(a[0]) == 384 for a in answers)
    finally:
        assert gw.stop() == 0, gw.stderr()
