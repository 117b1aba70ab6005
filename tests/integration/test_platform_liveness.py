"""Dead and hung slots and replicas, a SIGKILLed gateway's folder, and the body limit its
workers get: ``zerostart up`` in a subprocess with real slots and workers on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import Gateway, alive, metric, wait_until

from zerostart.benchmark import request_json
from zerostart.platform import gateway as gateway_module
from zerostart.platform._types import Replica, Starter
from zerostart.platform.liveness import LivenessPolicy
from zerostart.platform.replica import ColdBootStarter
from zerostart.platform_toml import ModelConfig, parse

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


def test_a_waiting_slot_answers_pings_and_still_takes_a_model(embed_bundle: Path) -> None:
    from zerostart.platform.pool import WarmPool
    from zerostart.platform.starter import PathStarter

    # pings every 0.1 s, as the watcher sends them, racing the assignment below
    policy = LivenessPolicy(probe_interval_s=0.1, probe_timeout_s=2.0)
    model = ModelConfig(name="minilm", source=str(embed_bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1}, liveness=policy)
        starter = PathStarter(pool, snapshots=False)
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            (slot,) = pool._ready["cpu"]
            assert slot.pings
            assert all([await slot.ping(2.0) for _ in range(5)])
            await asyncio.sleep(0.5)  # the watcher's pings too
            assert pool.counters["cpu"]["hung"] == 0
            replica = await starter.start(model)
            assert replica.start_path == "warm_slot"
            code, _, body = await asyncio.to_thread(
                request_json, replica.port, "POST", "/embed", TEXT
            )
            assert code == 200 and len(body) == 1
        finally:
            await starter.close()

    asyncio.run(main())


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
    # waited behind them: 16 x 504 in 40 s. After: 16 x 200 in 5-9 s (load 7-9), 16 s at
    # load 17.
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
    # none waited out upstream_timeout (how each forwarded one ended before); the rest of
    # the time is the replacement serving 16 requests 4 at a time on a loaded machine
    assert elapsed < 20.0
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
    # the live pool's slot is up before the next gateway looks at the folders (on a
    # loaded machine it may take seconds: checking right after the new one started
    # failed in CI with the slot still starting, not removed)
    assert wait_until(lambda: pool(live)["ready"] == 1, 60.0)
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


# A process that accepts connections and never answers: what a worker whose event loop
# is wedged looks like from outside (its state is S, sleeping; only a probe tells).
MUTE = """
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""


class MuteProcess:
    """The Process contract around the mute process (the first replica of the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self, timeout_s: float) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class MuteThenCold(Starter):
    """A starter whose first replica is mute and whose later ones are real cold boots."""

    def __init__(self) -> None:
        self.cold = ColdBootStarter()
        self.mute: Replica | None = None

    async def start(self, model: ModelConfig) -> Replica:
        if self.mute is not None:
            return await self.cold.start(model)
        proc = subprocess.Popen([sys.executable, "-c", MUTE], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        port = int(await asyncio.to_thread(proc.stdout.readline))
        self.mute = Replica(model.name, MuteProcess(proc), port, "cold_boot")
        return self.mute

    async def close(self) -> None:
        await self.cold.close()
        if self.mute is not None:
            self.mute.kill()


def test_a_replica_that_stops_answering_is_replaced_and_its_request_re_sent(
    embed_bundle: Path,
) -> None:
    # Before: nothing asked a replica that runs but answers nothing; its requests waited
    # for upstream_timeout and got 504.
    config = parse(
        "[gateway]\nport = 0\nupstream_timeout = 30\n[autoscaler]\ntick = 0.1\n"
        f'[pool]\ncpu = 0\n[models.minilm]\nbundle = "{embed_bundle}"\nmax_replicas = 1\n'
    )
    policy = LivenessPolicy(probe_interval_s=0.3, probe_timeout_s=0.5, failed_probes=2)

    async def main() -> None:
        starter = MuteThenCold()
        gw = gateway_module.Gateway(config, starter, liveness=policy)
        await gw.start()
        try:
            t0 = time.monotonic()
            code, _, body = await asyncio.to_thread(
                request_json, gw.port, "POST", "/models/minilm/embed", TEXT
            )
            elapsed = time.monotonic() - t0
            print(f"mute replica -> answered by its replacement in {elapsed:.2f} s")
            assert code == 200 and len(body) == 1, body
            assert elapsed < 20.0
            rt = gw.models["minilm"]
            assert dict(rt.replaced) == {"unresponsive": 1}
            assert gw.metrics.retries.get("minilm") == 1  # re-sent once
            assert gw.metrics.replaced.get("minilm", "unresponsive") == 1
            assert starter.mute is not None and not starter.mute.is_alive()
            assert [s.replica.start_path for s in rt.seats] == ["cold_boot"]
        finally:
            gw.begin_shutdown()
            await gw.serve_until_shutdown()

    asyncio.run(main())
