"""The warm pool: model-agnostic slots per device kind, kept full in the background.

A slot has paid for the interpreter, the imports and (on a GPU node) the CUDA
context, and has passed its health check (:mod:`zerostart.serve.slot`). The
starter takes one with :meth:`WarmPool.take` (never waits: an empty pool means
"use the next start path") and the pool boots a replacement at once.

Theory of operation, per device kind with ``size > 0``, one refill task::

    while the pool is open:
        while ready + booting < size:  boot one slot (sequentially: a boot is CPU-bound)
            ready          -> append to the ready queue
            unhealthy      -> discard, count (``unhealthy``), back off
            failed to boot -> discard, count (``boot_failed``), back off
        sleep until take() or close() wakes us

Back-off doubles from ``BACKOFF_START_S`` to ``BACKOFF_MAX_S`` while slots keep
failing (a node whose every slot fails its health check should not burn its
CPUs booting more) and resets after a healthy slot. ``close`` stops every slot,
ready or booting, and removes the pool's private folder.

A slot can die or hang while it waits (killed, OOM, SIGSTOP). A watcher looks
at every ready slot every ``WATCH_INTERVAL_S`` (its process state, through
``liveness.py``): one that exited is dropped and counted (``died``), one that
stays stopped is killed and counted (``hung``), and either is replaced at
once, so the next start still finds a warm slot. (Before the watcher a
SIGKILLed slot stayed ``ready`` until a start took it, and that start fell
back to a cold boot: 1.46 s instead of ~80 ms.) ``take`` still skips a slot
that died since the last look.

:meth:`resize` changes a kind's size while the pool runs (``sizing.py`` does, on
the buffer LP's schedule): growing wakes (or starts) the refill task; shrinking
stops surplus ready slots at once, and a slot that finishes booting past the
new size is stopped too. Each kind keeps its last ``RECENT_BOOTS`` boot times
(:attr:`WarmPool.boot_s`): the LP's lead time for a new slot.

The folder (control sockets, slot logs, the canary) is created 0700 by
``tempfile.mkdtemp``; the sockets inside are 0600. The pool holds a ``flock``
on ``owner.lock`` in it for its life, and :meth:`start` first removes the
folders of pools that died without cleaning up (a SIGKILLed gateway): those
whose lock it can take (``_rundir.py``). Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.platform._rundir import make_run_dir, reap_dead_pools
from zerostart.platform.container_slot import ContainerSlot, ModelsMount
from zerostart.platform.errors import PlatformError
from zerostart.platform.liveness import (
    LivenessPolicy,
    observe_state,
    probe_due,
    probe_result,
    probe_sent,
    proc_state,
)
from zerostart.platform.slot import SLOT_BOOT_TIMEOUT_S, Slot, SlotError, SlotSpec, SlotUnhealthy

log = logging.getLogger("zerostart.platform.pool")

# Slot kinds: plain processes on CPU or a GPU, and CPU slots in their own runc container
# (for image models; container_slot.py).
DEVICE_KINDS = ("cpu", "cuda", "container")
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
COUNTERS = ("booted", "unhealthy", "boot_failed", "assigned", "died", "hung", "stopped")
WATCH_INTERVAL_S = 0.5  # how often ready slots' processes are looked at (a /proc read each)
RECENT_BOOTS = 32  # slot boot times kept per kind: enough for a median, recent enough to track load


class WarmPool:
    """Ready slots per device kind; see the module docstring.

    ``sizes``: slots to hold per kind (``{"cpu": 1, "cuda": 0, "container": 0}``;
    from the platform's ``[pool]`` table). ``canary``: an existing canary bundle
    to check slots with (default: written into the pool's folder by
    :meth:`start`). ``slot_image``: the container slots' image
    (``zerostart.image.slot``); without it there are none, and the reason says so.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        *,
        canary: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        boot_timeout_s: float = SLOT_BOOT_TIMEOUT_S,
        run_dir_parent: str | os.PathLike[str] | None = None,
        slot_image: str | os.PathLike[str] | None = None,
        liveness: LivenessPolicy | None = None,
    ) -> None:
        self.liveness = liveness or LivenessPolicy()
        for device, n in sizes.items():
            if device not in DEVICE_KINDS:
                raise PlatformError(f"pool: unknown device kind {device!r}; use {DEVICE_KINDS}")
            if n < 0:
                raise PlatformError(f"pool: size for {device} must be >= 0, got {n}")
        self.sizes = {d: int(sizes.get(d, 0)) for d in DEVICE_KINDS}
        self._canary = Path(canary) if canary is not None else None
        self._python = python
        self._env = env
        self._boot_timeout_s = boot_timeout_s
        self._parent = run_dir_parent
        self.run_dir: Path | None = None
        self._owner_fd: int | None = None  # flock held on run_dir/owner.lock while we live
        self.reaped: list[Path] = []  # dead pools' folders removed by start()
        self.counters: dict[str, Counter[str]] = {d: Counter() for d in DEVICE_KINDS}
        self.last_failure: dict[str, str] = {}
        self._ready: dict[str, deque[Slot]] = {d: deque() for d in DEVICE_KINDS}
        self._booting: dict[str, int] = dict.fromkeys(DEVICE_KINDS, 0)
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Condition | None = None
        self._serial = 0
        self._closed = False
        self._slot_image = Path(slot_image) if slot_image is not None else None
        self._models: ModelsMount | None = None
        self._containers_off = False
        self.boot_s: dict[str, deque[float]] = {d: deque(maxlen=RECENT_BOOTS) for d in DEVICE_KINDS}
        self._stopping: set[asyncio.Task[None]] = set()

    # -- life --------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the private folder and the canary, and start filling the pool."""
        if self.run_dir is not None:
            return
        self.reaped = await asyncio.to_thread(reap_dead_pools, self._parent)
        self.run_dir, self._owner_fd = make_run_dir(self._parent)
        os.chmod(self.run_dir, stat.S_IRWXU)  # mkdtemp makes it 0700 already; say so
        if self._canary is None:
            # numpy and the C compiler (cached): only when a pool starts, never in a slot
            from zerostart.model.canary import write_canary

            self._canary = await asyncio.to_thread(write_canary, self.run_dir / "canary")
        self._changed = asyncio.Condition()
        if self.sizes["container"] > 0:
            await self._open_containers()
        for device, size in self.sizes.items():
            if size > 0:
                self._start_refill(device)
        self._tasks.append(asyncio.create_task(self._watch(), name="pool-watch"))

    def _start_refill(self, device: str) -> None:
        self._wake[device] = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._refill(device), name=f"pool-refill-{device}"))

    async def close(self) -> None:
        """Stop every slot (ready and booting) and remove the pool's folder."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        slots = [s for q in self._ready.values() for s in q]
        for q in self._ready.values():
            q.clear()
        await asyncio.gather(*(s.stop() for s in slots), *self._stopping, return_exceptions=True)
        for s in slots:
            self.counters[s.device]["stopped"] += 1
        if self._models is not None:
            await asyncio.to_thread(self._models.close)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None

    # -- use ---------------------------------------------------------------------------
    def take(self, device: str = "cpu", *, refill_now: bool = True) -> Slot | None:
        """A ready slot of ``device``, now, or None; the pool boots a replacement.

        ``refill_now=False`` leaves the replacement to :meth:`refill`: a starter
        calls it once the slot serves, so the replacement's boot (a CPU-bound
        interpreter start) does not compete with the assignment it replaces.
        """
        queue = self._ready.get(device)
        slot = None
        while queue:
            candidate = queue.popleft()
            if candidate.is_alive():
                slot = candidate
                break
            self.counters[device]["died"] += 1
            self.last_failure[device] = f"slot {candidate.name} died while waiting"
            log.warning("pool: slot %s (pid %d) died while waiting", candidate.name, candidate.pid)
        if slot is not None:
            self.counters[device]["assigned"] += 1
        if refill_now or slot is None:
            self.refill(device)
        return slot

    def resize(self, device: str, size: int) -> int:
        """Hold ``size`` slots of ``device`` from now on; returns the size it had.

        Growing boots slots in the background; shrinking stops surplus ready slots now
        (the most recently booted first: the oldest have waited longest for work, and
        any of them serves alike). Container slots stay at 0 where they cannot run.
        """
        if device not in DEVICE_KINDS or size < 0:
            raise PlatformError(f"pool: cannot size {device!r} to {size}")
        old = self.sizes[device]
        if device == "container" and self._containers_off:
            return old
        self.sizes[device] = size
        if self._changed is None or self._closed:  # not started: start() reads sizes
            return old
        if size > old:
            if device in self._wake:
                self._wake[device].set()
            else:
                self._start_refill(device)
        self._trim(device)
        return old

    def _trim(self, device: str) -> None:
        queue = self._ready[device]
        while len(queue) > self.sizes[device]:
            slot = queue.pop()
            self.counters[device]["stopped"] += 1
            log.info(
                "pool: slot %s stopped (pool %s now %d)", slot.name, device, self.sizes[device]
            )
            task = asyncio.get_running_loop().create_task(slot.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def refill(self, device: str) -> None:
        """Wake ``device``'s refill task (it boots slots until the pool is full)."""
        if device in self._wake:
            self._wake[device].set()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per device kind: size, ready, booting, and the counters (for /status and /metrics)."""
        return {
            d: {
                "size": self.sizes[d],
                "ready": len(self._ready[d]),
                "booting": self._booting[d],
                **{c: self.counters[d][c] for c in COUNTERS},
            }
            for d in DEVICE_KINDS
        }

    def why_empty(self, device: str) -> str:
        """One line for a starter's fallback reason."""
        if self.sizes.get(device, 0) == 0 and device in self.last_failure:
            return f"no {device} slots: {self.last_failure[device]}"
        if self.sizes.get(device, 0) == 0:
            return f"no warm {device} slots held (pool size 0: [pool] {device}, or the LP)"
        c = self.counters[device]
        text = f"no ready {device} slot (booting {self._booting[device]})"
        if device in self.last_failure:
            bad = c["unhealthy"] + c["boot_failed"] + c["died"]
            text += f"; {bad} slot(s) discarded, last: {self.last_failure[device]}"
        return text

    async def wait_ready(
        self, device: str = "cpu", count: int | None = None, timeout_s: float = 60.0
    ) -> None:
        """Wait until ``count`` (default: the pool's size) slots of ``device`` are ready."""
        want = self.sizes[device] if count is None else count
        assert self._changed is not None, "start() first"

        async def until() -> None:
            assert self._changed is not None
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._ready[device]) >= want)

        try:
            await asyncio.wait_for(until(), timeout_s)
        except TimeoutError:
            raise PlatformError(
                f"pool: {want} {device} slot(s) not ready within {timeout_s:.0f} s "
                f"({self.why_empty(device)})"
            ) from None

    # -- container slots -------------------------------------------------------------------
    async def _open_containers(self) -> None:
        """The shared models folder; without it (or root, or a slot image) no container slot."""
        assert self.run_dir is not None
        if os.geteuid() != 0:
            self._no_containers("container slots need root (runc, mounts)")
            return
        if self._slot_image is None or not (self._slot_image / "index.json").is_file():
            self._no_containers(
                f"no slot image ({self._slot_image}): zerostart.image.slot.build_slot_image "
                "makes one (`zerostart up` does when a model is an image)"
            )
            return
        try:
            models = ModelsMount(self.run_dir / "models")
            await asyncio.to_thread(models.open)
            self._models = models
        except (ZerostartError, OSError) as exc:
            self._no_containers(f"cannot prepare container slots: {exc}")

    def _no_containers(self, reason: str) -> None:
        log.warning("pool: %s", reason)
        self._containers_off = True
        self.last_failure["container"] = reason
        self.sizes["container"] = 0

    async def _spawn(self, spec: SlotSpec, name: str) -> Slot:
        if spec.device != "container":
            return await Slot.spawn(spec, name)
        assert self._slot_image is not None and self._models is not None
        return await ContainerSlot.spawn_container(
            name,
            image_dir=self._slot_image,
            run_dir=spec.run_dir,
            models=self._models,
            boot_timeout_s=spec.boot_timeout_s,
        )

    # -- the refill task -------------------------------------------------------------------
    async def _refill(self, device: str) -> None:
        assert self.run_dir is not None and self._canary is not None
        spec = SlotSpec(
            run_dir=self.run_dir,
            canary=self._canary,
            device=device,
            python=self._python,
            env=self._env,
            boot_timeout_s=self._boot_timeout_s,
        )
        backoff = 0.0
        while not self._closed:
            while len(self._ready[device]) + self._booting[device] < self.sizes[device]:
                if backoff:
                    await asyncio.sleep(backoff)
                self._serial += 1
                name = f"{device}-{self._serial}"
                self._booting[device] += 1
                try:
                    slot = await self._spawn(spec, name)
                except SlotUnhealthy as exc:
                    self._failed(device, "unhealthy", name, exc.reason)
                    backoff = min(BACKOFF_MAX_S, max(BACKOFF_START_S, 2 * backoff))
                    continue
                except (SlotError, OSError) as exc:  # OSError: cannot even spawn the interpreter
                    self._failed(device, "boot_failed", name, getattr(exc, "reason", str(exc)))
                    log.warning("pool: %s", exc)
                    backoff = min(BACKOFF_MAX_S, max(BACKOFF_START_S, 2 * backoff))
                    continue
                finally:
                    self._booting[device] -= 1
                backoff = 0.0
                self.counters[device]["booted"] += 1
                self.boot_s[device].append(slot.boot_s)
                self._ready[device].append(slot)
                log.info(
                    "pool: slot %s ready (pid %d) in %.0f ms: %s",
                    name,
                    slot.pid,
                    slot.boot_s * 1e3,
                    " ".join(f"{k}={v * 1e3:.1f}ms" for k, v in slot.boot_phases_s.items()),
                )
                self._trim(device)  # resized down while it booted
                await self._notify()
            self._wake[device].clear()
            await self._wake[device].wait()

    async def _watch(self) -> None:
        """Drop and replace ready slots that died or stay stopped (see the module docstring)."""
        while not self._closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """One look at every ready slot's process, and a ping to those due; the watcher
        calls it."""
        for device, queue in self._ready.items():
            for slot in list(queue):
                state = proc_state(slot.pid) if slot.is_alive() else None
                slot.health, verdict = observe_state(slot.health, state, now, self.liveness)
                if verdict == "dead":
                    self._discard(device, slot, "died", "exited while waiting")
                elif verdict == "hung":
                    self._discard(device, slot, "hung", f"stopped (state {state}) while waiting")
                elif slot.pings and probe_due(slot.health, now, self.liveness):
                    slot.health = probe_sent(slot.health)
                    self._background(self._ping(device, slot))

    async def _ping(self, device: str, slot: Slot) -> None:
        policy = self.liveness
        ok = await slot.ping(policy.probe_timeout_s)
        if slot not in self._ready[device]:
            return  # taken or discarded meanwhile
        slot.health, verdict = probe_result(slot.health, ok, time.monotonic(), policy)
        if verdict == "hung":
            self._discard(
                device, slot, "hung", f"no answer to {slot.health.failures} pings in a row"
            )

    def _discard(self, device: str, slot: Slot, counter: str, why: str) -> None:
        """Take a ready slot out, kill it, count it, boot its replacement."""
        self._ready[device].remove(slot)
        self._failed(device, counter, slot.name, f"{why} (pid {slot.pid})")
        self._background(slot.kill())
        self.refill(device)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._stopping.add(task)  # close() waits for these
        task.add_done_callback(self._stopping.discard)

    def _failed(self, device: str, counter: str, name: str, reason: str) -> None:
        self.counters[device][counter] += 1
        self.last_failure[device] = f"{name}: {reason}"
        log.warning("pool: slot %s discarded (%s): %s", name, counter, reason)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
