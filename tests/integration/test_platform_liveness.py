"""Dead and hung slots and replicas, a SIGKILLed gateway's folder, and the body limit its
workers get: ``zerostart up`` in a subprocess with real slots and workers on loopback."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import Gateway, alive, metric, wait_until

pytestmark = pytest.mark.integration

TEXT = {"inputs": "a wonderful film"}


def pool(gw: Gateway) -> dict[str, Any]:
    return gw.status()["starter"]["pool"]["cpu"]  # type: ignore[no-any-return]


def slot_pids(gw: Gateway) -> set[int]:
    """The gateway's children that are not serving a model: its waiting slots."""
    serving = {r["pid"] for m in gw.status()["models"].values() for r in m["replicas"]}
    return gw.children() - serving


@pytest.fixture
def gateways() -> Any:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.stop()


def test_a_sigkilled_warm_slot_is_replaced_and_the_next_start_is_warm(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    # Before: the dead slot stayed "ready" in /status, nothing refilled the pool, and the
    # next start took it, found it dead and fell back to a cold boot (1.46 s, not ~80 ms).
    toml = f'[pool]\ncpu = 1\n[models.minilm]\nbundle = "{embed_bundle}"\n'
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    assert wait_until(lambda: pool(gw)["ready"] == 1, 60.0), gw.stderr()
    (slot,) = slot_pids(gw)
    t0 = time.monotonic()
    os.kill(slot, signal.SIGKILL)
    assert wait_until(lambda: pool(gw)["died"] == 1, 5.0), pool(gw)
    assert wait_until(lambda: pool(gw)["ready"] == 1 and pool(gw)["booted"] == 2, 60.0)
    print(f"slot SIGKILLed -> a new slot ready in {time.monotonic() - t0:.2f} s")
    assert slot not in slot_pids(gw)
    code, headers, body = gw.request("POST", "/models/minilm/embed", TEXT)
    assert code == 200, body
    assert headers["zerostart-cold-start"].startswith("warm_slot;"), headers
    assert 'event="died"' in gw.metrics()


def test_a_sigstopped_slot_is_killed_and_replaced(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    toml = f'[pool]\ncpu = 1\n[models.minilm]\nbundle = "{embed_bundle}"\n'
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    assert wait_until(lambda: pool(gw)["ready"] == 1, 60.0), gw.stderr()
    (slot,) = slot_pids(gw)
    try:
        os.kill(slot, signal.SIGSTOP)
        assert wait_until(lambda: pool(gw)["hung"] == 1, 10.0), pool(gw)
        assert wait_until(lambda: not alive(slot), 10.0)
        assert wait_until(lambda: pool(gw)["ready"] == 1, 60.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot, signal.SIGKILL)
    code, headers, _ = gw.request("POST", "/models/minilm/embed", TEXT)
    assert code == 200 and headers["zerostart-cold-start"].startswith("warm_slot;"), headers


def test_a_sigstopped_replica_is_replaced_and_its_waiting_requests_answered(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    # Before: the stopped replica stayed "ready"; every request forwarded to it waited
    # for upstream_timeout (here 20 s, by default 60 s) and got 504, and the queued ones
    # waited behind them.
    toml = (
        "[gateway]\nupstream_timeout = 20\n[autoscaler]\ntick = 0.2\n[pool]\ncpu = 1\n"
        f'[models.minilm]\nbundle = "{embed_bundle}"\nmin_replicas = 1\nmax_replicas = 1\n'
        "concurrency = 4\n"
    )
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    assert wait_until(lambda: len(gw.status()["models"]["minilm"]["replicas"]) == 1, 60.0)
    assert wait_until(lambda: pool(gw)["ready"] == 1, 60.0)
    (replica,) = gw.status()["models"]["minilm"]["replicas"]
    pid = replica["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            futures = [
                ex.submit(gw.request, "POST", "/models/minilm/embed", TEXT, None, 60.0)
                for _ in range(16)
            ]
            results = [f.result() for f in futures]
        elapsed = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(f"replica SIGSTOPped -> 16 requests answered in {elapsed:.2f} s")
    assert [code for code, _, _ in results] == [200] * 16, [r[2] for r in results]
    assert elapsed < 15.0
    status = gw.status()["models"]["minilm"]
    assert status["replaced"] == {"stopped": 1}
    assert [r["pid"] for r in status["replicas"]] != [pid]
    text = gw.metrics()
    assert metric(text, "zerostart_gateway_replicas_replaced_total", reason="stopped") == 1
    assert not alive(pid)


def test_a_sigkilled_gateway_leaves_its_pool_folder_to_the_next_one(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    toml = f'[pool]\ncpu = 1\n[models.minilm]\nbundle = "{embed_bundle}"\n'

    def folders() -> set[Path]:
        return set(temp.glob("zerostart-pool-*"))

    dead = Gateway(_mkdir(tmp_path / "a"), toml, env={"TMPDIR": str(temp)})
    gateways.append(dead)
    assert wait_until(lambda: pool(dead)["ready"] == 1, 60.0)
    (dead_dir,) = folders()
    live = Gateway(_mkdir(tmp_path / "b"), toml, env={"TMPDIR": str(temp)})
    gateways.append(live)
    (live_dir,) = folders() - {dead_dir}
    dead.proc.kill()  # SIGKILL: no cleanup code runs
    dead.proc.wait()
    assert dead_dir.is_dir()  # what a killed gateway leaves
    new = Gateway(_mkdir(tmp_path / "c"), toml, env={"TMPDIR": str(temp)})
    gateways.append(new)
    # the new pool cleaned up before making its own folder (so before it listens)
    assert not dead_dir.exists()
    assert live_dir.is_dir() and pool(live)["ready"] == 1
    assert len(folders() - {live_dir}) == 1  # the new gateway's own
    code, _, body = live.request("POST", "/models/minilm/embed", TEXT)
    assert code == 200, body
    assert live.stop() == 0 and new.stop() == 0
    assert folders() == set()


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _post(port: int, size: int) -> int:
    body = b'{"inputs": "' + b"x" * (size - 14) + b'"}'
    req = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("slots", [0, 1], ids=["cold_boot", "warm_slot"])
def test_the_gateway_body_limit_reaches_its_workers(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway], slots: int
) -> None:
    # Before: workers kept their own 1 MiB limit whatever the gateway's was.
    toml = (
        f"[gateway]\nmax_body_bytes = 4096\n[pool]\ncpu = {slots}\n"
        f'[models.minilm]\nbundle = "{embed_bundle}"\n'
    )
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    if slots:
        assert wait_until(lambda: pool(gw)["ready"] == 1, 60.0)
    code, headers, body = gw.request("POST", "/models/minilm/embed", TEXT)
    assert code == 200, body
    assert headers["zerostart-cold-start"].startswith(("cold_boot;", "warm_slot;")[slots])
    (replica,) = gw.status()["models"]["minilm"]["replicas"]
    # straight to the worker: over the limit is refused before the key is even read (413);
    # under it, the worker's key check answers (401: the gateway's per-run key is not sent)
    assert _post(replica["port"], 8192) == 413
    assert _post(replica["port"], 2048) == 401
