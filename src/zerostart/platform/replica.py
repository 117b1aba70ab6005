"""Cold boot: a replica is a fresh ``python -m zerostart.serve BUNDLE`` process.

The slowest start path and the one that always works for a bundle; the warm
pool and snapshot restores (``starter.py``, issue 10b) fall back to it.

Readiness without polling: the worker prints ``zerostart: ready on URL in N
ms`` on stderr once it listens and is warm (``serve/server.py``), with
``--port 0`` so it picks its own free port and no two starts race for one.
The starter reads that line from a pipe, then asks ``GET /health`` once
(``_probe.py``; that connection serves the first request). The
worker's own phase breakdown follows on the next log line and is parsed into
``phases_ms``. stderr keeps being drained (last lines kept for error
messages) so a chatty worker never blocks on a full pipe.

Processes are started in their own session (a terminal's Ctrl-C reaches the
gateway only, which then drains and stops its replicas in order) with
``PR_SET_PDEATHSIG`` = SIGKILL, so a gateway killed with SIGKILL leaves no
orphan worker behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from zerostart.platform._probe import ready_check
from zerostart.platform._types import Fallback, Replica, Starter
from zerostart.platform.errors import StartError
from zerostart.platform_toml import ModelConfig

log = logging.getLogger("zerostart.platform")

READY = re.compile(rb"zerostart: ready on http://([0-9.]+):(\d+) in (\d+) ms")
PHASES = re.compile(rb"start-up \((\w+)\): (.*)$")
PHASE = re.compile(r"(\w+)=([0-9.]+)ms")
STDERR_TAIL_LINES = 40  # kept per replica for error messages
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The worker calls its warm-up batch "warmup"; the platform's phase list says "first_batch".
PHASE_NAMES = {"warmup": "first_batch"}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class WorkerProcess:
    """A worker process we started (our child): the :class:`~zerostart.platform._types.Process`
    of a cold-booted replica. Reads its stderr for the ready line and its phases."""

    def __init__(self, model: str, proc: asyncio.subprocess.Process) -> None:
        self.model = model
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = proc.pid
        self.phases_ms: dict[str, float] = {}
        self._proc = proc
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.get_running_loop().create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an overlong line: skip it
                continue
            if not line:
                break
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
            if not self._ready.done() and (m := READY.search(line)):
                self._ready.set_result((m.group(1).decode(), int(m.group(2))))
            elif m := PHASES.search(line):
                for name, ms in PHASE.findall(m.group(2).decode("ascii", "replace")):
                    self.phases_ms[PHASE_NAMES.get(name, name)] = float(ms)
        if not self._ready.done():
            self._ready.set_exception(EOFError("stderr closed before the ready line"))

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the ready line (then ``host``/``port`` are set); raises on exit or timeout."""
        exited = asyncio.ensure_future(self._proc.wait())
        waiting: set[asyncio.Future[Any]] = {self._ready, exited}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
        if self._ready in done and not self._ready.exception():
            self.host, self.port = self._ready.result()
            return
        if not done:
            raise TimeoutError(f"not ready within {timeout_s:g} s")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), 1.0)  # the last lines
        raise ChildProcessError(f"worker exited with status {await self._proc.wait()}")

    def error_summary(self) -> str:
        """The worker's own complaint: its ``zerostart: error:`` line, else its last lines."""
        for line in reversed(self.stderr_tail):
            if "error:" in line:
                return line.split("error:", 1)[1].strip()
        return " | ".join(list(self.stderr_tail)[-3:]) or "no output"

    def is_alive(self) -> bool:
        return self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def stop(self, timeout_s: float) -> None:
        if self.is_alive():
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "model=%s pid=%d did not stop in %gs: SIGKILL", self.model, self.pid, timeout_s
                )
                self.kill()
                await self._proc.wait()
        await self._finish_pump()

    def kill(self) -> None:
        if self.is_alive():
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        # os.kill, not Popen.send_signal: the latter polls (waitpid) first and so reaps
        # behind asyncio's child watcher, which then reports a made-up exit status 255.
        # The pid cannot have been reused: only the watcher reaps it, and it sets
        # returncode (checked by is_alive) when it does.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def _finish_pump(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._pump, 1.0)

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.model} pid={self.pid} port={self.port}>"


def worker_command(
    bundle: str, *, python: str | None = None, max_body_bytes: int | None = None
) -> list[str]:
    """The cold boot's command line; ``max_body_bytes``: the gateway's, so that a worker
    never accepts a body its gateway would have refused (and vice versa)."""
    command = [
        python or sys.executable,
        "-m",
        "zerostart.serve",
        bundle,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    if max_body_bytes is not None:
        command += ["--max-body-bytes", str(max_body_bytes)]
    return command


class ColdBootStarter(Starter):
    """Starts every replica by cold boot: the :class:`~zerostart.platform._types.Starter` of
    ``[pool]``-less nodes, and PathStarter's last resort."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        python: str | None = None,
        worker_key: str | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self._max_body_bytes = max_body_bytes  # the gateway's [gateway] max_body_bytes
        if worker_key is not None:
            # TEI's convention: the worker then wants "Authorization: Bearer KEY" on every
            # route but /health, so another local user cannot bypass the gateway's auth
            # by calling a replica's loopback port directly.
            self._env["API_KEY"] = worker_key
        self._python = python
        self._replicas: set[Replica] = set()

    async def start(self, model: ModelConfig) -> Replica:
        return await self.boot(model)

    async def boot(self, model: ModelConfig, fallbacks: tuple[Fallback, ...] = ()) -> Replica:
        """Cold-boot ``model`` (a bundle); raises :class:`StartError` with the worker's complaint."""
        t0 = time.perf_counter()
        if model.source_kind != "bundle":
            raise StartError(
                model.name,
                f"cold boot serves bundle folders; {model.source_kind} sources need the "
                "container start path",
                path="cold_boot",
            )
        if not Path(model.source, "manifest.json").is_file():
            raise StartError(
                model.name,
                f"{model.source} is not a bundle (no manifest.json)",
                path="cold_boot",
                hint="point bundle = at a folder made by `zerostart convert`",
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                *worker_command(
                    model.source, python=self._python, max_body_bytes=self._max_body_bytes
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # prctl only; no locks taken in the child
            )
        except OSError as exc:
            raise StartError(
                model.name, f"cannot start the worker: {exc}", path="cold_boot"
            ) from exc
        worker = WorkerProcess(model.name, proc)
        replica = Replica(model.name, worker, 0, "cold_boot", worker.phases_ms, 0.0, fallbacks)
        self._replicas.add(replica)
        try:
            try:
                await worker.wait_ready(model.start_timeout_s)
            except (TimeoutError, ChildProcessError, EOFError) as exc:
                raise StartError(
                    model.name, f"{exc}: {worker.error_summary()}", path="cold_boot"
                ) from None
            replica.host, replica.port = worker.host, worker.port
            replica.connections, health_ms = await ready_check(
                model.name, "cold_boot", worker.host, worker.port
            )
            replica.phases_ms["health"] = health_ms
            replica.total_ms = (time.perf_counter() - t0) * 1e3
            return replica
        except BaseException:
            replica.kill()
            self._replicas.discard(replica)
            await worker._finish_pump()
            raise

    async def close(self) -> None:
        """Stop (SIGTERM, then SIGKILL) every replica this starter made that still runs."""
        alive = [r for r in self._replicas if r.is_alive()]
        await asyncio.gather(*(r.stop(timeout_s=5.0) for r in alive), return_exceptions=True)
        self._replicas.clear()

    def forget(self, replica: Replica) -> None:
        """The caller stopped ``replica``; stop tracking it."""
        self._replicas.discard(replica)
