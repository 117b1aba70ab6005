"""The pool's side of a warm slot: spawn it, hear its health, assign it a model, stop it.

The slot's side, and the control protocol, are in :mod:`zerostart.serve.slot`.
A :class:`Slot` goes ``booting -> ready -> assigned`` (it is then a replica's
:class:`SlotProcess`, serving one model) or ``-> discarded`` (failed its health
check, died, or the pool closed). The process runs in its own session with
stdin from /dev/null and stdout/stderr appended to a log file in the pool's
private folder (a pipe nobody drains would block it); it exits by itself when
its control connection closes, so a pool that dies leaves no slot behind.

Standard library only (asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import ServeError
from zerostart.faults import FAULTS, Fault
from zerostart.platform.errors import PlatformError
from zerostart.platform.liveness import Health
from zerostart.serve.slot import MAX_MESSAGE_BYTES, decode, encode

log = logging.getLogger("zerostart.platform.slot")

SLOT_BOOT_TIMEOUT_S = (
    60.0  # interpreter + imports + health: ~0.2-0.6 s here; 100x margin on a loaded node
)
ASSIGN_TIMEOUT_S = (
    60.0  # a bundle map + tokenizer + first batch; big models on slow disks take seconds
)
STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0
SOCKET_POLL_S = 0.002  # the slot binds its socket a few ms after exec
LOG_TAIL_CHARS = 800


class SlotError(PlatformError):
    """A slot could not boot, failed its health check, or could not take a model.

    ``fault``: whose fault, as the slot classified it (``zerostart.faults``):
    ``"model"`` or ``"node"`` (a cold boot would fail alike: the start fails
    at once) or ``"slot"`` (this slot only: the start falls through to a cold
    boot). Failures seen on this side (timeouts, a slot that died) are ``"slot"``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        error_type: str = "",
        fault: Fault = "slot",
        hint: str | None = None,
    ) -> None:
        self.reason = reason or message
        self.error_type = error_type  # the slot's own exception class name, for messages only
        self.fault: Fault = fault
        super().__init__(message, hint=hint)


class SlotUnhealthy(SlotError):
    """The slot's health check failed; it must never be assigned."""


@dataclass(frozen=True)
class SlotSpec:
    """How to start slots of one device kind."""

    run_dir: Path  # private (0700) folder: control sockets and logs
    canary: Path  # canary bundle for the CPU health check
    device: str = "cpu"
    python: str = sys.executable
    env: dict[str, str] | None = None  # None: inherit ours
    boot_timeout_s: float = SLOT_BOOT_TIMEOUT_S


@dataclass(frozen=True)
class Assignment:
    """A slot took a model: where it listens and what each phase cost (seconds)."""

    port: int
    url: str
    phases_s: dict[str, float]  # from the slot: bundle_map, tokenizer, engine, listening
    round_trip_s: float  # assign sent -> serving received


@dataclass
class Slot:
    """One slot process and its control connection."""

    name: str
    device: str
    process: asyncio.subprocess.Process
    socket_path: Path
    log_path: Path
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    boot_phases_s: dict[str, float] = field(default_factory=dict)
    boot_s: float = 0.0  # spawn -> ready message, by our clock
    state: str = "booting"
    # liveness.py's record while the slot waits in the pool (process state, pings)
    health: Health = field(default_factory=lambda: Health(since=time.monotonic()))
    pings: bool = False  # the slot said it answers {"type": "ping"} (older slot images do not)
    # one request/reply exchange at a time on the control connection (ping, assign)
    exchange: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @classmethod
    async def spawn(cls, spec: SlotSpec, name: str) -> Slot:
        """Start a slot and wait for its health verdict; SlotUnhealthy / SlotError if it fails."""
        sock = spec.run_dir / f"{name}.sock"
        log_path = spec.run_dir / f"{name}.log"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        t0 = time.perf_counter()
        with open(os.devnull, "rb") as devnull, open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                spec.python,
                "-m",
                "zerostart.serve",
                "--slot",
                str(sock),
                "--canary",
                str(spec.canary),
                "--device",
                spec.device,
                stdin=devnull,
                stdout=out,
                stderr=out,
                env=spec.env,
                start_new_session=True,
            )
        slot = cls(name, spec.device, process, sock, log_path)
        await slot.handshake(spec.boot_timeout_s, t0)
        return slot

    async def handshake(self, timeout_s: float, t0: float) -> None:
        """Connect and wait for the health verdict; the slot is killed if it is not ready."""
        try:
            await asyncio.wait_for(self._hello(), timeout_s)
        except TimeoutError:
            await self.kill()
            raise SlotError(
                f"slot {self.name} did not report within {timeout_s:.0f} s: {self.log_tail()}",
                reason="boot timeout",
            ) from None
        except BaseException:
            await self.kill()
            raise
        self.boot_s = time.perf_counter() - t0

    async def _hello(self) -> None:
        while True:  # the file appears at bind(); connect() works from listen() on
            if self.process.returncode is not None:
                raise SlotError(
                    f"slot {self.name} exited with status {self.process.returncode} before "
                    f"listening on its socket: {self.log_tail()}",
                    reason=f"exited {self.process.returncode} at boot",
                )
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=MAX_MESSAGE_BYTES
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(SOCKET_POLL_S)
            except OSError as exc:
                raise SlotError(
                    f"slot {self.name}: cannot connect to {self.socket_path}: {exc}"
                ) from exc
        message = await self._read()
        if message["type"] == "unhealthy":
            reason = str(message.get("reason", "no reason given"))
            raise SlotUnhealthy(
                f"slot {self.name} failed its health check: {reason}", reason=reason
            )
        if message["type"] != "ready":
            raise SlotError(f"slot {self.name} sent {message['type']!r} instead of 'ready'")
        self.boot_phases_s = {k: float(v) for k, v in message.get("phases", {}).items()}
        self.pings = "ping" in (message.get("control") or ())
        self.state = "ready"

    async def ping(self, timeout_s: float) -> bool:
        """The slot's health probe: True if it answers a ping within ``timeout_s``.

        A waiting slot is one blocking loop reading its control socket: an answer
        means it still runs and reads. True without asking for a slot that does not
        answer pings (an older slot image) or is no longer waiting.
        """
        if not self.pings or self.state != "ready":
            return True
        async with self.exchange:
            if self.state != "ready" or self.writer is None:
                return True
            try:
                self.writer.write(encode({"type": "ping"}))
                await self.writer.drain()
                reply = await asyncio.wait_for(self._read(), timeout_s)
            except (TimeoutError, OSError, SlotError, ServeError):
                return False
            return bool(reply["type"] == "pong")

    async def _read(self) -> dict[str, Any]:
        assert self.reader is not None
        try:
            line = await self.reader.readline()
        except (ValueError, asyncio.LimitOverrunError) as exc:
            raise SlotError(f"slot {self.name} sent an oversized control message") from exc
        if not line:
            code = await self._exit_code(1.0)
            raise SlotError(
                f"slot {self.name} closed its control connection (exit status {code}): "
                f"{self.log_tail()}",
                reason=f"slot exited ({code})",
            )
        return decode(line)

    async def _reply(self) -> dict[str, Any]:
        """The next message that is not a late pong (from a ping that timed out)."""
        while (message := await self._read())["type"] == "pong":
            pass
        return message

    async def _exit_code(self, timeout_s: float) -> int | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        return None

    async def assign(
        self,
        bundle: str | os.PathLike[str],
        *,
        verify: str = "fast",
        server: dict[str, Any] | None = None,
        timeout_s: float = ASSIGN_TIMEOUT_S,
    ) -> Assignment:
        """Give the slot a model; returns once it listens. SlotError names the slot's complaint."""
        async with self.exchange:  # after a ping in flight, if any
            return await self._assign(bundle, verify, server, timeout_s)

    async def _assign(
        self,
        bundle: str | os.PathLike[str],
        verify: str,
        server: dict[str, Any] | None,
        timeout_s: float,
    ) -> Assignment:
        if self.state != "ready" or self.writer is None:
            raise SlotError(f"slot {self.name} is {self.state}, not ready")
        self.state = "assigning"
        t0 = time.perf_counter()
        message = {
            "type": "assign",
            "bundle": os.fspath(bundle),
            "verify": verify,
            "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        }
        try:
            self.writer.write(encode(message))
            await self.writer.drain()
            reply = await asyncio.wait_for(self._reply(), timeout_s)
        except TimeoutError:
            raise SlotError(
                f"slot {self.name} did not take the model within {timeout_s:.0f} s",
                reason="assign timeout",
            ) from None
        except OSError as exc:
            raise SlotError(f"slot {self.name}: control connection failed: {exc}") from exc
        finally:
            if self.state == "assigning":
                self.state = "failed"
        if reply["type"] == "error":
            fault = reply.get("fault")
            raise SlotError(
                str(reply.get("error", "unknown error")),
                reason="assignment failed",
                error_type=str(reply.get("error_type", "")),
                # a slot that classifies nothing (an older slot image): the slot's fault,
                # so the start falls through to a cold boot, which reports the model's own
                fault=fault if fault in FAULTS else "slot",
            )
        if reply["type"] != "serving":
            raise SlotError(f"slot {self.name} answered {reply['type']!r} to an assignment")
        self.state = "assigned"
        phases = {k: float(v) for k, v in reply.get("phases", {}).items()}
        return Assignment(int(reply["port"]), str(reply["url"]), phases, time.perf_counter() - t0)

    def is_alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask it to drain and exit, SIGKILL after ``timeout_s``.

        One request only (the stop message, or SIGTERM when the control channel
        is gone): a second one would tell the server to stop waiting for
        in-flight requests.
        """
        asked = False
        if self.process.returncode is None and self.writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(encode({"type": "stop"}))
                await self.writer.drain()
                asked = True
        if not asked and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        if await self._exit_code(timeout_s) is None:
            await self.kill()
        self._close()

    async def kill(self) -> None:
        """SIGKILL now (its whole session) and reap."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self._exit_code(KILL_WAIT_S)
        self._close()

    def _close(self) -> None:
        self.state = "stopped" if self.state == "assigned" else "discarded"
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:].strip() or "(empty log)"


class SlotProcess:
    """An assigned slot as a replica's :class:`~zerostart.platform._types.Process`."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    @property
    def pid(self) -> int:
        return self.slot.pid

    @property
    def returncode(self) -> int | None:
        return self.slot.process.returncode

    def is_alive(self) -> bool:
        return self.slot.is_alive()

    async def stop(self, timeout_s: float) -> None:
        await self.slot.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL now; asyncio's child watcher reaps it (no wait on the event loop here)."""
        if self.slot.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.slot.pid, signal.SIGKILL)
        self.slot._close()
