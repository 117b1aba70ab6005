"""The gateway's decisions, free of I/O: admission, retries, replica lifecycle, reconciliation.

Theory of operation
-------------------
Like ``serve/_h1core.py`` for HTTP, this module does no I/O and reads no clock:
the driver (``gateway.py``) feeds :class:`GatewayCore` *events* with the time
they happened (``now``, seconds on any monotonic clock) and carries out the
*actions* it returns, in order. Tests drive it with made-up times and fake
replicas (``tests/unit/test_gateway_core.py``).

Events (methods) and what they may return:

==========================  ======================================================
``arrive``                  a model request came in (restarts the idle clock)
``admit``                   a request wants a seat: :class:`Admission` (a seat
                            now, a place in the queue plus maybe one
                            :class:`StartReplica`, or a :class:`Reply` refusal)
``give_up`` / ``withdraw``  a queued request's deadline passed (its 503) / its
                            client left
``release``                 a request's answer was sent: :class:`Grant` the seat
                            to the queue's head, :class:`StopReplica` if it drains
``answered``                a replica answered (as good as a passing probe)
``upstream_failed``         the forward to a replica failed: :class:`Outcome`
                            (re-send, or the reply), by :class:`RetryPolicy`
``started`` / ``start_failed``  a start ended: the new :class:`Seat` and grants,
                            or the queue's 502 (with backoff)
``tick``                    reconcile: process states in, :class:`KillReplica`,
                            :class:`Probe`, :class:`StartReplica`,
                            :class:`StopReplica` (scale down) out
``probe_done``              a health probe came back
``shutdown``                stop every replica, refuse every queued request
==========================  ======================================================

Admission: a request takes a free seat (a replica with fewer than
``concurrency`` requests in flight, the least loaded first) if nobody queues;
else it joins the model's FIFO queue (``max_queue`` full: 429 with
``Retry-After``). A request that finds nothing running or starting triggers
exactly one start (``Scaler.activate``); every seat that frees up or comes up
goes to the head of the queue at once (:meth:`GatewayCore._dispatch`).

Retries (:class:`RetryPolicy`, data): a replica whose connection failed
(refused, reset, closed before an answer) is taken out and killed, and the
request is re-sent once, to another replica or the replacement: inference is an
idempotent read of a model. A second failure answers 502. A replica that
answers too slowly (504) or too much (502) is *not* retried: the request may be
what makes it slow or big.

Lifecycle: a start that fails answers the requests waiting for it with 502 and
the worker's complaint, and the model backs off (1 s, doubling to 60 s) before
the next; a replica that died or hangs (``liveness.py``) is taken out, killed,
counted by reason, and replaced if requests wait for it.

Reconcile (``tick``): every tick the KPA (``autoscaler.py``) says how many
replicas a model wants; the difference is started, the surplus drained (a
draining replica takes no new request and is stopped at its last answer).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from zerostart.paths import redact_paths
from zerostart.platform._state import BACKOFF_FIRST_S, BACKOFF_MAX_S, ModelRuntime, Seat
from zerostart.platform._state import StartRecord as StartRecord
from zerostart.platform._types import Replica
from zerostart.platform.autoscaler import Scaler
from zerostart.platform.errors import StartError
from zerostart.platform.liveness import (
    LivenessPolicy,
    answered,
    observe_state,
    probe_due,
    probe_result,
    probe_sent,
)
from zerostart.platform.metrics import GatewayMetrics
from zerostart.platform_toml import PlatformConfig

log = logging.getLogger("zerostart.platform")

STOP_TIMEOUT_S = 10.0  # a replica's own drain on scale-down before SIGKILL
KILL_REAP_S = 1.0  # after SIGKILL, how long the reaper waits for the exit
RETRY_AFTER_S = 1.0  # Retry-After of a full queue, a queue timeout, a shutdown

Failure = Literal["connection", "timeout", "too_large"]  # how a forward to a replica failed


@dataclass(frozen=True)
class Reply:
    """An answer the gateway gives itself (TEI's error body); ``retry_after_s`` rounds up to 1."""

    status: int
    message: str
    error_type: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed forward does, by :data:`Failure` (today's rules, as data).

    ``resend``: failures sent again (on another seat), up to ``max_sends`` sends
    in all; ``takes_out``: failures that take the replica out (kill, replace);
    ``replies``: (status, error_type) when a failure is answered.
    """

    max_sends: int = 2
    resend: frozenset[Failure] = frozenset({"connection"})
    takes_out: frozenset[Failure] = frozenset({"connection"})
    replies: Mapping[Failure, tuple[int, str]] = field(
        default_factory=lambda: {
            "connection": (502, "Backend"),
            "timeout": (504, "Timeout"),
            "too_large": (502, "Backend"),
        }
    )


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartReplica:
    """Start a replica of ``model``; report back with ``started``/``start_failed`` and ``start``."""

    model: str
    start: int
    reason: str  # activate, replace, min, or the autoscaler's reason


@dataclass(frozen=True)
class Grant:
    """Queued request ``waiter`` has ``seat`` (taken for it already)."""

    model: str
    waiter: int
    seat: Seat


@dataclass(frozen=True)
class Reject:
    """Answer queued request ``waiter`` with ``reply`` (it left the queue)."""

    model: str
    waiter: int
    reply: Reply


@dataclass(frozen=True)
class StopReplica:
    """``seat`` is out (drained, scaled down, shut down): close its connections, stop it."""

    model: str
    seat: Seat
    reason: str
    timeout_s: float = STOP_TIMEOUT_S


@dataclass(frozen=True)
class KillReplica:
    """``seat`` failed (``reason``: connection, exited, stopped, unresponsive): SIGKILL it."""

    model: str
    seat: Seat
    reason: str
    why: str


@dataclass(frozen=True)
class Probe:
    """Send ``seat`` a health probe; report back with ``probe_done``."""

    model: str
    seat: Seat


Action = StartReplica | Grant | Reject | StopReplica | KillReplica | Probe


@dataclass(frozen=True)
class Admission:
    """``admit``'s answer: exactly one of ``seat``, ``waiter`` (queued) or ``reply`` is set."""

    seat: Seat | None = None
    waiter: int | None = None
    reply: Reply | None = None
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """``upstream_failed``'s answer: send again (``resend``), else answer ``reply``."""

    resend: bool
    reply: Reply | None
    actions: tuple[Action, ...]


def start_failed_reply(exc: StartError, retry_after_s: float) -> Reply:
    """502 naming the model and the worker's complaint, without server paths.

    The full text (paths included) is in the gateway's log (``event=start_failed``).
    """
    return Reply(
        502,
        f"{redact_paths(str(exc))} (could not start a replica)",
        "StartFailed",
        retry_after_s,
    )


class GatewayCore:
    """Every model's seats, queue, starts and scaler, changed only by events; see the module
    docstring. ``models`` is what ``/status`` and ``/metrics`` read."""

    def __init__(
        self,
        config: PlatformConfig,
        now: float,
        *,
        metrics: GatewayMetrics,
        liveness: LivenessPolicy | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.metrics = metrics
        self.liveness = liveness or LivenessPolicy()
        self.retry = retry or RetryPolicy()
        self.models = {
            name: ModelRuntime(m, Scaler(m, config.autoscaler, now))
            for name, m in config.models.items()
        }
        self.draining = False
        self._ids = itertools.count(1)  # waiters and starts

    # -- admission ---------------------------------------------------------------------------
    def arrive(self, rt: ModelRuntime, now: float) -> None:
        """A request for ``rt`` came in (once per request, not per send)."""
        rt.scaler.request(now)

    def admit(self, rt: ModelRuntime, now: float) -> Admission:
        """A request wants a seat: one now, a place in the queue, or a refusal."""
        seat = self._pick(rt)
        if seat is not None and not rt.waiters:
            self._take(rt, seat, now)
            rt.scaler.concurrency(now, rt.concurrency)
            return Admission(seat=seat)
        name = rt.config.name
        if self.draining and not rt.seats and not rt.starts:
            return Admission(reply=_shutting_down())
        if rt.failure is not None and not rt.seats and now < rt.failure_until:
            return Admission(reply=start_failed_reply(rt.failure, rt.failure_until - now))
        if len(rt.waiters) >= rt.config.max_queue:
            return Admission(
                reply=Reply(
                    429,
                    f"model {name!r}: {len(rt.waiters)} requests already queued (max_queue)",
                    "Overloaded",
                    RETRY_AFTER_S,
                )
            )
        actions: tuple[Action, ...] = ()
        if rt.scaler.activate(now, len(rt.seats), len(rt.starts)):
            actions = (self._start(rt, "activate"),)
        waiter = next(self._ids)
        rt.waiters.append(waiter)
        rt.scaler.concurrency(now, rt.concurrency)
        return Admission(waiter=waiter, actions=actions)

    def give_up(self, rt: ModelRuntime, waiter: int, now: float) -> Reply:
        """Queued request ``waiter`` reached its deadline: it leaves the queue; its 503."""
        self.withdraw(rt, waiter, now)
        return Reply(
            503,
            f"model {rt.config.name!r}: no replica free within queue_timeout "
            f"({rt.config.queue_timeout_s:g} s)",
            "Unavailable",
            RETRY_AFTER_S,
        )

    def withdraw(self, rt: ModelRuntime, waiter: int, now: float) -> None:
        """Queued request ``waiter`` left (its client went away); no-op if it is not queued."""
        try:
            rt.waiters.remove(waiter)
        except ValueError:
            return
        rt.scaler.concurrency(now, rt.concurrency)

    def release(self, rt: ModelRuntime, seat: Seat, now: float) -> list[Action]:
        """A request on ``seat`` ended (answered, failed, or its client left)."""
        seat.in_flight -= 1
        rt.in_flight -= 1
        if seat.in_flight == 0:
            seat.idle(now)
        rt.scaler.request(now)  # idle time counts from the last answer
        actions: list[Action] = []
        if seat.draining and seat.in_flight == 0 and seat in rt.seats:
            actions.append(self._stop(rt, seat, "drained", now))
        actions += self._dispatch(rt, now)
        rt.scaler.concurrency(now, rt.concurrency)
        return actions

    def answered(self, seat: Seat, now: float) -> None:
        """``seat``'s replica answered a request: as good as a passing health probe."""
        seat.health = answered(seat.health, now)

    # -- forwarding ----------------------------------------------------------------------------
    def upstream_failed(
        self, rt: ModelRuntime, seat: Seat, failure: Failure, sends: int, why: str, now: float
    ) -> Outcome:
        """The ``sends``-th send (1, 2, ...) of a request to ``seat`` failed with ``failure``.

        The seat is released; a failure in ``takes_out`` takes the replica out
        first (so the queue is never handed the failed seat). Re-sent while
        ``sends < max_sends`` and ``failure`` is in ``resend``; else the reply.
        """
        policy = self.retry
        actions: list[Action] = []
        if failure in policy.takes_out:
            actions += self.seat_failed(rt, seat, why, failure, now)
        actions += self.release(rt, seat, now)
        name = rt.config.name
        if failure in policy.resend and sends < policy.max_sends:
            self.metrics.retries.inc(name)
            return Outcome(True, None, tuple(actions))
        status, error_type = policy.replies[failure]
        if failure in policy.resend:
            times = "twice" if sends == 2 else f"{sends} times"
            message = f"model {name!r}: replica failed {times}, last: {redact_paths(why)}"
        else:
            message = f"model {name!r}: {why}"
        return Outcome(False, Reply(status, message, error_type), tuple(actions))

    # -- replicas -----------------------------------------------------------------------------
    def _start(self, rt: ModelRuntime, reason: str) -> StartReplica:
        if reason in ("activate", "replace", "min"):  # not a tick's decision (counted there)
            self.metrics.scale_events.inc(rt.config.name, "up", reason)
        start = next(self._ids)
        rt.starts.add(start)
        log.info("model=%s event=start reason=%s", rt.config.name, reason)
        return StartReplica(rt.config.name, start, reason)

    def open(self) -> list[Action]:
        """The gateway listens: bring each model up to ``min_replicas``."""
        return [
            self._start(rt, "min")
            for rt in self.models.values()
            for _ in range(rt.config.min_replicas)
        ]

    def started(
        self, rt: ModelRuntime, start: int, replica: Replica, record: StartRecord, now: float
    ) -> tuple[Seat, list[Action]]:
        """Start ``start`` gave ``replica``: its seat, and the queue's grants."""
        rt.starts.discard(start)
        rt.last_start = record
        rt.recent_starts.append(record)
        rt.failure, rt.backoff_s = None, BACKOFF_FIRST_S
        seat = Seat(replica, record, now)
        rt.seats.append(seat)
        return seat, self._dispatch(rt, now)

    def start_failed(
        self, rt: ModelRuntime, start: int, exc: StartError, now: float
    ) -> list[Action]:
        """Start ``start`` failed: back off; answer the queue if nothing else will serve it."""
        rt.starts.discard(start)
        self.metrics.start_failures.inc(rt.config.name, exc.path or "unknown")
        rt.failure = exc
        rt.failure_until = now + rt.backoff_s
        rt.backoff_s = min(rt.backoff_s * 2, BACKOFF_MAX_S)
        if rt.seats or rt.starts:
            return []  # others will serve the queue
        reply = start_failed_reply(exc, rt.failure_until - now)
        actions: list[Action] = [Reject(rt.config.name, w, reply) for w in rt.waiters]
        rt.waiters.clear()
        rt.scaler.concurrency(now, rt.concurrency)
        return actions

    def seat_failed(
        self, rt: ModelRuntime, seat: Seat, why: str, reason: str, now: float
    ) -> list[Action]:
        """``seat`` failed (``reason``: connection, exited, stopped, unresponsive): take it out,
        kill it, replace it if requests wait. Its requests in flight fail when it dies and are
        re-sent (``upstream_failed``). A no-op for a seat already out."""
        if seat not in rt.seats:
            return []
        name = rt.config.name
        rt.seats.remove(seat)
        rt.retire(seat, now)
        self.metrics.deaths.inc(name)
        self.metrics.replaced.inc(name, reason)
        rt.replaced[reason] += 1
        actions: list[Action] = [KillReplica(name, seat, reason, why)]
        if (rt.waiters or rt.in_flight) and not rt.starts and not rt.ready:
            actions.append(self._start(rt, "replace"))
        return actions

    def _stop(self, rt: ModelRuntime, seat: Seat, reason: str, now: float) -> StopReplica:
        if seat in rt.seats:
            rt.seats.remove(seat)
        rt.retire(seat, now)
        return StopReplica(rt.config.name, seat, reason)

    # -- reconcile -----------------------------------------------------------------------------
    def tick(self, rt: ModelRuntime, now: float, states: Mapping[Seat, str | None]) -> list[Action]:
        """One autoscaler tick for ``rt``: reap the dead and hung, then match the desired count.

        ``states``: each seat's process state (``liveness.proc_state``; None: gone).
        """
        actions = self._check_liveness(rt, now, states)
        rt.scaler.tick(now)
        ready = rt.ready
        decision = rt.scaler.decide(now, ready)
        rt.desired, rt.panicking = decision.desired, decision.panicking
        have = ready + len(rt.starts)
        name = rt.config.name
        if self.draining:
            return actions
        if decision.desired > have:
            retry = rt.waiters or have < rt.config.min_replicas
            if rt.failure is not None and (now < rt.failure_until or not retry):
                return actions  # a broken model is retried, backing off, for its requests or min
            self.metrics.scale_events.inc(name, "up", decision.reason)
            log.info(
                "model=%s event=scale_up from=%d to=%d reason=%s panic=%s concurrency=%.1f",
                name,
                have,
                decision.desired,
                decision.reason,
                "yes" if decision.panicking else "no",
                decision.panic_concurrency,
            )
            actions += [self._start(rt, decision.reason) for _ in range(decision.desired - have)]
        elif decision.desired < ready:
            surplus = sorted((s for s in rt.seats if not s.draining), key=lambda s: s.in_flight)
            self.metrics.scale_events.inc(name, "down", decision.reason)
            log.info(
                "model=%s event=scale_down from=%d to=%d reason=%s",
                name,
                ready,
                decision.desired,
                decision.reason,
            )
            for seat in surplus[: ready - decision.desired]:
                seat.draining = True
                if seat.in_flight == 0:
                    actions.append(self._stop(rt, seat, decision.reason, now))
        return actions

    def _check_liveness(
        self, rt: ModelRuntime, now: float, states: Mapping[Seat, str | None]
    ) -> list[Action]:
        policy = self.liveness
        actions: list[Action] = []
        for seat in list(rt.seats):
            state = states.get(seat)
            seat.health, verdict = observe_state(seat.health, state, now, policy)
            if verdict == "dead":
                actions += self.seat_failed(
                    rt, seat, f"process exited (state {state})", "exited", now
                )
            elif verdict == "hung":
                why = f"process stopped (state {state}) for {policy.stopped_s:g} s"
                actions += self.seat_failed(rt, seat, why, "stopped", now)
            elif not seat.draining and probe_due(seat.health, now, policy):
                seat.health = probe_sent(seat.health)
                actions.append(Probe(rt.config.name, seat))
        return actions

    def probe_done(self, rt: ModelRuntime, seat: Seat, why: str | None, now: float) -> list[Action]:
        """A health probe of ``seat`` came back: passed (``why`` None) or failed, and why."""
        if seat not in rt.seats:
            return []
        seat.health, verdict = probe_result(seat.health, why is None, now, self.liveness)
        if verdict != "hung":
            return []
        return self.seat_failed(
            rt,
            seat,
            f"{seat.health.failures} health probes in a row failed, last: {why}",
            "unresponsive",
            now,
        )

    def shutdown(self, now: float) -> list[Action]:
        """Stop every replica, refuse every queued request, forget starts (the driver cancels
        them)."""
        self.draining = True
        actions: list[Action] = []
        for rt in self.models.values():
            rt.starts.clear()
            for seat in list(rt.seats):
                actions.append(self._stop(rt, seat, "shutdown", now))
            actions += [Reject(rt.config.name, w, _shutting_down()) for w in rt.waiters]
            rt.waiters.clear()
        return actions

    # -- seats ---------------------------------------------------------------------------------
    @staticmethod
    def _pick(rt: ModelRuntime) -> Seat | None:
        best = None
        limit = rt.config.concurrency
        for seat in rt.seats:
            if (
                not seat.draining
                and seat.in_flight < limit
                and (best is None or seat.in_flight < best.in_flight)
            ):
                best = seat
        return best

    @staticmethod
    def _take(rt: ModelRuntime, seat: Seat, now: float) -> None:
        if seat.in_flight == 0:
            seat.busy(now)
        seat.in_flight += 1
        rt.in_flight += 1

    def _dispatch(self, rt: ModelRuntime, now: float) -> list[Action]:
        """Hand free seats to queued requests, oldest first."""
        grants: list[Action] = []
        while rt.waiters:
            seat = self._pick(rt)
            if seat is None:
                break
            self._take(rt, seat, now)
            grants.append(Grant(rt.config.name, rt.waiters.popleft(), seat))
        if grants:
            rt.scaler.concurrency(now, rt.concurrency)
        return grants


def _shutting_down() -> Reply:
    return Reply(503, "the gateway is shutting down", "Unavailable", RETRY_AFTER_S)
