"""Raw HTTP/1.1 for the hardening tests (helpers, no tests): every byte is the test's.

Official clients normalise what these tests must send as is: two Authorization
fields, trailers after a chunked body, no Host, ``/./embed``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

KEY_FIELD = "Authorization"


def request_bytes(
    method: str,
    target: str,
    body: Any = None,
    *,
    host: str | None = "t",
    fields: tuple[str, ...] = (),
    trailers: tuple[str, ...] | None = None,
    version: str = "1.1",
) -> bytes:
    """A request; ``trailers`` (even empty) sends the body chunked, with those trailer fields."""
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += fields
    if trailers is None:
        if data or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
    lines += ["Content-Type: application/json", "Transfer-Encoding: chunked"]
    chunk = (f"{len(data):x}\r\n".encode() + data + b"\r\n") if data else b""
    tail = "".join(f"{t}\r\n" for t in trailers).encode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + chunk + b"0\r\n" + tail + b"\r\n"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response off ``sock`` (our servers always send Content-Length)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head; got {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:n]


def connect(port: int, *, source: str | None = None, timeout_s: float = 60.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port, from ``source`` (another loopback address) if given."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0) if source else None
    )


def exchange(
    port: int, raw: bytes, *, source: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    with connect(port, source=source) as s:
        s.sendall(raw)
        return read_response(s)


def status_of(port: int, raw: bytes) -> int:
    return exchange(port, raw)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``/proc/PID/status`` VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
