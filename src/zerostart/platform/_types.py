"""The contract between the gateway (issue 10a) and the start paths (issue 10b).

The gateway asks a :class:`Starter` for a replica of a model and gets back a
:class:`Replica`: a worker answering HTTP on ``host:port`` that has *already
passed* its readiness check (``GET /health`` answered 200). The starter picks
the fastest path that works, fastest first (``snapshot`` restore, a
``warm_slot`` from the pool, a ``cold_boot``), and records each fallback with
its reason; the gateway logs and counts them.

Ownership
---------
* A replica returned by ``start`` belongs to the caller, which stops it with
  :meth:`Replica.stop` (graceful: SIGTERM, drain, then SIGKILL after
  ``timeout_s``) or :meth:`Replica.kill` (SIGKILL now, no wait). Both are
  idempotent and never raise for a process that is already gone.
* ``start`` is cancellable: if the awaiting task is cancelled, the starter
  stops whatever it had begun (process, slot, restore) before re-raising.
* ``close`` stops everything the starter still owns: slots, starts in
  progress, and as a safety net every replica it returned that is still
  alive. After ``close`` no process the starter created is left running.
* A start that fails by every path raises
  :class:`~zerostart.platform.errors.StartError` naming the model and the
  problem (a corrupt bundle's message, not "timed out").

Worker key
----------
A starter built with ``worker_key`` starts every worker with that key in its
environment as ``API_KEY`` (the worker's ``--api-key``, TEI's convention), and
the gateway sends ``Authorization: Bearer <worker_key>`` on every request it
forwards: a local user who finds a replica's loopback port cannot bypass the
gateway's own auth. ``GET /health`` needs no key.

Phase names (``Replica.phases_ms``, milliseconds, in the order they happened):
``restore`` (snapshot restore), ``slot_assign`` (a slot took the model over
the control socket), ``spawn`` (process creation to the worker's first line),
``interpreter``, ``imports``, ``bundle_map``, ``tokenizer``, ``engine``,
``first_batch`` (the worker's warm-up batch), ``listening``, ``health`` (the
starter's readiness check). A path reports the phases it went through; the
gateway adds ``queue`` (the request's own wait) in its answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from zerostart.platform.config import ModelConfig

StartPath = Literal["snapshot", "warm_slot", "cold_boot"]
START_PATHS: tuple[StartPath, ...] = ("snapshot", "warm_slot", "cold_boot")  # fastest first


@dataclass(frozen=True)
class Fallback:
    """A start path that was tried (or skipped) before the one that worked, and why."""

    path: StartPath
    reason: str  # one line, e.g. "no snapshot for this model", "pool empty"


@runtime_checkable
class Replica(Protocol):
    """A running worker serving one model, ready for requests."""

    @property
    def model(self) -> str: ...  # ModelConfig.name
    @property
    def host(self) -> str: ...  # "127.0.0.1" for everything started on this node
    @property
    def port(self) -> int: ...
    @property
    def pid(self) -> int: ...  # the worker's pid (the container's init for a runc slot)
    @property
    def start_path(self) -> StartPath: ...
    @property
    def phases_ms(self) -> dict[str, float]: ...  # see the module docstring
    @property
    def total_ms(self) -> float: ...  # Starter.start called -> returned, wall clock
    @property
    def fallbacks(self) -> tuple[Fallback, ...]: ...  # paths tried first, in order

    def is_alive(self) -> bool:
        """Whether the process still runs (cheap: a waitpid/poll, no I/O to the worker)."""
        ...

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s`` for the worker to drain and exit, then SIGKILL."""
        ...

    def kill(self) -> None:
        """SIGKILL now and reap; for shutdown paths that cannot wait."""
        ...


@runtime_checkable
class Starter(Protocol):
    """Turns a model's config into a ready :class:`Replica` by the fastest path that works."""

    async def start(self, model: ModelConfig) -> Replica:
        """A replica of ``model`` that answers ``GET /health`` with 200.

        Raises :class:`~zerostart.platform.errors.StartError`; cancellable.
        """
        ...

    async def close(self) -> None:
        """Stop everything this starter still owns (see the module docstring)."""
        ...

    # Optional, not part of the protocol check: ``async def open(self) -> None``, called
    # once by Gateway.start after it listens (PathStarter starts filling its warm pool).


__all__ = ["START_PATHS", "Fallback", "ModelConfig", "Replica", "StartPath", "Starter"]
