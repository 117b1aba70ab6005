"""The one Prometheus text renderer (serve/metrics.py), as the worker and the gateway use it.

Checked line by line against the exposition format 0.0.4: HELP/TYPE, escaped
label values, cumulative buckets ending in +Inf, _sum and _count.
"""

from __future__ import annotations

from zerostart.platform.metrics import LATENCY_BUCKETS_S, GatewayMetrics
from zerostart.serve import metrics as worker


def test_the_gateway_renders_with_the_workers_families() -> None:
    g = GatewayMetrics()
    assert isinstance(g.requests, worker.Counter) and isinstance(g.duration, worker.Histogram)
    assert (0.0005, *worker.LATENCY_BUCKETS_S) == LATENCY_BUCKETS_S
    g.requests.inc('a"b\n', "200")
    g.requests.inc('a"b\n', "200")
    g.duration.observe(0.0004, "m")
    g.duration.observe(40.0, "m")
    g.gauge("slots", "Slots.", lambda: [((("device", "cpu"),), 2.0)])
    lines = g.render().decode().splitlines()
    assert lines[:3] == [
        "# HELP zerostart_gateway_requests_total Requests answered, by model and HTTP status.",
        "# TYPE zerostart_gateway_requests_total counter",
        'zerostart_gateway_requests_total{model="a\\"b\\n",status="200"} 2',
    ]
    name = "zerostart_gateway_request_duration_seconds"
    assert f'{name}_bucket{{model="m",le="0.0005"}} 1' in lines
    assert f'{name}_bucket{{model="m",le="30.0"}} 1' in lines
    assert f'{name}_bucket{{model="m",le="+Inf"}} 2' in lines
    assert f'{name}_sum{{model="m"}} 40.0004' in lines
    assert f'{name}_count{{model="m"}} 2' in lines
    assert lines[-3:] == [
        "# HELP zerostart_gateway_slots Slots.",
        "# TYPE zerostart_gateway_slots gauge",
        'zerostart_gateway_slots{device="cpu"} 2.0',
    ]


def test_the_worker_keeps_its_series_and_phase_order() -> None:
    m = worker.Metrics()
    m.record_request("embed", 200, 0.002)
    m.gauge("in_flight", "In flight.", lambda: 3)
    m.set_phases({"interpreter": 0.5, "imports": 0.25})  # start-up order, not sorted
    lines = m.render().decode().splitlines()
    assert 'zerostart_requests_total{route="embed",status="200"} 1' in lines
    assert 'zerostart_request_duration_seconds_bucket{route="embed",le="0.0025"} 1' in lines
    assert "zerostart_in_flight 3" in lines
    assert lines[-2:] == [
        'zerostart_startup_phase_seconds{phase="interpreter"} 0.5',
        'zerostart_startup_phase_seconds{phase="imports"} 0.25',
    ]
    assert m.requests("embed", 200) == 1
