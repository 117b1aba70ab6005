"""The start paths, fastest first: snapshot restore, warm slot, cold boot.

:class:`PathStarter` implements :class:`~zerostart.platform._types.Starter`.
For each start it tries, in order:

(a) ``snapshot``: a CRIU snapshot named after the model in the snapshot store
    (made with ``zerostart snapshot --name MODEL -- zerostart serve BUNDLE
    --port P``), restored with ``zerostart.snapshot.restore(fallback=False)``.
    Skipped, with the reason, when: snapshots are off, there is no snapshot of
    that name, we are not root (CRIU needs it), the snapshot is of another
    command than this model's bundle, or its port is taken (a process
    snapshot comes back on its recorded port, so one copy runs at a time).
    Any restore failure (incompatible host, changed files, CRIU error) falls
    through with CRIU's or the check's own message.
(b) ``warm_slot``: a ready slot of the model's device kind from the pool,
    assigned the bundle. An empty pool falls through with the pool's reason
    (booting, or slots failing their health check). A slot that dies or
    times out falls through; a slot that reports the *bundle* is bad raises
    :class:`StartError` at once (a cold boot would read the same bad file).
(c) ``cold_boot``: ``ColdBootStarter`` (``replica.py``), which raises
    StartError with the worker's own complaint when that fails too.

Every fallback is recorded on the replica (``Replica.fallbacks``, which the
gateway logs and counts) and in :attr:`PathStarter.counts`. Each path's phases
go into ``Replica.phases_ms``, in the order they happened: ``restore`` +
``health`` for a snapshot; ``slot_assign`` (the control channel's own cost:
assign round trip minus the slot's phases), ``bundle_map``, ``tokenizer``,
``engine``, ``listening``, ``health`` for a slot (no warm-up batch: the
canary already ran the engine code; see ``serve/slot.py``).

With a ``worker_key`` (``_types.py``, "Worker key"), a slot gets the key in its
assignment (over the 0600 control socket; never on a command line or in a
log), and a restored worker must prove it holds it (401 without it, 200 with
it) or it is stopped and the start falls through: a snapshot freezes the key
its worker was started with.

Image models (``source_kind`` "image") start in a runc container
(``image_start.py``): a restored container snapshot, else a container boot
that snapshots itself for next time; no container slot yet. Registry
references (``"reference"``) need a pull first and fail with StartError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.platform._probe import HEALTH_TIMEOUT_S, ready_check
from zerostart.platform._types import Fallback, Replica, Starter, StartPath
from zerostart.platform.container_slot import ContainerSlot
from zerostart.platform.errors import StartError
from zerostart.platform.image_start import image_path, start_image
from zerostart.platform.pool import WarmPool
from zerostart.platform.replica import ColdBootStarter
from zerostart.platform.slot import Slot, SlotError, SlotProcess
from zerostart.platform.upstream import UpstreamError, UpstreamPool
from zerostart.platform_toml import ModelConfig, PlatformConfig

log = logging.getLogger("zerostart.platform.starter")


@dataclass(eq=False)
class RestoredProcess:
    """A worker restored from a CRIU snapshot. Not our child (CRIU detaches it to init)."""

    pid: int
    start_ticks: int | None = field(default=None, repr=False)
    returncode = None  # not our child: its exit status is init's

    def is_alive(self) -> bool:
        from zerostart.snapshot.marker import start_ticks

        # Same PID and same kernel start time: not a new process that reused the PID.
        return start_ticks(self.pid) == self.start_ticks and self.start_ticks is not None

    async def stop(self, timeout_s: float) -> None:
        from zerostart.snapshot import stop_process

        if self.is_alive():
            await asyncio.to_thread(stop_process, self.pid, timeout_s)

    def kill(self) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)


class PathStarter(Starter):
    """Snapshot, then warm slot, then cold boot; see the module docstring.

    ``pool``: the node's warm pool (None: no slot path). ``snapshot_store``:
    where snapshots live (default: ``zerostart.snapshot.default_store()``);
    ``snapshots=False`` skips that path.
    """

    def __init__(
        self,
        pool: WarmPool | None = None,
        *,
        cold: ColdBootStarter | None = None,
        snapshots: bool = True,
        snapshot_store: str | os.PathLike[str] | None = None,
        verify: str = "fast",
        worker_key: str | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.pool = pool
        self.cold = cold or ColdBootStarter(worker_key=worker_key, max_body_bytes=max_body_bytes)
        # The gateway's body limit, given to every worker it starts (slots at assignment).
        self.max_body_bytes = max_body_bytes
        self.snapshots = snapshots
        self.snapshot_store = Path(snapshot_store) if snapshot_store is not None else None
        self.verify = verify
        self.worker_key = worker_key  # see _types.py "Worker key"; sent to slots at assignment
        self.counts: Counter[str] = Counter()  # "started.PATH", "fallback.PATH", "failed"
        self._replicas: set[Replica] = set()

    @classmethod
    def from_config(
        cls,
        config: PlatformConfig,
        *,
        worker_key: str | None = None,
        slot_image: str | os.PathLike[str] | None = None,
    ) -> PathStarter:
        """The node's starter for ``platform.toml``: a pool sized by its ``[pool]`` table."""
        kinds = {m.source_kind for m in config.models.values()}
        sizes = {
            "cpu": config.pool.cpu if "bundle" in kinds else 0,
            "cuda": config.pool.cuda,
            # image models get container slots, as many as plain CPU slots
            "container": config.pool.cpu if "image" in kinds else 0,
        }
        pool = WarmPool(sizes, slot_image=slot_image) if any(sizes.values()) else None
        return cls(pool, worker_key=worker_key, max_body_bytes=config.gateway.max_body_bytes)

    async def open(self) -> None:
        """Start filling the warm pool (the gateway calls this once it listens)."""
        if self.pool is not None:
            await self.pool.start()

    def status(self) -> dict[str, Any]:
        """Starts and fallbacks by path, and the pool's slots by state (for /status)."""
        return {
            "counts": dict(self.counts),
            "pool": self.pool.snapshot() if self.pool is not None else None,
        }

    async def start(self, model: ModelConfig) -> Replica:
        """A ready replica of ``model`` by the fastest path that works; StartError if none does."""
        t0 = time.perf_counter()
        fallbacks: list[Fallback] = []
        try:
            if model.source_kind == "image":
                image = await start_image(
                    model,
                    snapshots=self.snapshots,
                    store=self.snapshot_store,
                    worker_key=self.worker_key,
                    fallbacks=fallbacks,
                    t0=t0,
                    key_problem=_key_problem,
                    slot_start=lambda: self._container_slot(model, fallbacks, t0),
                )
                if image.start_path != "warm_slot":  # a container (a slot is the pool's)
                    self._replicas.add(image)
                self.counts[f"started.{image.start_path}"] += 1
                self.counts.update(f"fallback.{f.path}" for f in image.fallbacks)
                return image
            replica: Replica | None = await self._snapshot(model, fallbacks, t0)
            if replica is None:
                replica = await self._slot(model, fallbacks, t0)
            if replica is None:
                if model.source_kind != "bundle":
                    raise StartError(
                        model.name,
                        f"{model.source_kind} sources have no start path on this node yet; "
                        + "; ".join(f"{f.path}: {f.reason}" for f in fallbacks),
                        path="cold_boot",
                        hint="pull the image first (`zerostart pull REF DIR`) and name it "
                        "with image = DIR",
                    )
                cold = await self.cold.boot(model, tuple(fallbacks))
                cold.total_ms = (time.perf_counter() - t0) * 1e3  # fallbacks' time included
                replica = cold
        except StartError:
            self.counts["failed"] += 1
            raise
        self.counts[f"started.{replica.start_path}"] += 1
        return replica

    def _fall(
        self, fallbacks: list[Fallback], model: ModelConfig, path: StartPath, why: str
    ) -> None:
        fallbacks.append(Fallback(path, why))
        self.counts[f"fallback.{path}"] += 1
        log.debug("model=%s event=fallback path=%s reason=%s", model.name, path, why)

    # -- (a) snapshot -------------------------------------------------------------------
    async def _snapshot(
        self, model: ModelConfig, fallbacks: list[Fallback], t0: float
    ) -> Replica | None:
        if not self.snapshots:
            self._fall(fallbacks, model, "snapshot", "snapshots are off on this node")
            return None
        from zerostart.snapshot import default_store, read_manifest, snapshot_dir

        store = self.snapshot_store or default_store()
        folder = snapshot_dir(store, model.name)
        if not folder.is_dir():
            self._fall(fallbacks, model, "snapshot", f"no snapshot named {model.name!r} in {store}")
            return None
        if os.geteuid() != 0:
            self._fall(fallbacks, model, "snapshot", "restoring a snapshot needs root (CRIU)")
            return None
        try:
            manifest = read_manifest(folder)
        except ZerostartError as exc:
            self._fall(fallbacks, model, "snapshot", f"unreadable snapshot: {exc}")
            return None
        if model.source_kind == "bundle" and not _same_bundle(manifest.command, model.source):
            self._fall(
                fallbacks,
                model,
                "snapshot",
                f"snapshot {model.name!r} is of another command ({' '.join(manifest.command)[:120]})",
            )
            return None
        if manifest.port is None:
            self._fall(fallbacks, model, "snapshot", "snapshot has no port to reach it on")
            return None
        if _port_taken(manifest.port):
            self._fall(
                fallbacks,
                model,
                "snapshot",
                f"port {manifest.port} is taken (a process snapshot restores on its recorded "
                "port: one copy at a time)",
            )
            return None
        from zerostart.snapshot import restore

        work = asyncio.ensure_future(
            asyncio.to_thread(restore, model.name, store=store, fallback=False)
        )
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(_stop_restored)  # the thread cannot be interrupted
            raise
        except (ZerostartError, OSError) as exc:
            self._fall(fallbacks, model, "snapshot", f"restore failed: {exc}")
            return None
        from zerostart.snapshot.marker import start_ticks

        restore_ms = result.timings_s.get("total", 0.0) * 1e3
        replica = Replica(
            model.name,
            RestoredProcess(result.pid, start_ticks(result.pid)),
            int(manifest.port),
            "snapshot",
            {"restore": restore_ms},
            0.0,
            tuple(fallbacks),
        )
        self._replicas.add(replica)
        try:
            replica.connections, replica.phases_ms["health"] = await ready_check(
                model.name, "snapshot", replica.host, replica.port
            )
            if self.worker_key is not None:
                problem = await _key_problem(replica.host, replica.port, self.worker_key)
                if problem is not None:
                    await replica.stop(5.0)
                    self._replicas.discard(replica)
                    self._fall(fallbacks, model, "snapshot", problem)
                    return None
        except BaseException:
            replica.kill()
            self._replicas.discard(replica)
            raise
        replica.total_ms = (time.perf_counter() - t0) * 1e3
        return replica

    # -- (b) warm slot --------------------------------------------------------------------
    async def _slot(
        self, model: ModelConfig, fallbacks: list[Fallback], t0: float
    ) -> Replica | None:
        if self.pool is None:
            self._fall(fallbacks, model, "warm_slot", "no warm pool on this node")
            return None
        if model.source_kind != "bundle":
            self._fall(
                fallbacks, model, "warm_slot", "image models need a container slot (not built yet)"
            )
            return None
        slot = self.pool.take(model.device, refill_now=False)
        try:
            return await self._assign(slot, model, fallbacks, t0)
        finally:
            self.pool.refill(model.device)  # after the assignment: no competing boot meanwhile

    async def _container_slot(
        self, model: ModelConfig, fallbacks: list[Fallback], t0: float
    ) -> Replica | None:
        """(b) for an image model: a container slot, given the image's bundle read-only."""
        if self.pool is None:
            fallbacks.append(Fallback("warm_slot", "no warm pool on this node"))
            return None
        if model.device != "cpu":
            fallbacks.append(
                Fallback("warm_slot", "container slots are CPU only (no GPU ones yet)")
            )
            return None
        slot = self.pool.take("container", refill_now=False)
        try:
            return await self._assign(slot, model, fallbacks, t0, kind="container")
        finally:
            self.pool.refill("container")

    async def _assign(
        self,
        slot: Slot | None,
        model: ModelConfig,
        fallbacks: list[Fallback],
        t0: float,
        *,
        kind: str | None = None,
    ) -> Replica | None:
        assert self.pool is not None
        if slot is None:
            self._fall(fallbacks, model, "warm_slot", self.pool.why_empty(kind or model.device))
            return None
        try:
            server: dict[str, Any] = {"api_key": self.worker_key} if self.worker_key else {}
            if self.max_body_bytes is not None:
                server["max_body_bytes"] = self.max_body_bytes
            if isinstance(slot, ContainerSlot):
                assigned = await slot.assign_image(
                    image_path(model),
                    verify=self.verify,
                    server=server,
                    timeout_s=model.start_timeout_s,
                )
            else:
                assigned = await slot.assign(
                    model.source, verify=self.verify, server=server, timeout_s=model.start_timeout_s
                )
            phases = {k: v * 1e3 for k, v in assigned.phases_s.items()}
            replica = Replica(
                model.name,
                SlotProcess(slot),
                assigned.port,
                "warm_slot",
                {"slot_assign": max(0.0, assigned.round_trip_s * 1e3 - sum(phases.values()))},
                0.0,
                tuple(fallbacks),
            )
            replica.phases_ms.update(phases)
            self._replicas.add(replica)
            replica.connections, replica.phases_ms["health"] = await ready_check(
                model.name, "warm_slot", replica.host, replica.port
            )
        except SlotError as exc:
            await slot.kill()
            if exc.fault != "slot":  # the model or the node: a cold boot would fail alike
                raise StartError(
                    model.name, f"{exc.fault} fault: {exc}", path="warm_slot"
                ) from None
            self._fall(fallbacks, model, "warm_slot", f"slot {slot.name} failed: {exc.reason}")
            log.warning("model=%s slot=%s failed: %s", model.name, slot.name, exc)
            return None
        except BaseException:
            await slot.kill()
            raise
        replica.total_ms = (time.perf_counter() - t0) * 1e3
        return replica

    async def close(self) -> None:
        """Stop every replica this starter made that still runs, the cold boots' and the pool's."""
        alive = [r for r in self._replicas if r.is_alive()]
        await asyncio.gather(*(r.stop(5.0) for r in alive), return_exceptions=True)
        self._replicas.clear()
        await self.cold.close()
        if self.pool is not None:
            await self.pool.close()


def _same_bundle(command: tuple[str, ...], bundle: str) -> bool:
    want = os.path.realpath(bundle)
    return any(os.path.realpath(arg) == want for arg in command if not arg.startswith("-"))


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_restored(work: asyncio.Future[Any]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    result = work.result()
    stop = getattr(result, "stop", None)
    if stop is not None:
        stop()


async def _key_problem(host: str, port: int, key: str) -> str | None:
    """Why a restored worker cannot serve behind this gateway, or None.

    A snapshot freezes the worker with the API key it was started with. Behind a
    gateway that starts workers with its own key, the restored one must refuse a
    request without that key (else any local user could call it directly) and
    accept one with it.
    """
    pool = UpstreamPool(host, port, max_idle=0)
    try:
        bare = await pool.request(
            "GET", "/info", timeout_s=HEALTH_TIMEOUT_S, max_body_bytes=1 << 20
        )
        keyed = await pool.request(
            "GET",
            "/info",
            [("authorization", f"Bearer {key}")],
            timeout_s=HEALTH_TIMEOUT_S,
            max_body_bytes=1 << 20,
        )
    except UpstreamError as exc:
        return f"restored worker did not answer /info: {exc}"
    finally:
        pool.close()
    if bare.status != 401 or keyed.status != 200:
        return (
            "restored worker was snapshotted with another API key than this gateway's worker "
            f"key (/info answered {bare.status} without it, {keyed.status} with it); take the "
            "snapshot with API_KEY set to the gateway's worker key"
        )
    return None


def default_starter(
    config: PlatformConfig, *, worker_key: str | None = None, slot_image: str | None = None
) -> Starter:
    """The fastest start paths this build has: snapshot, warm slot, cold boot.

    ``worker_key``: the bearer token every worker is started with (env ``API_KEY``).
    ``slot_image``: the container slots' image, for image models (``zerostart.image.slot``).
    """
    return PathStarter.from_config(config, worker_key=worker_key, slot_image=slot_image)
