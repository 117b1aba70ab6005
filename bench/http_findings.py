"""Issue 17's HTTP-layer findings, measured on one source tree: run it on two trees to compare.

Starts a real worker (``python -m zerostart.serve`` with an API key) and a real
gateway (``zerostart up`` with keys) from ``--src``, on the bundles given, with
their default limits, and records what each finding's request gets:

* ``trailer_key_*``: a chunked POST whose head has a wrong key and whose trailer
  the right one (RFC 9110 section 6.5.1: never merged into the head; want 401);
* ``trailer_host_gateway``: head ``Host: a.x``, trailer ``Host: b.x`` and b's key;
* ``two_host`` / ``two_authorization`` / ``no_host_http11`` (want 400), ``host_upper``
  (``Host: A.x`` with a's key; want a's answer);
* ``endless_trailer_*``: N connections each sending a 16 MiB trailer field in
  64 KiB writes: statuses seen and the server's RSS before and after (MB);
* ``slow_body_*``: one byte of body every 0.5 s: seconds until 408 (None: not
  within ``--slow-seconds``);
* ``one_client_*``: ``--slow-connections`` connections from 127.0.0.1 sending half
  a head, then ``GET /health`` from 127.0.0.2: its status.

Usage: ``python bench/http_findings.py --src SRC --embed BUNDLE --sst2 BUNDLE
[--out FILE]``. Prints one JSON object. Linux only (/proc, 127.0.0.2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KEY, A_KEY, B_KEY = "worker-key", "key-a", "key-b"
READY = re.compile(rb"(?:ready on|gateway on) http://127\.0\.0\.1:(\d+)")


class Proc:
    def __init__(self, cmd: list[str], src: str, cwd: str) -> None:
        env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=cwd
        )
        self.port = 0
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if not self.port and (m := READY.search(line)):
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(120) or not self.port:
            self.stop()
            raise RuntimeError(f"{cmd} did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def raw(port: int, data: bytes, source: str | None = None, timeout: float = 60) -> int | None:
    src = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=src) as s:
        s.sendall(data)
        buf = b""
        try:
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
        except OSError:
            return None
        return int(buf.split()[1])


def req(
    target: str, host: str | None, *fields: str, trailers: tuple[str, ...] | None = None
) -> bytes:
    body = b'{"inputs": "hi"}'
    lines = [f"POST {target} HTTP/1.1"] + ([f"Host: {host}"] if host else []) + list(fields)
    if trailers is None:
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    lines.append("Transfer-Encoding: chunked")
    tail = "".join(t + "\r\n" for t in trailers)
    return (
        ("\r\n".join(lines) + "\r\n\r\n").encode()
        + b"%x\r\n%s\r\n0\r\n"
        % (
            len(body),
            body,
        )
        + tail.encode()
        + b"\r\n"
    )


def endless_trailer(server: Proc, target: str, key: str, connections: int) -> dict[str, Any]:
    before = server.rss_mb()
    statuses: list[int | None] = []
    for _ in range(connections):
        head = req(target, "a.x", f"Authorization: Bearer {key}", trailers=())[:-2] + b"X-E: "
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(head)
            status = None
            try:
                for _ in range(256):  # 16 MiB
                    if select.select([s], [], [], 0)[0]:
                        break
                    s.sendall(b"v" * 65536)
                s.settimeout(2)
                data = s.recv(65536)
                status = int(data.split()[1]) if data else None
            except OSError:
                pass
            statuses.append(status)
    time.sleep(0.5)
    return {"statuses": statuses, "rss_before_mb": before, "rss_after_mb": server.rss_mb()}


def slow_body(port: int, target: str, key: str, seconds: float) -> float | None:
    head = (
        f"POST {target} HTTP/1.1\r\nHost: a.x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if select.select([s], [], [], 0.5)[0]:
                data = s.recv(65536)
                return round(time.monotonic() - t0, 1) if data.split()[1:2] == [b"408"] else None
            with contextlib.suppress(OSError):
                s.sendall(b"x")
    return None


def one_client(port: int, n: int) -> dict[str, Any]:
    held = []
    try:
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"POST /embed HTTP/1.1\r\nHost: t\r\n")
                held.append(s)
            except OSError:
                break
        time.sleep(1.0)
        other = raw(port, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n", source="127.0.0.2")
        return {"opened": len(held), "other_client_health": other}
    finally:
        for s in held:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--embed", required=True)
    ap.add_argument("--sst2", required=True)
    ap.add_argument("--slow-seconds", type=float, default=40.0)
    ap.add_argument("--slow-connections", type=int, default=4100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    src = str(Path(args.src).resolve())
    out: dict[str, Any] = {"src": src}
    tmp = tempfile.mkdtemp(prefix="http-findings-")
    worker = Proc(
        [sys.executable, "-m", "zerostart.serve", args.embed, "--port", "0", "--api-key", KEY],
        src,
        tmp,
    )
    toml = Path(tmp) / "platform.toml"
    toml.write_text(
        '[gateway]\napi_key = "gw"\n[pool]\ncpu = 0\n'
        f'[models.a]\nbundle = "{args.embed}"\napi_key = "{A_KEY}"\nmin_replicas = 1\n'
        f'[models.b]\nbundle = "{args.sst2}"\napi_key = "{B_KEY}"\nmin_replicas = 1\n'
    )
    gateway = Proc(
        [sys.executable, "-m", "zerostart.cli", "up", str(toml), "--port", "0"], src, tmp
    )
    try:
        w, g = worker.port, gateway.port
        time.sleep(3)  # replicas of a and b start
        bad, good = "Authorization: Bearer wrong", f"Authorization: Bearer {KEY}"
        out["trailer_key_worker"] = raw(w, req("/embed", "t", bad, trailers=(good,)))
        out["trailer_key_gateway"] = raw(
            g, req("/embed", "a.x", bad, trailers=(f"Authorization: Bearer {A_KEY}",))
        )
        out["trailer_host_gateway"] = raw(
            g, req("/predict", "a.x", trailers=("Host: b.x", f"Authorization: Bearer {B_KEY}"))
        )
        a = f"Authorization: Bearer {A_KEY}"
        out["two_host"] = raw(g, req("/embed", "a.x", "Host: b.x", a))
        out["two_authorization"] = raw(g, req("/embed", "a.x", bad, a))
        out["no_host_http11"] = raw(w, req("/embed", None, good))
        out["host_upper"] = raw(g, req("/embed", "A.x", a))
        out["endless_trailer_worker"] = endless_trailer(worker, "/embed", KEY, 2)
        out["endless_trailer_gateway"] = endless_trailer(gateway, "/models/a/embed", A_KEY, 4)
        out["slow_body_worker_s"] = slow_body(w, "/embed", KEY, args.slow_seconds)
        out["slow_body_gateway_s"] = slow_body(g, "/models/a/embed", A_KEY, args.slow_seconds)
        out["one_client_gateway"] = one_client(g, args.slow_connections)
    finally:
        worker.stop()
        gateway.stop()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
