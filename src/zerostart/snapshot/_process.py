"""Starting a command so that CRIU can freeze it, and knowing when it is ready.

CRIU can only dump what it can recreate: a process whose stdio is our pipes or
our terminal drags us into the image (an "external" pipe or a tty). So the
command runs in its own session (``setsid``), stdin from /dev/null and
stdout/stderr to a log file opened for append. Restore reopens that file by
path, so it must stay where it was (it does: it lives in the snapshot folder).

Readiness is an HTTP 200 from a health URL. For a zerostart worker the URL is
derived from its ``--port``; for any other command the user passes ``--ready``.

Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.snapshot._errors import ReadinessError

READY_TIMEOUT_S = 180.0  # a PyTorch + transformers server boots in ~20 s on 2 cores
POLL_INTERVAL_S = 0.005
HTTP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REAP_WAIT_S = 5.0  # init reaps an orphaned zombie within ~1-2 s here
DEFAULT_HOST = "127.0.0.1"


def port_from_command(command: Sequence[str]) -> int | None:
    """The value of ``--port N`` / ``--port=N`` in a command line, if any."""
    for i, arg in enumerate(command):
        value = None
        if arg == "--port" and i + 1 < len(command):
            value = command[i + 1]
        elif arg.startswith("--port="):
            value = arg.split("=", 1)[1]
        if value is not None and value.isdigit():
            return int(value)
    return None


def default_ready_url(command: Sequence[str]) -> str | None:
    """http://127.0.0.1:PORT/health for a command with ``--port``; None otherwise."""
    port = port_from_command(command)
    return f"http://{DEFAULT_HOST}:{port}/health" if port is not None else None


def url_port(url: str) -> int | None:
    return urllib.parse.urlsplit(url).port


@dataclass(frozen=True)
class Warmup:
    """A request sent once the command is ready, so the frozen process has run real work."""

    path: str
    body: Any
    method: str = "POST"


def http_request(
    url: str, method: str = "GET", body: Any = None, timeout_s: float = HTTP_TIMEOUT_S
) -> tuple[int, bytes]:
    """One request on a fresh connection that the server is told to close.

    ``Connection: close`` matters: a kept-alive connection would still be
    established when CRIU freezes the process.
    """
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or DEFAULT_HOST, parts.port or 80, timeout=timeout_s
    )
    try:
        headers = {"Connection": "close"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, payload, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_detached(
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session with no tie to our stdio (see module doc)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as out:
        return subprocess.Popen(
            list(command),
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def _log_tail(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        return log_path.read_text(errors="replace")[-800:]
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but will never serve again
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def wait_ready(
    url: str,
    *,
    pid: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    log_path: Path | None = None,
) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited. Raises if ``pid`` dies first."""
    t0 = time.perf_counter()
    last = "no answer"
    while True:
        if pid is not None and not pid_alive(pid):
            raise ReadinessError(
                f"process {pid} exited before {url} answered: {_log_tail(log_path)}"
            )
        elapsed = time.perf_counter() - t0
        if elapsed > timeout_s:
            raise ReadinessError(
                f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last})"
            )
        try:
            status, _ = http_request(url, timeout_s=max(1.0, timeout_s - elapsed))
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or type(exc).__name__
            time.sleep(POLL_INTERVAL_S)
            continue
        if status == 200:
            return time.perf_counter() - t0
        last = f"HTTP {status}"
        time.sleep(POLL_INTERVAL_S)


def run_warmup(base_url: str, warmup: Warmup) -> None:
    status, data = http_request(
        urllib.parse.urljoin(base_url, warmup.path), warmup.method, warmup.body
    )
    if status != 200:
        raise ReadinessError(
            f"warm-up {warmup.method} {warmup.path} answered HTTP {status}: {data[:300]!r}"
        )


def wait_connections_closed(pid: int, timeout_s: float = 2.0) -> None:
    """Give the server a moment to close the sockets of our (Connection: close) requests.

    Best effort: whatever is still established is dumped with --tcp-established
    and closed on restore.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and established_sockets(pid):
        time.sleep(0.01)


def established_sockets(pid: int) -> int:
    """Number of ESTABLISHED TCP sockets the process holds (0 where /proc cannot tell)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "01" and cols[9] in inodes:  # 01: TCP_ESTABLISHED
                count += 1
    return count


def stop(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process (its whole session), SIGKILL after ``timeout_s``, then wait until
    its PID is free.

    A restored process is not our child (CRIU detached it to init), so its
    zombie is reaped by init; a restore of the same snapshot needs that PID
    back, hence the wait for /proc/PID to vanish, not merely for death.
    """
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, REAP_WAIT_S)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.01)
        if not pid_alive(pid):
            break
    deadline = time.monotonic() + REAP_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.01)
