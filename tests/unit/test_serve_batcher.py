"""Dynamic batching, metrics text and settings: the server's own logic, no sockets."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest
from serve_fakes import FakeEncoding

from zerostart.errors import ServeError
from zerostart.limits import Limits
from zerostart.serve.batcher import Batcher, BatchFailed, Overloaded, Stopped
from zerostart.serve.config import ServerConfig
from zerostart.serve.metrics import Metrics
from zerostart.serve.startup import Startup, process_age_s


def enc(n: int) -> FakeEncoding:
    return FakeEncoding(ids=list(range(n)))


class Engine:
    """Records each call; the first call can be held until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, encodings: list[Any]) -> list[int]:
        self.started.set()
        self.release.wait(10)
        lengths = [len(e.ids) for e in encodings]
        self.calls.append(lengths)
        if 0 in lengths:
            raise ValueError("boom")
        return [n * 10 for n in lengths]


def run_batcher(engine: Engine, jobs: list[list[int]], **limits: int) -> list[Any]:
    """Submit jobs (lists of lengths) while the first one holds the engine; return results."""

    async def main() -> list[Any]:
        b = Batcher(
            engine,
            Limits(
                max_batch_sequences=limits.get("max_batch_size", 32),
                max_batch_tokens=limits.get("max_batch_tokens", 10_000),
            ),
            max_queue=limits.get("max_queue", 100),
        )
        b.start(asyncio.get_running_loop())
        futures = [b.submit([enc(n) for n in jobs[0]])]
        await asyncio.to_thread(engine.started.wait, 5)
        futures += [b.submit([enc(n) for n in lengths]) for lengths in jobs[1:]]
        engine.release.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert b.stop(5)
        return list(results)

    return asyncio.run(main())


def test_concurrent_jobs_merge_into_one_engine_call_and_split_back() -> None:
    engine = Engine(hold_first=True)
    results = run_batcher(engine, [[1], [2, 3], [4], [5, 6, 7]])
    assert engine.calls == [[1], [2, 3, 4, 5, 6, 7]]
    assert results == [[10], [20, 30], [40], [50, 60, 70]]


def test_batch_size_limit_splits_a_large_job() -> None:
    engine = Engine(hold_first=True)
    results = run_batcher(engine, [[1], [2] * 5, [3] * 2], max_batch_size=3)
    assert engine.calls == [[1], [2, 2, 2], [2, 2, 3], [3]]
    assert results == [[10], [20] * 5, [30] * 2]


def test_token_budget_limits_a_batch_and_a_long_sequence_runs_alone() -> None:
    engine = Engine(hold_first=True)
    results = run_batcher(engine, [[1], [40, 40], [30], [500], [8]], max_batch_tokens=100)
    assert engine.calls == [[1], [40, 40], [30], [500], [8]]
    assert results[3] == [5000]


def test_full_queue_refuses_and_stopped_batcher_refuses() -> None:
    async def main() -> None:
        engine = Engine(hold_first=True)
        b = Batcher(engine, Limits(max_batch_sequences=4, max_batch_tokens=100), max_queue=2)
        b.start(asyncio.get_running_loop())
        first = b.submit([enc(1)])
        await asyncio.to_thread(engine.started.wait, 5)
        queued = [b.submit([enc(2)]), b.submit([enc(3)])]
        with pytest.raises(Overloaded, match="2 requests are already queued"):
            b.submit([enc(4)])
        assert b.depth == 2
        engine.release.set()
        assert await first == [10] and await asyncio.gather(*queued) == [[20], [30]]
        assert b.stop(5)
        with pytest.raises(Stopped):
            b.submit([enc(1)])

    asyncio.run(main())


def test_cancelled_job_is_skipped_and_failure_hits_only_its_batch() -> None:
    async def main() -> None:
        engine = Engine(hold_first=True)
        b = Batcher(engine, Limits(max_batch_sequences=1, max_batch_tokens=100), max_queue=10)
        b.start(asyncio.get_running_loop())
        first = b.submit([enc(1)])
        await asyncio.to_thread(engine.started.wait, 5)
        gone = b.submit([enc(2)])
        bad = b.submit([enc(0)])
        good = b.submit([enc(3)])
        gone.cancel()
        engine.release.set()
        assert await first == [10]
        with pytest.raises(BatchFailed, match="boom"):
            await bad
        assert await good == [30]
        assert b.stop(5)
        assert engine.calls == [[1], [0], [3]]  # the cancelled job never ran

    asyncio.run(main())


def test_stop_drains_queued_jobs() -> None:
    async def main() -> None:
        engine = Engine(hold_first=True)
        b = Batcher(engine, Limits(max_batch_sequences=1, max_batch_tokens=100), max_queue=10)
        b.start(asyncio.get_running_loop())
        futures = [b.submit([enc(n)]) for n in (1, 2, 3)]
        await asyncio.to_thread(engine.started.wait, 5)
        stopper = asyncio.create_task(asyncio.to_thread(b.stop, 5))
        engine.release.set()
        assert await stopper is True
        assert await asyncio.gather(*futures) == [[10], [20], [30]]

    asyncio.run(main())


def test_metrics_text_format() -> None:
    m = Metrics()
    m.record_request("predict", 200, 0.003)
    m.record_request("predict", 200, 0.2)
    m.record_request("predict", 422, 0.0001)
    m.record_batch(3, 40, 0.01)
    m.gauge("queue_depth", "Requests waiting.", lambda: 7)
    m.set_phases({"imports": 0.05, "warmup": 0.125})
    text = m.render().decode()
    lines = text.splitlines()
    assert 'zerostart_requests_total{route="predict",status="200"} 2' in lines
    assert 'zerostart_requests_total{route="predict",status="422"} 1' in lines
    assert 'zerostart_request_duration_seconds_bucket{route="predict",le="0.001"} 1' in lines
    assert 'zerostart_request_duration_seconds_bucket{route="predict",le="0.005"} 2' in lines
    assert 'zerostart_request_duration_seconds_bucket{route="predict",le="+Inf"} 3' in lines
    assert 'zerostart_request_duration_seconds_count{route="predict"} 3' in lines
    assert (
        'zerostart_batch_size_bucket{le="2"} 0' in lines
        and 'zerostart_batch_size_bucket{le="4"} 1' in lines
    )
    assert "zerostart_queue_depth 7" in lines
    assert 'zerostart_startup_phase_seconds{phase="warmup"} 0.125' in lines
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert text.endswith("\n")


def test_config_is_validated_and_copied() -> None:
    cfg = ServerConfig()
    assert cfg.host == "127.0.0.1"
    assert cfg.new(port=9000).port == 9000 and cfg.port == 8080
    with pytest.raises(ServeError, match="max_batch_size must be > 0"):
        ServerConfig(max_batch_size=0)
    with pytest.raises(ServeError, match="port"):
        cfg.new(port=70000)
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


def test_startup_phases_and_process_age() -> None:
    age = process_age_s()
    assert age is not None and 0 < age < 3600  # this pytest process started a moment ago
    s = Startup(interpreter_s=0.02)
    s.add({"bundle_map": 0.001})
    s.mark("listening")
    d = s.as_dict()
    assert d["mode"] == "boot" and list(d["phases"]) == ["interpreter", "bundle_map", "listening"]
    assert d["total_s"] >= 0.02
