"""Is a replica or a warm slot dead, hung, or fine? Pure decisions, fed by the caller.

Theory of operation
-------------------
No I/O and no clock here (the gateway and the pool own those, and tests drive
this with made-up times). Two kinds of evidence come in:

* the process's **state**, as ``/proc/PID/stat`` field 3 says (:func:`proc_state`
  reads it; ``None`` when there is no such process). ``Z`` (zombie), ``X``
  (dead) or no process: **dead** at once. ``T`` (stopped: SIGSTOP, SIGTSTP) or
  ``t`` (stopped by a tracer): **hung** once it has stayed stopped for
  ``stopped_s`` (a debugger's or CRIU's short stop is not a failure; a stopped
  process answers nothing, so waiting longer only makes requests wait);
* the result of a **health probe** (``GET /health`` for a replica, a ping on
  the control socket for a slot) with a deadline of ``probe_timeout_s``:
  **hung** after ``failed_probes`` failures in a row. An answer to a real
  request counts as a passing probe, so a busy replica is not probed at all
  and a slow machine does not turn load into false deaths.

A :class:`Health` record per replica/slot holds what is needed to decide;
each function returns the new record and a :data:`Verdict`. The caller takes
a dead or hung one out, kills it, replaces it, re-sends its requests (at most
once each) and counts it.

Defaults: the gateway's tick is 0.5 s, so a SIGSTOPped replica is found
within about ``stopped_s`` + one tick (~1.5 s); a replica whose event loop
is wedged but still runs, after ``failed_probes`` x ``probe_interval_s`` +
``probe_timeout_s`` (~9 s). Before this module, a SIGSTOPped replica stayed
``ready`` while its requests waited for ``upstream_timeout`` (60 s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Verdict = Literal["ok", "dead", "hung"]
DEAD_STATES = frozenset("ZX")
STOPPED_STATES = frozenset("Tt")


@dataclass(frozen=True)
class LivenessPolicy:
    """How long to believe a silent or stopped process; seconds."""

    stopped_s: float = 1.0  # in state T/t this long: hung
    probe_interval_s: float = 2.0  # between probes of one idle replica or slot
    probe_timeout_s: float = 3.0  # a probe's deadline (a loaded 2-core node answers in < 0.1 s)
    failed_probes: int = 3  # consecutive failed probes: hung


@dataclass(frozen=True)
class Health:
    """What one replica's or slot's liveness verdict rests on (times: any monotonic clock)."""

    since: float  # when it came up (no probe is due before since + probe_interval_s)
    stopped_since: float | None = None
    failures: int = 0  # probes failed in a row
    heard_at: float | None = None  # last probe's end, or last answered request
    probing: bool = False  # a probe is out


def proc_state(pid: int) -> str | None:
    """Field 3 of ``/proc/PID/stat`` (``R``, ``S``, ``D``, ``T``, ``t``, ``Z``, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    tail = data.rpartition(b")")[2].split()  # the command name may hold spaces and ')'
    return tail[0].decode("ascii", "replace") if tail else None


def observe_state(
    health: Health, state: str | None, now: float, policy: LivenessPolicy
) -> tuple[Health, Verdict]:
    """The process was seen in ``state`` at ``now``."""
    if state is None or state in DEAD_STATES:
        return health, "dead"
    if state in STOPPED_STATES:
        since = health.stopped_since if health.stopped_since is not None else now
        health = replace(health, stopped_since=since)
        return health, "hung" if now - since >= policy.stopped_s else "ok"
    if health.stopped_since is not None:
        health = replace(health, stopped_since=None)
    return health, "ok"


def probe_due(health: Health, now: float, policy: LivenessPolicy) -> bool:
    """Whether to send a probe now: none out, not stopped, nothing heard for an interval."""
    if health.probing or health.stopped_since is not None:
        return False
    last = health.heard_at if health.heard_at is not None else health.since
    return now - last >= policy.probe_interval_s


def probe_sent(health: Health) -> Health:
    return replace(health, probing=True)


def probe_result(
    health: Health, ok: bool, now: float, policy: LivenessPolicy
) -> tuple[Health, Verdict]:
    """A probe came back (``ok``) or failed or passed its deadline (not ``ok``)."""
    if ok:
        return replace(health, probing=False, failures=0, heard_at=now), "ok"
    failures = health.failures + 1
    # the next probe waits an interval from now, as after a pass
    health = replace(health, probing=False, failures=failures, heard_at=now)
    return health, "hung" if failures >= policy.failed_probes else "ok"


def answered(health: Health, now: float) -> Health:
    """A real request was answered: as good as a passing probe."""
    return replace(health, failures=0, heard_at=now)
