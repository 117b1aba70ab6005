"""The contract between the gateway (issue 10a) and the start paths (issue 10b).

The gateway asks a :class:`Starter` for a replica of a model and gets back a
:class:`Replica`: a worker answering HTTP on ``host:port`` that has *already
passed* its readiness check (``GET /health`` answered 200, ``_probe.py``).
Every start path returns this one type; what differs between them (our own
child process, a CRIU-restored process, a warm slot, a runc container) is the
:class:`Process` it holds, which knows how to tell whether it runs and how to
stop it. The readiness check's connection stays open in
:attr:`Replica.connections` and the gateway sends its first request on it:
one TCP connect per start, not two. The starter picks
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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from zerostart.platform_toml import ModelConfig

if TYPE_CHECKING:
    from zerostart.platform.pool import WarmPool
    from zerostart.platform.upstream import UpstreamPool

StartPath = Literal["snapshot", "warm_slot", "cold_boot"]
START_PATHS: tuple[StartPath, ...] = ("snapshot", "warm_slot", "cold_boot")  # fastest first


@dataclass(frozen=True)
class Fallback:
    """A start path that was tried (or skipped) before the one that worked, and why."""

    path: StartPath
    reason: str  # one line, e.g. "no snapshot for this model", "pool empty"


class Process(Protocol):
    """How a start path owns a replica's process: is it running, stop it, kill it."""

    @property
    def pid(self) -> int: ...  # the worker's pid (runc's for a container); 0 if unknown

    @property
    def returncode(self) -> int | None: ...  # exit status once known (our children only)

    def is_alive(self) -> bool:
        """Whether the process still runs (cheap: a waitpid/poll, no I/O to the worker)."""
        ...

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM (or the slot's stop message), wait up to ``timeout_s``, then SIGKILL."""
        ...

    def kill(self) -> None:
        """SIGKILL now, without waiting; idempotent."""
        ...


@dataclass(eq=False)  # identity: replicas are kept in sets
class Replica:
    """A running worker serving one model, ready for requests (every start path's result).

    ``phases_ms``: see the module docstring; ``total_ms``: ``Starter.start``
    called -> returned, wall clock; ``fallbacks``: paths tried first, in order;
    ``connections``: the readiness check's pool, its connection still open (None
    for a replica whose starter made none; the gateway then opens its own).
    """

    model: str  # ModelConfig.name
    process: Process
    port: int
    start_path: StartPath
    phases_ms: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    fallbacks: tuple[Fallback, ...] = ()
    host: str = "127.0.0.1"  # everything started on this node listens on loopback
    connections: UpstreamPool | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def is_alive(self) -> bool:
        return self.process.is_alive()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful: SIGTERM, drain, SIGKILL after ``timeout_s``; idempotent, never raises."""
        self.close_connections()
        await self.process.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL now; idempotent, never raises for a process that is already gone."""
        self.close_connections()
        self.process.kill()

    def close_connections(self) -> None:
        if self.connections is not None:
            self.connections.close()


class Starter(Protocol):
    """Turns a model's config into a ready :class:`Replica` by the fastest path that works.

    ``open``, ``status`` and ``pool`` have defaults for a starter without a warm
    pool: subclass this protocol to inherit them (the gateway calls them on
    every starter; nothing is looked up with ``getattr``).
    """

    async def start(self, model: ModelConfig) -> Replica:
        """A replica of ``model`` that answers ``GET /health`` with 200.

        Raises :class:`~zerostart.platform.errors.StartError`; cancellable.
        """
        ...

    async def close(self) -> None:
        """Stop everything this starter still owns (see the module docstring)."""
        ...

    async def open(self) -> None:
        """Called once by the gateway after it listens (a warm pool starts filling)."""
        return None

    def status(self) -> dict[str, Any] | None:
        """The starter's part of ``GET /status`` (starts by path, the pool's slots), or None."""
        return None

    # The warm pool whose size ``[pool] sizing = "lp"`` re-plans, or None.
    pool: WarmPool | None = None


__all__ = ["START_PATHS", "Fallback", "ModelConfig", "Process", "Replica", "StartPath", "Starter"]
