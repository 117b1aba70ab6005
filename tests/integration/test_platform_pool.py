"""The warm pool and the start paths with real processes on loopback.

A slot assigned a real bundle answers exactly as a cold-booted worker does; a
slot whose health check fails (a canary corrupted on disk, or written wrong
with matching digests) is discarded, counted and never assigned; the control
socket is closed to other users; the pool refills; closing the starter, or
killing the pool's process outright, leaves no slot process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.model.canary import write_canary
from zerostart.platform._types import Fallback
from zerostart.platform.errors import StartError
from zerostart.platform.pool import WarmPool
from zerostart.platform.replica import ColdBootStarter
from zerostart.platform.starter import PathStarter
from zerostart.platform_toml import ModelConfig
from zerostart.serve.slot import EXIT_UNHEALTHY

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"
TEXTS = ["I love this", "the weather is awful today"]


def _post(port: int, route: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{route}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _get(port: int, route: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{route}", timeout=30) as resp:
        return json.loads(resp.read())


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


def test_slot_answers_like_a_cold_boot_and_the_pool_refills(embed_bundle: Path) -> None:
    model = ModelConfig(name="minilm", source=str(embed_bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshots=False)
        cold = ColdBootStarter()
        pids: list[int] = []
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            slot_replica = await starter.start(model)
            pids.append(slot_replica.pid)
            assert slot_replica.start_path == "warm_slot"
            assert slot_replica.fallbacks == (
                Fallback("snapshot", "snapshots are off on this node"),
            )
            phases = slot_replica.phases_ms
            assert list(phases)[:2] == ["slot_assign", "bundle_map"]
            assert {"tokenizer", "engine", "listening", "health"} <= set(phases)
            boot_replica = await cold.boot(model)
            pids.append(boot_replica.pid)
            body = {"inputs": TEXTS}
            got = await asyncio.to_thread(_post, slot_replica.port, "embed", body)
            want = await asyncio.to_thread(_post, boot_replica.port, "embed", body)
            np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-6)
            info = await asyncio.to_thread(_get, slot_replica.port, "info")
            assert info["start"]["mode"] == "slot"
            # the pool boots a replacement for the slot it gave away
            await pool.wait_ready("cpu", timeout_s=60)
            counts = pool.snapshot()["cpu"]
            assert counts["booted"] == 2 and counts["assigned"] == 1 and counts["ready"] == 1
            pids.extend(s.pid for s in pool._ready["cpu"])
            assert starter.counts["started.warm_slot"] == 1
            await boot_replica.stop()
        finally:
            await starter.close()
            await cold.close()
        assert all(_wait_gone(pid) for pid in pids), "a slot or worker outlived close()"
        assert pool.run_dir is not None and not pool.run_dir.exists()

    asyncio.run(main())


def _flip_weight_byte(canary: Path) -> None:
    from zerostart.bundle.weights import map_weights

    weights = map_weights(canary / "weights.safetensors")
    assert weights.buffer is not None
    base = np.frombuffer(weights.buffer, np.uint8).ctypes.data
    offset = weights["layer.0.attn.qkv.weight"].ctypes.data - base + 4 * 5 + 3
    del weights
    raw = bytearray((canary / "weights.safetensors").read_bytes())
    raw[offset] ^= 0x80  # the sign bit of one weight
    (canary / "weights.safetensors").write_bytes(bytes(raw))


def _rewrite_digests(canary: Path) -> None:
    """As if the canary had been written wrong by a faulty node: digests match the bad bytes."""
    from zerostart.bundle.manifest import Manifest
    from zerostart.model.canary import _file_entry

    m = Manifest.load(canary)
    files = {name: _file_entry(canary / name) for name in m.files}
    (canary / "manifest.json").write_text(m.with_files(files).to_json())


@pytest.mark.parametrize(
    ("fault", "symptom"),
    [("flipped_on_disk", "sha256 mismatch"), ("written_wrong", "wrong answer")],
)
def test_unhealthy_slots_are_discarded_counted_and_never_assigned(
    tmp_path: Path, embed_bundle: Path, fault: str, symptom: str
) -> None:
    canary = write_canary(tmp_path / "canary")
    _flip_weight_byte(canary)
    if fault == "written_wrong":
        _rewrite_digests(canary)
    model = ModelConfig(name="minilm", source=str(embed_bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1}, canary=canary)
        starter = PathStarter(pool, snapshots=False)
        try:
            await pool.start()
            deadline = time.monotonic() + 60
            while pool.snapshot()["cpu"]["unhealthy"] < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            counts = pool.snapshot()["cpu"]
            assert counts["unhealthy"] >= 2 and counts["booted"] == 0 and counts["ready"] == 0
            assert symptom in pool.last_failure["cpu"]
            replica = await starter.start(model)  # falls through to a cold boot
            assert replica.start_path == "cold_boot"
            skip_snapshot, skip_slot = replica.fallbacks
            assert skip_snapshot.path == "snapshot"
            assert skip_slot.path == "warm_slot" and symptom in skip_slot.reason
            assert pool.snapshot()["cpu"]["assigned"] == 0
            await replica.stop()
        finally:
            await starter.close()

    asyncio.run(main())


def _slot_command(sock: Path, canary: Path) -> list[str]:
    return [sys.executable, "-m", "zerostart.serve", "--slot", str(sock), "--canary", str(canary)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


def _connect(sock: Path, proc: subprocess.Popen[bytes]) -> socket.socket:
    """Connect to a slot's control socket once it listens (the file appears at bind)."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(str(sock))
            return c
        except (FileNotFoundError, ConnectionRefusedError):
            c.close()
            time.sleep(0.01)


def test_an_unhealthy_slot_says_why_and_exits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    canary = write_canary(tmp_path / "canary")
    (canary / "vocab.txt").write_text("[PAD]\n")  # a truncated file: the health check must fail
    sock = run / "s.sock"
    proc = subprocess.Popen(_slot_command(sock, canary), env=_env(), stderr=subprocess.PIPE)
    try:
        with _connect(sock, proc) as c:
            c.settimeout(60)
            message = json.loads(c.makefile("rb").readline())
        assert message["type"] == "unhealthy" and "vocab.txt" in message["reason"]
        assert proc.wait(30) == EXIT_UNHEALTHY
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root")
def test_another_user_cannot_reach_the_control_socket(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)  # so only the run folder's own mode stands in the way
    canary = write_canary(tmp_path / "canary")
    sock = run / "s.sock"
    proc = subprocess.Popen(_slot_command(sock, canary), env=_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        probe = textwrap.dedent(
            f"""
            import os, socket
            os.setgid(65534); os.setuid(65534)  # nobody
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({str(sock)!r})
            except PermissionError:
                print("refused")
            else:
                print("connected")
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip() == "refused"
        # even with the folder opened up, the socket's own 0600 keeps nobody out
        os.chmod(run, 0o755)
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip() == "refused"
    finally:
        proc.kill()
        proc.wait()


def test_a_slot_refuses_a_folder_others_can_enter(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    done = subprocess.run(
        _slot_command(run / "s.sock", tmp_path / "canary"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "another user could reach the socket" in done.stderr
    assert not (run / "s.sock").exists()


def test_slots_exit_when_their_pool_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from zerostart.platform.pool import WarmPool

        async def main():
            pool = WarmPool({"cpu": 2}, run_dir_parent=sys.argv[1])  # killed: cannot clean up
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            print(" ".join(str(s.pid) for s in pool._ready["cpu"]), flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup code of the pool runs
        proc.wait(10)
        assert all(_wait_gone(p) for p in pids), "a slot outlived its pool"
    finally:
        proc.kill()
        proc.wait()


def test_a_bad_bundle_through_a_slot_names_the_problem(tmp_path: Path, embed_bundle: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(embed_bundle, bad)
    (bad / "vocab.txt").write_text("oops\n")
    model = ModelConfig(name="broken", source=str(bad))

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshots=False)
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            with pytest.raises(StartError) as info:
                await starter.start(model)
            # the slot said "model": no cold boot after it (it would read the same bad file)
            assert info.value.path == "warm_slot" and "vocab.txt" in str(info.value)
            assert "model fault" in str(info.value)
            assert starter.counts["fallback.warm_slot"] == 0 and not starter.cold._replicas
        finally:
            await starter.close()

    asyncio.run(main())


def test_a_slot_says_whose_fault_a_failed_assignment_is(embed_bundle: Path) -> None:
    """Classified in the slot (``zerostart.faults``), sent as a word, read back typed."""

    from zerostart.platform.slot import SlotError

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            slot = pool.take("cpu", refill_now=False)
            assert slot is not None
            with socket.socket() as taken:  # the slot's server cannot listen: that slot's fault
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                with pytest.raises(SlotError) as info:
                    await slot.assign(embed_bundle, server={"port": port})
            assert (info.value.fault, info.value.error_type) == ("slot", "ServeError")
            await slot.kill()
        finally:
            await pool.close()

    asyncio.run(main())


def _libcuda_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    _libcuda_loads(), reason="this machine has an NVIDIA driver (tests/gpu cover it)"
)
def test_a_cuda_slot_without_a_gpu_is_discarded_with_the_reason() -> None:
    async def main() -> None:
        pool = WarmPool({"cpu": 0, "cuda": 1})
        try:
            await pool.start()
            deadline = time.monotonic() + 60
            while pool.snapshot()["cuda"]["unhealthy"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pool.snapshot()["cuda"]["unhealthy"] >= 1
            assert "libcuda.so.1 not found" in pool.last_failure["cuda"]
            assert pool.take("cuda") is None
        finally:
            await pool.close()

    asyncio.run(main())


def test_zerostart_up_serves_from_a_warm_slot_and_stops_every_slot(
    tmp_path: Path, embed_bundle: Path
) -> None:
    from platform_helpers import Gateway, wait_until

    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(embed_bundle)
    job = pipe.prepare("embed", {"inputs": TEXTS})
    want = np.array(job.finish(pipe.execute(job.encodings)))
    toml = f'[pool]\ncpu = 1\n[models.minilm]\nbundle = "{embed_bundle}"\n'
    gw = Gateway(tmp_path, toml)
    kids: set[int] = set()
    try:
        assert wait_until(lambda: gw.status()["starter"]["pool"]["cpu"]["ready"] == 1, 60.0)
        code, headers, body = gw.request("POST", "/models/minilm/embed", {"inputs": TEXTS})
        assert code == 200, body
        assert headers["zerostart-cold-start"].startswith("warm_slot;wait_ms="), headers
        np.testing.assert_allclose(np.array(body), want, rtol=0, atol=1e-5)
        status = gw.status()
        (replica,) = status["models"]["minilm"]["replicas"]
        assert replica["start_path"] == "warm_slot"
        assert "slot_assign" in status["models"]["minilm"]["last_start"]["phases_ms"]
        # the slot serves with the gateway's per-run worker key: no way around the gateway
        req = urllib.request.Request(
            f"http://127.0.0.1:{replica['port']}/embed", data=b'{"inputs": "hi"}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 401
        assert wait_until(lambda: gw.status()["starter"]["pool"]["cpu"]["ready"] == 1, 60.0)
        kids = gw.children()
        assert len(kids) == 2  # the replica (once a slot) and the refilled slot
    finally:
        assert gw.stop() == 0
    assert all(_wait_gone(pid) for pid in kids), "a slot or replica outlived the gateway"


def test_a_slot_that_died_while_waiting_is_skipped_and_counted(embed_bundle: Path) -> None:
    model = ModelConfig(name="minilm", source=str(embed_bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshots=False)
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            (dead,) = pool._ready["cpu"]
            os.kill(dead.pid, signal.SIGKILL)
            await dead.process.wait()
            replica = await starter.start(model)  # nothing ready: a cold boot, saying why
            assert replica.start_path == "cold_boot"
            assert pool.snapshot()["cpu"]["died"] == 1
            assert "died while waiting" in replica.fallbacks[-1].reason
            await replica.stop()
            await pool.wait_ready("cpu", timeout_s=60)  # and the pool refilled
        finally:
            await starter.close()

    asyncio.run(main())


def test_a_start_cancelled_mid_assignment_and_a_pool_closed_mid_boot_leave_nothing(
    embed_bundle: Path,
) -> None:
    model = ModelConfig(name="minilm", source=str(embed_bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshots=False)
        pids: list[int] = []
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            pids.extend(s.pid for s in pool._ready["cpu"])
            task = asyncio.create_task(starter.start(model))
            await asyncio.sleep(0.005)  # the assignment is under way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert all(_wait_gone(p) for p in pids), "a cancelled start left its slot running"
            await asyncio.sleep(0.05)  # the refill is booting a slot now
            booting = [p for p in _children() if p not in pids]
            assert len(booting) == 1 and pool.snapshot()["cpu"]["booting"] == 1
            pids.extend(booting)
        finally:
            await starter.close()
        assert all(_wait_gone(p) for p in pids), "close() left a booting slot behind"
        assert not _children()

    asyncio.run(main())


def _children() -> list[int]:
    """Our child processes (the slots this test's pool started)."""
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == me and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def test_the_readiness_checks_connection_serves_the_first_request(embed_bundle: Path) -> None:
    """One TCP connect per start, not two: ``GET /health``'s connection is handed on in
    ``Replica.connections`` (the gateway's seat sends its first request on it)."""
    model = ModelConfig(name="embed", source=str(embed_bundle))
    body = json.dumps({"inputs": "I love this"}).encode()

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshots=False)
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            slot = await starter.start(model)
            cold = await starter.cold.start(model)
            assert (slot.start_path, cold.start_path) == ("warm_slot", "cold_boot")
            for replica in (slot, cold):
                conns = replica.connections
                assert conns is not None and "health" in replica.phases_ms
                (probed,) = conns._idle  # the readiness check's connection, still open
                up = await conns.request(
                    "POST",
                    "/embed",
                    [("content-type", "application/json")],
                    body,
                    timeout_s=30,
                    max_body_bytes=1 << 20,
                )
                assert up.status == 200 and len(json.loads(up.body)[0]) == 384
                assert list(conns._idle) == [probed]  # it carried the request: no new connect
        finally:
            await starter.close()

    asyncio.run(main())
