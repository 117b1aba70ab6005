"""A real gateway (``python -m zerostart.cli up platform.toml``) in a subprocess, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from zerostart.benchmark import request_json

SRC = Path(__file__).resolve().parents[2] / "src"
READY = re.compile(r"zerostart: gateway on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 30.0


class Gateway:
    """``zerostart up`` on a config text; ``stop()`` sends SIGTERM and waits."""

    def __init__(
        self, tmp: Path, toml: str, *, env: dict[str, str] | None = None, api_key: str = ""
    ) -> None:
        self.api_key = api_key  # sent to /status and /metrics
        self.config = tmp / "platform.toml"
        self.config.write_text(toml)
        full_env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", **(env or {})}
        cmd = [sys.executable, "-m", "zerostart.cli", "up", str(self.config), "--port", "0"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"gateway did not start:\n{self.stderr()}")

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if m := READY.search(line):
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def stderr(self) -> str:
        return "".join(self.lines)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> tuple[int, dict[str, str], Any]:
        return request_json(self.port, method, path, body, headers, timeout=timeout_s)

    def status(self) -> dict[str, Any]:
        code, _, body = self.request("GET", "/status", headers=self._auth())
        assert code == 200, body
        return body  # type: ignore[no-any-return]

    def metrics(self) -> str:
        code, _, body = self.request("GET", "/metrics", headers=self._auth())
        assert code == 200, body
        return str(body)

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def children(self) -> set[int]:
        """Pids whose parent is the gateway (its replicas)."""
        kids = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                if ppid == self.proc.pid:
                    kids.add(int(d.name))
        return kids

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text, 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()) or not want:
                total += float(value)
    return total
