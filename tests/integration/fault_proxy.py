"""An HTTP proxy in front of a real registry that injects faults and limits bandwidth.

Used by the imagefs fault tests and by ``bench/lazy.py``. Every request is
forwarded to the upstream registry as is (keep-alive, HTTP/1.1); what comes
back can be changed while the proxy runs:

* ``down = True``: each new request is answered by closing the connection
  (the client sees the registry vanish mid-run);
* ``delay_s``: each request waits this long before it is forwarded (a slow
  or congested registry);
* ``corrupt = N``: the next N blob answers (``200``/``206`` on ``/blobs/``)
  have one byte flipped near the start of their body (bit rot, a tampering
  proxy);
* ``rate_bytes_per_s``: all answers together are paced to this rate by one
  token bucket, like a network link of that bandwidth shared by every
  connection (set at construction).

Counters (``requests``, ``bytes_sent``) and ``ranges`` (each range GET's blob and
``Range`` header, in arrival order) let a test see what crossed the "link".
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK_BYTES = 64 * 1024
# The flipped byte: past a gzip member's 10-byte header, in its first deflate block. A
# flip in the middle could land in the tar headers after a chunk, which no reader uses.
CORRUPT_AT = 16
UPSTREAM_TIMEOUT_S = 60.0
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class _Pacer:
    """A token bucket of ``rate`` bytes/s shared by every connection (a link, not a socket)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - n / self.rate
        if wait > 0:
            time.sleep(wait)


class FaultProxy:
    def __init__(self, upstream: str, *, rate_bytes_per_s: float | None = None) -> None:
        self.upstream = upstream
        self.down = False
        self.delay_s = 0.0
        self.corrupt = 0
        self.requests = 0
        self.bytes_sent = 0
        self.ranges: list[tuple[str, str]] = []  # (blob digest, Range header) of each range GET
        self._lock = threading.Lock()
        self._pacer = _Pacer(rate_bytes_per_s)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    if "/blobs/" in self.path and self.headers.get("Range"):
                        digest = self.path.rsplit("/", 1)[1]
                        proxy.ranges.append((digest, self.headers["Range"]))
                if proxy.down:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                conn = http.client.HTTPConnection(self.upstream_host, timeout=UPSTREAM_TIMEOUT_S)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_HEADERS:
                            self.send_header(k, v)
                    if resp.getheader("Content-Length") is None and self.command != "HEAD":
                        whole = resp.read()  # chunked upstream: frame it with a length
                        self.send_header("Content-Length", str(len(whole)))
                        self.end_headers()
                        self.wfile.write(whole)
                        return
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    flip = (
                        "/blobs/" in self.path
                        and resp.status in (200, 206)
                        and self.command == "GET"
                        and proxy._take_corrupt()
                    )
                    while block := resp.read(BLOCK_BYTES):  # streamed: the link is the limit
                        if flip:  # early in the body: the first deflate block of a chunk
                            at = min(len(block) - 1, CORRUPT_AT)
                            block = block[:at] + bytes([block[at] ^ 0xFF]) + block[at + 1 :]
                            flip = False
                        proxy._pacer.take(len(block))
                        self.wfile.write(block)
                        with proxy._lock:
                            proxy.bytes_sent += len(block)
                finally:
                    conn.close()

            upstream_host = upstream
            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take_corrupt(self) -> bool:
        with self._lock:
            if self.corrupt > 0:
                self.corrupt -= 1
                return True
            return False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def fault_proxy(upstream: str, *, rate_bytes_per_s: float | None = None) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, rate_bytes_per_s=rate_bytes_per_s).start()
    try:
        yield proxy
    finally:
        proxy.stop()
