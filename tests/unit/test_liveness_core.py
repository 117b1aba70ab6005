"""liveness.py's decisions, driven with made-up times and process states (no I/O),
and its /proc reader and the pool folder's lock on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zerostart.platform._rundir import LOCK_NAME, make_run_dir, reap_dead_pools
from zerostart.platform.liveness import (
    Health,
    LivenessPolicy,
    answered,
    observe_state,
    probe_due,
    probe_result,
    probe_sent,
    proc_state,
)

POLICY = LivenessPolicy(stopped_s=1.0, probe_interval_s=2.0, probe_timeout_s=3.0, failed_probes=3)


def test_gone_zombie_and_dead_processes_are_dead_at_once() -> None:
    h = Health(since=0.0)
    for state in (None, "Z", "X"):
        assert observe_state(h, state, 0.1, POLICY)[1] == "dead"


def test_running_and_sleeping_processes_are_fine() -> None:
    h = Health(since=0.0)
    for state in ("R", "S", "D", "I"):
        h, verdict = observe_state(h, state, 5.0, POLICY)
        assert verdict == "ok" and h.stopped_since is None


def test_a_stopped_process_is_hung_only_after_stopped_s() -> None:
    h = Health(since=0.0)
    h, v = observe_state(h, "T", 10.0, POLICY)
    assert v == "ok" and h.stopped_since == 10.0
    h, v = observe_state(h, "T", 10.9, POLICY)
    assert v == "ok"
    h, v = observe_state(h, "t", 11.0, POLICY)  # a tracer's stop counts the same
    assert v == "hung"


def test_a_short_stop_is_forgiven() -> None:
    # A debugger or CRIU stops a process briefly: continued within stopped_s, no verdict.
    h = Health(since=0.0)
    h, _ = observe_state(h, "T", 10.0, POLICY)
    h, v = observe_state(h, "S", 10.5, POLICY)
    assert v == "ok" and h.stopped_since is None
    h, v = observe_state(h, "T", 11.2, POLICY)
    assert v == "ok"  # the clock starts again
    assert observe_state(h, "T", 12.2, POLICY)[1] == "hung"


def test_probes_are_due_after_an_interval_of_silence_and_never_two_at_once() -> None:
    h = Health(since=0.0)
    assert not probe_due(h, 1.9, POLICY)
    assert probe_due(h, 2.0, POLICY)
    h = probe_sent(h)
    assert not probe_due(h, 10.0, POLICY)
    h, v = probe_result(h, True, 2.5, POLICY)
    assert v == "ok" and not probe_due(h, 4.25, POLICY) and probe_due(h, 4.5, POLICY)


def test_answered_requests_stand_in_for_probes() -> None:
    h = Health(since=0.0)
    for t in (1.0, 2.5, 4.0, 5.5):
        h = answered(h, t)
        assert not probe_due(h, t + 1.9, POLICY)


def test_a_stopped_process_is_not_probed() -> None:
    h, _ = observe_state(Health(since=0.0), "T", 5.0, POLICY)
    assert not probe_due(h, 9.0, POLICY)


def test_failed_probes_in_a_row_make_it_hung_and_a_pass_or_an_answer_resets() -> None:
    h = Health(since=0.0)
    h, v = probe_result(probe_sent(h), False, 3.0, POLICY)
    h, v = probe_result(probe_sent(h), False, 6.0, POLICY)
    assert v == "ok" and h.failures == 2
    h, v = probe_result(probe_sent(h), True, 9.0, POLICY)
    assert v == "ok" and h.failures == 0
    for t in (12.0, 15.0):
        h, v = probe_result(probe_sent(h), False, t, POLICY)
    h = answered(h, 16.0)  # a real answer in between: the count starts over
    assert h.failures == 0
    for t in (19.0, 22.0):
        h, v = probe_result(probe_sent(h), False, t, POLICY)
        assert v == "ok"
    h, v = probe_result(probe_sent(h), False, 25.0, POLICY)
    assert v == "hung" and h.failures == 3


def test_proc_state_reads_real_processes() -> None:
    assert proc_state(os.getpid()) == "R"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while proc_state(child.pid) != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_state(child.pid) == "S"
        os.kill(child.pid, signal.SIGSTOP)
        while proc_state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_state(child.pid) == "T"
        child.kill()
        while proc_state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_state(child.pid) == "Z"  # exited, not reaped yet
    finally:
        child.kill()
        child.wait()
    assert proc_state(child.pid) is None


HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from zerostart.platform._rundir import make_run_dir
run_dir, fd = make_run_dir(sys.argv[2])
print(run_dir, flush=True)
time.sleep(60)
"""


def test_only_dead_owners_folders_are_reaped(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    live = subprocess.Popen(
        [sys.executable, "-c", HOLD, src, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    dead = subprocess.Popen(
        [sys.executable, "-c", HOLD, src, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout is not None and dead.stdout is not None
        live_dir = Path(live.stdout.readline().strip())
        dead_dir = Path(dead.stdout.readline().strip())
        (dead_dir / "cpu-1.log").write_text("a slot's log")
        dead.kill()  # SIGKILL: no cleanup code runs; the kernel drops its lock
        dead.wait()
        legacy = tmp_path / "zerostart-pool-legacy"  # an older pool's: no lock file
        legacy.mkdir()
        other = tmp_path / "not-a-pool"
        other.mkdir()
        assert reap_dead_pools(tmp_path) == [dead_dir]
        assert not dead_dir.exists()
        assert live_dir.is_dir() and (live_dir / LOCK_NAME).is_file()
        assert legacy.is_dir() and other.is_dir()
        # our own live folder is never taken either
        mine, fd = make_run_dir(tmp_path)
        try:
            assert reap_dead_pools(tmp_path) == []
            assert mine.is_dir()
        finally:
            os.close(fd)
        assert reap_dead_pools(tmp_path) == [mine]  # closed: as good as dead
    finally:
        live.kill()
        live.wait()
        dead.kill()
        dead.wait()


def test_a_waiting_slot_that_stops_answering_pings_is_killed_and_counted(tmp_path: Path) -> None:
    """The pool's watcher with a slot whose process runs (state S) but whose control
    connection answers nothing: a fake slot (a sleeping process and a socket pair that
    nobody reads), driven through the real WarmPool."""
    import asyncio
    import socket

    from zerostart.platform.pool import WarmPool
    from zerostart.platform.slot import Slot

    policy = LivenessPolicy(probe_interval_s=0.1, probe_timeout_s=0.2, failed_probes=2)

    async def main() -> None:
        pool = WarmPool({"cpu": 0}, canary=tmp_path, run_dir_parent=tmp_path, liveness=policy)
        await pool.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(60)", start_new_session=True
        )
        ours, theirs = socket.socketpair()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            slot = Slot("cpu-9", "cpu", proc, tmp_path / "s", tmp_path / "l", reader, writer)
            slot.state, slot.pings = "ready", True
            pool._ready["cpu"].append(slot)
            deadline = time.monotonic() + 10
            while pool.counters["cpu"]["hung"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pool.counters["cpu"]["hung"] == 1
            assert "pings" in pool.last_failure["cpu"]
            assert not pool._ready["cpu"]
            await asyncio.wait_for(proc.wait(), 5)  # killed
            assert theirs.recv(4096).startswith(b'{"type":"ping"}')
        finally:
            theirs.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await pool.close()

    asyncio.run(main())
