"""Start paths for image models (an OCI layout from ``zerostart build``): runc, with snapshots.

A model named by ``image = "images/minilm"`` starts in its own runc container
(read-only root, user 65532, loopback: ``zerostart.container``):

(a) ``snapshot``: ``run_with_snapshot`` restores the container from the
    snapshot of this image, address and host (``zerostart run --snapshot``);
(b) ``warm_slot``: a container slot from the pool (``container_slot.py``),
    assigned the image's bundle mounted read-only;
(c) ``cold_boot``: when there is no usable snapshot, ``run_with_snapshot``
    boots the container and, on the model's *home port*, checkpoints it once
    warmed (``runc checkpoint --leave-running``), so the next start restores.
    Without root, runc or CRIU, a plain ``runc run`` (``Container``) boots it.

A container snapshot comes back on the port it was taken on, so each model has
a home port, ``HOME_PORT_BASE + crc32(name) % HOME_PORT_SPAN``, stable across
gateway runs; a second replica while the first holds it boots on a free port
without a snapshot. With a worker key, a booted container gets it as
``API_KEY``; a restored one must hold it (a snapshot freezes the key it was
taken with), else it is stopped, its snapshot removed, and the container
booted and snapshotted again with the current key.

Blocking runc/CRIU calls run in a thread; a start cancelled meanwhile stops the
container once the thread returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.platform._types import Fallback, Replica, StartPath
from zerostart.platform.errors import StartError
from zerostart.platform_toml import ModelConfig

log = logging.getLogger("zerostart.platform.image_start")

HOME_PORT_BASE = 20000
HOME_PORT_SPAN = 10000  # 20000-29999: below Linux's ephemeral range (32768-60999)
STOP_TIMEOUT_S = 10.0


def home_port(model: str) -> int:
    """The port an image model's snapshot is taken on (stable: crc32 of the name)."""
    return HOME_PORT_BASE + zlib.crc32(model.encode()) % HOME_PORT_SPAN


class ContainerProcess:
    """A model's container as a replica's :class:`~zerostart.platform._types.Process`
    (runc in the foreground is ``pid``)."""

    def __init__(self, container: Any) -> None:
        self.container = container  # zerostart.container.Container or SnapshotContainer

    @property
    def pid(self) -> int:
        proc = self.container._proc
        return int(proc.pid) if proc is not None else 0

    @property
    def returncode(self) -> int | None:
        proc = self.container._proc
        return None if proc is None else proc.poll()

    def is_alive(self) -> bool:
        proc = self.container._proc
        return proc is not None and proc.poll() is None

    async def stop(self, timeout_s: float) -> None:
        with contextlib.suppress(ZerostartError, OSError):
            await asyncio.to_thread(self.container.stop, timeout_s)

    def kill(self) -> None:
        """SIGKILL runc (it forwards it) without waiting; ``stop`` later deletes the container."""
        proc = self.container._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


def image_path(model: ModelConfig) -> str:
    folder, sep, tag = model.source.rpartition(":")
    if sep and "/" not in tag and os.path.isdir(folder):
        if tag not in ("", "latest"):
            raise StartError(
                model.name,
                f"image tag {tag!r}: runc start paths read the layout's only image",
                path="cold_boot",
                hint="give the OCI layout folder without a tag, one image per folder",
            )
        return folder
    return model.source


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _snapshot_run(
    image: str, port: int, store: Path | None, take: bool, env: dict[str, str]
) -> Any:
    from zerostart.container.snapshot_run import run_with_snapshot

    return run_with_snapshot(image, port=port, store=store, take_snapshot=take, extra_env=env)


def _plain_run(image: str, port: int, env: dict[str, str]) -> Any:
    from zerostart.container.runtime import Container

    container = Container(image, port=port, extra_env=env)
    seconds = container.start()
    return container, seconds


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking start in a thread; if we are cancelled, stop what it started."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_stop_result)
        raise


def _stop_result(work: asyncio.Future[Any]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    result = work.result()
    container = result[0] if isinstance(result, tuple) else getattr(result, "container", None)
    if container is not None:
        with contextlib.suppress(ZerostartError, OSError):
            container.stop()


_NAMES: dict[tuple[str, int, int, int], str] = {}  # (layout, index mtime, size, port) -> name


def _snapshot_exists(image: str, port: int, store: Path | None) -> tuple[bool, str]:
    """Whether a container snapshot of ``image`` on ``port`` for this host is in the store.

    The name (image digest, port, host fingerprint) is computed once per layout
    version and port: reading the layout verifies its digests, and the host
    fingerprint runs ``criu --version``; together ~90 ms here, on every start.
    """
    from zerostart.container import read_oci_layout
    from zerostart.container.snapshot_run import snapshot_name
    from zerostart.snapshot import criu_version, default_store, host_fingerprint, snapshot_dir

    try:
        st = Path(image, "index.json").stat()
        key = (os.path.realpath(image), st.st_mtime_ns, st.st_size, port)
        if key not in _NAMES:
            fingerprint = host_fingerprint(criu_version())
            _NAMES[key] = snapshot_name(read_oci_layout(image), "127.0.0.1", port, fingerprint)
    except (ZerostartError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if (snapshot_dir(store or default_store(), _NAMES[key]) / "manifest.json").is_file():
        return True, ""
    return False, "no snapshot of this image for this host and port yet"


SlotStart = Callable[[], Awaitable[Replica | None]]


async def start_image(
    model: ModelConfig,
    *,
    snapshots: bool,
    store: Path | None,
    worker_key: str | None,
    fallbacks: list[Fallback],
    t0: float,
    key_problem: Any,
    slot_start: SlotStart | None = None,
) -> Replica:
    """Start ``model`` (an image) by the fastest path that works; see the module docstring.

    ``slot_start``: the warm-slot path (a container slot from the pool); it
    returns None, having recorded why, when it cannot serve.
    """
    image = image_path(model)
    env = {"API_KEY": worker_key} if worker_key else {}
    port = home_port(model.name)
    home = _port_free(port)
    if not home:
        from zerostart.procs import free_port

        port = free_port()
    can_snapshot = snapshots and os.geteuid() == 0
    if not can_snapshot:
        why = "snapshots are off on this node" if not snapshots else "container snapshots need root"
        fallbacks.append(Fallback("snapshot", why))
    elif not home:
        fallbacks.append(Fallback("snapshot", f"home port {home_port(model.name)} is taken"))
    run = None
    if can_snapshot and home:
        found, why = await asyncio.to_thread(_snapshot_exists, image, port, store)
        if not found:
            fallbacks.append(Fallback("snapshot", why))
        else:
            try:  # restores; if the restore fails it boots and snapshots again, saying why
                run = await _in_thread(_snapshot_run, image, port, store, True, env)
            except (ZerostartError, OSError) as exc:  # SnapshotError, RuntimeToolError, ...
                fallbacks.append(Fallback("snapshot", f"{type(exc).__name__}: {exc}"))
    if run is not None and run.mode == "restored" and worker_key is not None:
        problem = await key_problem("127.0.0.1", port, worker_key)
        if problem is not None:
            await asyncio.to_thread(run.container.stop, STOP_TIMEOUT_S)
            from zerostart.snapshot import default_store, remove_snapshot

            remove_snapshot(store or default_store(), run.name)
            fallbacks.append(Fallback("snapshot", problem))
            run = None
    if run is None:
        if slot_start is not None:
            replica = await slot_start()
            if replica is not None:
                return replica
        else:
            fallbacks.append(Fallback("warm_slot", "no container slots on this node"))
        if can_snapshot and home:  # boot, and snapshot it for the next start
            try:
                run = await _in_thread(_snapshot_run, image, port, store, True, env)
            except (ZerostartError, OSError) as exc:
                raise StartError(
                    model.name, f"container did not start: {exc}", path="cold_boot"
                ) from exc
    if run is not None:
        if run.mode == "restored":
            path: StartPath = "snapshot"
        else:
            path = "cold_boot"
            if not any(f.path == "snapshot" for f in fallbacks):
                fallbacks.append(Fallback("snapshot", run.reason or "not restored"))
            if not any(f.path == "warm_slot" for f in fallbacks):
                fallbacks.append(Fallback("warm_slot", "the failed restore booted instead"))
            if run.snapshot_error:
                log.warning("model=%s no snapshot taken: %s", model.name, run.snapshot_error)
        phases = {k: v * 1e3 for k, v in run.timings_s.items() if k != "total"}
        container = run.container
    else:
        try:
            container, seconds = await _in_thread(_plain_run, image, port, env)
        except (ZerostartError, OSError) as exc:
            raise StartError(
                model.name, f"container did not start: {exc}", path="cold_boot"
            ) from exc
        path, phases = "cold_boot", {"boot_to_health": seconds * 1e3}
    return Replica(
        model.name,
        ContainerProcess(container),
        port,
        path,
        phases,
        (time.perf_counter() - t0) * 1e3,
        tuple(fallbacks),
    )
