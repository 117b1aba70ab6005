"""The KPA state machine (platform/autoscaler.py), driven with made-up time: no I/O."""

from __future__ import annotations

import pytest

from zerostart.platform.autoscaler import Scaler
from zerostart.platform_toml import AutoscalerConfig, ModelConfig

KPA = AutoscalerConfig(tick_s=1.0)  # Knative's defaults otherwise: 60 s / 6 s / 200 % / 70 %


def scaler(**model: object) -> Scaler:
    m = ModelConfig(name="m", source="b", **{"concurrency": 10, **model})  # type: ignore[arg-type]
    return Scaler(m, KPA, now=0.0)


def run(s: Scaler, t0: float, t1: float, concurrency: float, ready: int) -> int:
    """Hold ``concurrency`` from t0 to t1, ticking each second; the last decision's count."""
    s.concurrency(t0, concurrency)
    desired = ready
    t = t0
    while t < t1:
        t += 1.0
        if concurrency:
            s.request(t)
        s.tick(t)
        desired = s.decide(t, ready).desired
    return desired


def test_knative_defaults_are_the_defaults() -> None:
    c = AutoscalerConfig()
    assert (c.stable_window_s, c.panic_window_s) == (60.0, 6.0)
    assert c.panic_threshold_percentage == 200.0 and c.target_utilization == 0.7
    assert (c.max_scale_up_rate, c.max_scale_down_rate) == (1000.0, 2.0)


def test_a_request_at_zero_activates_exactly_once() -> None:
    s = scaler()
    assert s.activate(0.1, ready=0, starting=0)
    assert not s.activate(0.1, ready=0, starting=1)  # the other 199 of a burst
    assert not s.activate(0.1, ready=1, starting=0)


def test_steady_load_scales_to_concurrency_over_target() -> None:
    s = scaler()
    # 21 in flight, target 10 x 0.7 = 7 per replica: 3 replicas
    assert run(s, 0, 120, 21, ready=3) == 3


def test_a_burst_panics_and_scales_at_once() -> None:
    s = scaler()
    run(s, 0, 60, 5, ready=1)
    s.concurrency(60.0, 70)
    s.request(60.5)
    s.tick(61.0)
    d = s.decide(61.0, ready=1)
    assert d.panicking and d.reason == "panic"
    assert d.desired >= 2  # the 6 s window sees the burst within one tick; 60 s barely does


def test_panic_never_scales_down_and_ends_a_stable_window_later() -> None:
    s = scaler(max_replicas=20)
    s.concurrency(0.0, 70)
    s.request(0.0)
    s.tick(1.0)
    high = s.decide(1.0, ready=1).desired
    assert high == 10  # ceil(70 / 7)
    s.concurrency(1.0, 1)
    for t in range(2, 60):
        s.request(float(t))
        s.tick(float(t))
        d = s.decide(float(t), ready=high)
        assert d.panicking and d.desired >= high
    for t in range(60, 130):
        s.request(float(t))
        s.tick(float(t))
        d = s.decide(float(t), ready=high)
    assert not d.panicking and d.desired < high


def test_scale_down_is_rate_limited_by_max_scale_down_rate() -> None:
    s = scaler()
    s.concurrency(0.0, 0.5)
    for t in range(1, 200):
        s.request(float(t))
        s.tick(float(t))
    assert s.decide(200.0, ready=8).desired == 4  # at most halve per decision (rate 2.0)


def test_to_zero_only_after_idle_timeout_from_the_last_request() -> None:
    s = scaler(idle_timeout_s=30.0)
    s.request(10.0)
    s.concurrency(10.0, 1)
    s.concurrency(10.5, 0)
    s.request(10.5)  # answered
    for t in (11.0, 20.0, 40.0):
        s.tick(t)
        d = s.decide(t, ready=1)
        assert d.desired == 1, t
    s.tick(40.5)
    d = s.decide(40.5, ready=1)
    assert d.desired == 0 and d.reason == "idle"


def test_in_flight_work_keeps_a_replica_past_idle_timeout() -> None:
    s = scaler(idle_timeout_s=1.0)
    s.request(0.0)
    s.concurrency(0.0, 1)  # a slow request, never answered
    s.tick(5.0)
    assert s.decide(5.0, ready=1).desired == 1


@pytest.mark.parametrize(
    ("lo", "hi", "load", "want", "reason"), [(2, 5, 0, 2, "min"), (0, 2, 700, 2, "max")]
)
def test_clamped_to_min_and_max(lo: int, hi: int, load: int, want: int, reason: str) -> None:
    s = scaler(min_replicas=lo, max_replicas=hi, idle_timeout_s=1.0)
    s.concurrency(0.0, load)
    s.tick(100.0)
    d = s.decide(100.0, ready=max(lo, 1))
    assert (d.desired, d.reason) == (want, reason)


def test_never_requested_model_stays_at_min() -> None:
    s = scaler(min_replicas=1)
    s.tick(1.0)
    assert s.decide(1.0, ready=1).desired == 1
    z = scaler()
    z.tick(1.0)
    assert z.decide(1.0, ready=0).desired == 0
