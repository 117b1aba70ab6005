"""The gateway's I/O-free core (platform/_core.py), driven by events and a made-up clock.

No process, socket or event loop: replicas are :class:`Replica` records over a
process that only says whether it runs. Each test reads like the sequence of
events the asyncio driver (``gateway.py``) would feed the core, and checks the
actions it gets back. The whole module runs in milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from zerostart.platform._core import (
    Action,
    GatewayCore,
    Grant,
    KillReplica,
    Probe,
    Reject,
    Reply,
    RetryPolicy,
    StartReplica,
    StopReplica,
)
from zerostart.platform._replies import reply_response
from zerostart.platform._state import ModelRuntime, Seat, StartRecord
from zerostart.platform._types import Replica
from zerostart.platform.errors import StartError
from zerostart.platform.liveness import LivenessPolicy
from zerostart.platform.metrics import GatewayMetrics
from zerostart.platform_toml import AutoscalerConfig, ModelConfig, PlatformConfig


class Proc:
    """A replica's process that runs until told otherwise (no OS process behind it)."""

    pid = 4242
    returncode = None

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    async def stop(self, timeout_s: float) -> None:
        self.alive = False

    def kill(self) -> None:
        self.alive = False


def core(**model: Any) -> tuple[GatewayCore, ModelRuntime]:
    m = ModelConfig(name="m", source="b", **model)
    config = PlatformConfig(models={"m": m}, autoscaler=AutoscalerConfig(tick_s=1.0))
    c = GatewayCore(
        config,
        0.0,
        metrics=GatewayMetrics(),
        liveness=LivenessPolicy(stopped_s=1.0, probe_interval_s=2.0, failed_probes=3),
    )
    return c, c.models["m"]


def up(c: GatewayCore, rt: ModelRuntime, start: int, now: float) -> tuple[Seat, list[Action]]:
    """Start ``start`` comes back with a replica at ``now``."""
    replica = Replica("m", Proc(), 9000 + start, "cold_boot", {"health": 1.0}, 50.0)
    record = StartRecord("cold_boot", 50.0, {"health": 1.0}, [], 0.0)
    return c.started(rt, start, replica, record, now)


def only(actions: Any, kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_a_burst_at_zero_queues_in_order_behind_exactly_one_start() -> None:
    c, rt = core(concurrency=1, max_replicas=1)
    admitted = [c.admit(rt, 0.01 * i) for i in range(200)]
    starts = [a for adm in admitted for a in adm.actions if isinstance(a, StartReplica)]
    assert [s.reason for s in starts] == ["activate"]  # one start for the whole burst
    assert all(adm.seat is None and adm.reply is None for adm in admitted)
    waiters = [adm.waiter for adm in admitted]
    assert list(rt.waiters) == waiters and rt.state == "starting"
    seat, actions = up(c, rt, starts[0].start, 2.0)
    # concurrency 1: the seat goes to the head of the queue only
    assert actions == [Grant("m", waiters[0], seat)]
    assert (seat.in_flight, rt.in_flight, len(rt.waiters)) == (1, 1, 199)
    served = [waiters[0]]
    for i in range(199):
        (grant,) = c.release(rt, seat, 3.0 + i)
        assert isinstance(grant, Grant) and grant.seat is seat
        served.append(grant.waiter)
    assert served == waiters  # first come, first served
    assert c.release(rt, seat, 300.0) == [] and seat.in_flight == 0 and rt.in_flight == 0


def test_a_free_seat_is_taken_at_once_unless_others_queue() -> None:
    c, rt = core(concurrency=2)
    (start,) = c.admit(rt, 0.0).actions
    assert isinstance(start, StartReplica)
    seat, (grant,) = up(c, rt, start.start, 1.0)
    assert isinstance(grant, Grant)
    second = c.admit(rt, 1.1)  # a free place on the seat: no queue
    assert second.seat is seat and seat.in_flight == 2
    third = c.admit(rt, 1.2)  # seat full: queued; a start is not the request's to ask for
    assert third.waiter is not None and third.actions == ()
    # the least loaded seat first
    c2, rt2 = core(concurrency=4)
    s = only(c2.admit(rt2, 0.0).actions, StartReplica)[0]
    a, _ = up(c2, rt2, s.start, 1.0)
    b, _ = up(c2, rt2, c2._start(rt2, "stable").start, 1.0)
    assert c2.admit(rt2, 2.0).seat is b  # a has the first request
    assert c2.admit(rt2, 2.0).seat in (a, b)


def test_a_full_queue_answers_429_and_a_queue_timeout_503_both_with_retry_after() -> None:
    c, rt = core(max_queue=2, queue_timeout_s=5.0)
    first, second = c.admit(rt, 0.0), c.admit(rt, 0.1)
    full = c.admit(rt, 0.2)
    assert full.reply is not None and full.waiter is None
    assert (full.reply.status, full.reply.error_type) == (429, "Overloaded")
    assert "2 requests already queued (max_queue)" in full.reply.message
    response = reply_response(full.reply)
    assert (response.status, dict(response.headers)["retry-after"]) == (429, "1")
    assert first.waiter is not None and second.waiter is not None
    late = c.give_up(rt, first.waiter, 5.0)
    assert (late.status, late.error_type) == (503, "Unavailable")
    assert "no replica free within queue_timeout (5 s)" in late.message
    assert dict(reply_response(late).headers)["retry-after"] == "1"
    assert list(rt.waiters) == [second.waiter]  # it left the queue: never granted a seat
    start = only(first.actions, StartReplica)[0]
    _, actions = up(c, rt, start.start, 6.0)
    assert [a.waiter for a in only(actions, Grant)] == [second.waiter]
    # a client that left is withdrawn the same way; twice is harmless
    c.withdraw(rt, second.waiter, 6.0)
    c.withdraw(rt, second.waiter, 6.0)


def test_a_replica_that_dies_mid_request_is_replaced_and_the_request_re_sent_once() -> None:
    c, rt = core(concurrency=4, max_replicas=1)
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 1.0)
    queued = [c.admit(rt, 1.0) for _ in range(3)]  # fills the seat (the first has its grant)
    assert all(q.seat is seat for q in queued) and seat.in_flight == 4
    waiting = c.admit(rt, 1.1)
    assert waiting.waiter is not None
    out = c.upstream_failed(rt, seat, "connection", 1, "connection reset by peer", 1.2)
    assert out.resend and out.reply is None
    kill = only(out.actions, KillReplica)
    assert [(k.seat, k.reason) for k in kill] == [(seat, "connection")]
    assert [s.reason for s in only(out.actions, StartReplica)] == ["replace"]
    # the failed seat is out before it is released: the queue is never handed it
    assert not only(out.actions, Grant) and rt.seats == []
    assert c.metrics.retries.get("m") == 1 and rt.replaced["connection"] == 1
    assert c.metrics.replaced.get("m", "connection") == 1
    # the other requests on the dead seat fail too: no second replacement, one retry each
    for _ in range(3):
        again = c.upstream_failed(rt, seat, "connection", 1, "reset", 1.3)
        assert again.resend and not only(again.actions, KillReplica)
        assert not only(again.actions, StartReplica)
    assert c.metrics.retries.get("m") == 4 and rt.in_flight == 0
    # a second failure of the same request answers 502
    new_start = only(out.actions, StartReplica)[0]
    new_seat, grants = up(c, rt, new_start.start, 2.0)
    assert [g.waiter for g in only(grants, Grant)] == [waiting.waiter]
    c.admit(rt, 2.0)  # the re-sent request's second send
    last = c.upstream_failed(rt, new_seat, "connection", 2, "refused /srv/x", 2.1)
    assert not last.resend and last.reply is not None
    assert (last.reply.status, last.reply.error_type) == (502, "Backend")
    assert "replica failed twice" in last.reply.message and "/srv" not in last.reply.message


@pytest.mark.parametrize(
    ("failure", "status", "error_type"),
    [("timeout", 504, "Timeout"), ("too_large", 502, "Backend")],
)
def test_a_slow_or_oversized_answer_is_not_re_sent_and_keeps_its_replica(
    failure: Any, status: int, error_type: str
) -> None:
    # the request may be what makes the replica slow or its answer big: sending it again
    # elsewhere would spread the damage
    c, rt = core()
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 1.0)
    out = c.upstream_failed(rt, seat, failure, 1, "no answer within 60 s", 61.0)
    assert not out.resend and out.reply == Reply(
        status, "model 'm': no answer within 60 s", error_type
    )
    assert out.actions == () and rt.seats == [seat] and seat.in_flight == 0
    assert c.metrics.retries.get("m") == 0


def test_the_retry_policy_is_data() -> None:
    c, rt = core()
    c.retry = RetryPolicy(max_sends=3)
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 1.0)
    assert c.upstream_failed(rt, seat, "connection", 2, "reset", 1.1).resend
    out = c.upstream_failed(rt, seat, "connection", 3, "reset", 1.2)
    assert not out.resend and out.reply is not None and "failed 3 times" in out.reply.message


def test_a_failed_start_answers_its_queue_502_then_backs_off() -> None:
    c, rt = core()
    a, b = c.admit(rt, 0.0), c.admit(rt, 0.1)
    start = only(a.actions, StartReplica)[0]
    error = StartError("m", "/models/x/vocab.txt: bad vocabulary", path="cold_boot")
    rejects = c.start_failed(rt, start.start, error, 1.0)
    assert [r.waiter for r in rejects] == [a.waiter, b.waiter]
    reply = rejects[0].reply
    assert (reply.status, reply.error_type) == (502, "StartFailed")
    assert "bad vocabulary" in reply.message and "/models/x" not in reply.message
    assert dict(reply_response(reply).headers)["retry-after"] == "1"  # the first backoff
    assert rt.state == "failed" and not rt.waiters
    # within the backoff: refused at once, no start
    now = c.admit(rt, 1.5)
    assert now.reply is not None and now.reply.status == 502 and now.actions == ()
    assert c.tick(rt, 1.6, {}) == []  # the tick does not retry a broken model either
    # after it, a request starts it again; a second failure doubles the backoff
    again = c.admit(rt, 2.1)
    start2 = only(again.actions, StartReplica)[0]
    c.start_failed(rt, start2.start, error, 2.2)
    assert rt.failure_until == pytest.approx(4.2) and rt.backoff_s == 4.0
    assert c.metrics.start_failures.get("m", "cold_boot") == 2


def test_a_failed_start_leaves_the_queue_to_another_start_in_progress() -> None:
    c, rt = core(concurrency=1)
    a = c.admit(rt, 0.0)
    first = only(a.actions, StartReplica)[0]
    second = c._start(rt, "panic")
    assert c.start_failed(rt, first.start, StartError("m", "boom"), 1.0) == []
    seat, actions = up(c, rt, second.start, 2.0)
    assert actions == [Grant("m", a.waiter, seat)]  # type: ignore[arg-type]
    assert rt.failure is None and rt.state == "ready"  # a start that works clears the failure


def test_scale_up_on_a_burst_and_down_to_zero_when_idle() -> None:
    c, rt = core(concurrency=10, idle_timeout_s=30.0, max_replicas=5)
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.5)
    for i in range(34):  # 35 in flight or queued on one replica of 10 (target 7 each)
        c.admit(rt, 0.6 + i * 0.01)
    actions = c.tick(rt, 1.0, {seat: "S"})
    starts = only(actions, StartReplica)
    assert rt.panicking and {s.reason for s in starts} == {"panic"}
    assert len(starts) == rt.desired - 1 >= 2
    # every request answered; the new replicas come up
    seats = [seat] + [up(c, rt, s.start, 1.5)[0] for s in starts]
    while rt.in_flight:
        busy = next(s for s in seats if s.in_flight)
        c.release(rt, busy, 2.0)
    assert not rt.waiters
    # quiet for idle_timeout: every replica drains and stops (min_replicas 0)
    t, stops = 2.0, []
    while t < 40.0:
        t += 1.0
        stops += only(c.tick(rt, t, {s: "S" for s in rt.seats}), StopReplica)
    assert {s.reason for s in stops} == {"idle"} and {s.seat for s in stops} == set(seats)
    assert rt.seats == [] and rt.state == "zero" and rt.desired == 0


def test_a_draining_replica_stops_at_its_last_answer() -> None:
    c, rt = core(concurrency=4, idle_timeout_s=5.0)
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.1)
    seat.draining = True
    assert c.admit(rt, 0.2).waiter is not None  # a draining seat takes no new request
    (stop,) = only(c.release(rt, seat, 0.3), StopReplica)
    assert (stop.seat, stop.reason) == (seat, "drained") and rt.seats == []


def test_min_replicas_start_when_the_gateway_opens() -> None:
    c, rt = core(min_replicas=2)
    assert [(a.model, a.reason) for a in c.open()] == [("m", "min"), ("m", "min")]
    assert len(rt.starts) == 2 and rt.state == "starting"


def test_liveness_kills_dead_and_stopped_replicas_and_probes_silent_ones() -> None:
    c, rt = core()
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.0)
    c.release(rt, seat, 0.1)
    assert only(c.tick(rt, 1.0, {seat: "S"}), Probe) == []
    (probe,) = only(c.tick(rt, 2.5, {seat: "S"}), Probe)  # silent for probe_interval
    assert probe.seat is seat and only(c.tick(rt, 5.0, {seat: "S"}), Probe) == []  # one at a time
    # three failed probes in a row: unresponsive
    assert c.probe_done(rt, seat, "health check failed: timed out", 5.1) == []
    assert c.probe_done(rt, seat, "health check failed: timed out", 7.2) == []
    (kill,) = c.probe_done(rt, seat, "health check failed: timed out", 9.3)
    assert isinstance(kill, KillReplica)
    assert kill.reason == "unresponsive" and "3 health probes in a row failed" in kill.why
    # a process that stays stopped (T) for stopped_s is hung; one that is gone is dead
    c, rt = core()
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.0)
    assert only(c.tick(rt, 1.0, {seat: "T"}), KillReplica) == []
    actions = c.tick(rt, 2.0, {seat: "T"})
    (stopped,) = only(actions, KillReplica)
    assert stopped.reason == "stopped"
    # its request is in flight (re-sent once it fails) and nothing else serves: replaced
    assert [a.reason for a in only(actions, StartReplica)] == ["replace"]
    c, rt = core()
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.0)
    actions = c.tick(rt, 0.5, {seat: None})
    (dead,) = only(actions, KillReplica)
    assert dead.reason == "exited" and "process exited" in dead.why
    assert [s.reason for s in only(actions, StartReplica)] == ["replace"]
    assert dict(rt.replaced) == {"exited": 1} and c.metrics.deaths.get("m") == 1


def test_shutdown_stops_every_replica_and_refuses_the_queue() -> None:
    c, rt = core(concurrency=1)
    start = only(c.admit(rt, 0.0).actions, StartReplica)[0]
    seat, _ = up(c, rt, start.start, 0.5)
    queued = c.admit(rt, 0.6)
    actions = c.shutdown(1.0)
    (stop,) = only(actions, StopReplica)
    (reject,) = only(actions, Reject)
    assert stop.seat is seat and reject.waiter == queued.waiter
    assert (reject.reply.status, reject.reply.message) == (503, "the gateway is shutting down")
    refused = c.admit(rt, 1.1)  # nothing runs or starts any more
    assert refused.reply is not None and refused.reply.status == 503
    assert c.tick(rt, 2.0, {}) == []  # no scaling while draining
