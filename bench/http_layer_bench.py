"""Pick the worker's HTTP/1.1 layer by measurement: h11, httptools, or hand-written.

What is measured, per candidate, on this machine:

* ``import_ms``: wall time of ``import <parser>`` in a fresh interpreter that has
  already imported ``asyncio`` and ``json`` (the server needs those anyway), so the
  number is the parser's *marginal* cold-start cost; median of 5 processes.
* ``closure_bytes``: bytes of the installed distribution (every file in its
  RECORD, i.e. what a runtime image must carry); 0 for the hand-written parser.
* ``requests_per_s``: a trivial keep-alive route (``GET /`` → 11-byte JSON) served
  by a one-process asyncio ``Protocol`` server built on the candidate, loaded by
  ``wrk`` (another process) when installed, else by the asyncio client below.
* ``server_cpu_us_per_request``: the server process's CPU time (user + system,
  /proc) during the load, per request served: the layer's own cost, much less
  sensitive than requests/s to other jobs on a shared machine.
* ``robustness``: a fixed list of hostile or unusual requests (oversized head,
  chunked bodies, smuggling-shaped framing, pipelining) and whether the server
  built on the candidate answers each the way RFC 9112 says.

The ``zerostart`` candidate is our own layer (``zerostart.serve.http``, the
worker's and the gateway's) answering the same bytes from a trivial handler,
imported from whatever source tree is on ``PYTHONPATH``: run it with the old
tree and the new one, interleaved, to measure a change to the layer.

Usage: ``python bench/http_layer_bench.py [--seconds 5] [--connections 16]
[--candidates zerostart]``; writes ``bench/results/http_layer.json``. The other
servers here are minimal on purpose: they isolate the parser, not our code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("h11", "httptools", "handwritten", "zerostart")
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20
OK_BODY = b'{"ok":true}'
IMPORT_RUNS = 5
RESULTS = Path(__file__).resolve().parent / "results" / "http_layer.json"


# ---------------------------------------------------------------- servers
def _response(status: int, body: bytes, *, close: bool = False) -> bytes:
    reason = {
        200: "OK",
        400: "Bad Request",
        413: "Payload Too Large",
        431: "Too Large",
        501: "Not Implemented",
    }
    head = f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


def _answer(method: bytes, body: bytes) -> bytes:
    if method == b"POST":
        return _response(200, b'{"n":%d}' % len(body))
    return _response(200, OK_BODY)


class H11Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import h11

        self.h11 = h11
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.method = b""
        self.body = bytearray()

    def data_received(self, data: bytes) -> None:
        h11 = self.h11
        self.conn.receive_data(data)
        while True:
            try:
                ev = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.transport.write(_response(exc.error_status_hint, b"{}", close=True))
                self.transport.close()
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self.method, self.body = ev.method, bytearray()
            elif isinstance(ev, h11.Data):
                self.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                # h11 writes its own responses: that cost is part of choosing h11.
                body = _answer(self.method, bytes(self.body)).split(b"\r\n\r\n", 1)[1]
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                out = self.conn.send(h11.Response(status_code=200, headers=headers))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
                self.conn.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                self.transport.close()
                return


class HttptoolsServer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.httptools = httptools
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.head_bytes = 0
        self.in_head = True
        self.body = bytearray()

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.in_head, self.head_bytes, self.body = True, 0, bytearray()

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.transport.write(_answer(self.parser.get_method(), bytes(self.body)))

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEADER_BYTES:
                self.transport.write(_response(431, b"{}", close=True))
                self.transport.close()
                return
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserError:
            self.transport.write(_response(400, b"{}", close=True))
            self.transport.close()


class HandwrittenServer(asyncio.Protocol):
    """Request line + headers + Content-Length bodies; chunked is refused (501)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()

    def _fail(self, status: int) -> None:
        self.transport.write(_response(status, b"{}", close=True))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER_BYTES:
                    self._fail(431)
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                return self._fail(400)
            length = 0
            seen_length = False
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or name != name.strip():
                    return self._fail(400)
                name = name.lower()
                value = value.strip()
                if name == b"transfer-encoding":
                    return self._fail(501)
                if name == b"content-length":
                    if not value.isdigit() or (seen_length and int(value) != length):
                        return self._fail(400)
                    length, seen_length = int(value), True
            if length > MAX_BODY_BYTES:
                return self._fail(413)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.transport.write(_answer(parts[0], body))


SERVERS = {"h11": H11Server, "httptools": HttptoolsServer, "handwritten": HandwrittenServer}


async def serve_zerostart(port: int) -> None:
    """The same answers from our own layer (``zerostart.serve.http``: the worker's and the
    gateway's), whichever source tree is on PYTHONPATH: compare a change before and after."""
    from zerostart.serve.config import ServerConfig
    from zerostart.serve.http import ListeningHost, Request, Response

    class Trivial(ListeningHost):
        def __init__(self) -> None:
            super().__init__()
            self.config = ServerConfig(
                port=port, max_body_bytes=MAX_BODY_BYTES, max_header_bytes=MAX_HEADER_BYTES
            )

        async def handle(self, request: Request) -> Response:  # type: ignore[override]
            if request.method == "POST":
                return Response(200, b'{"n":%d}' % len(request.body))
            return Response(200, OK_BODY)

    server = Trivial()
    await server._listen()
    print("ready", flush=True)
    await asyncio.Event().wait()


def serve(kind: str, port: int) -> None:
    if kind == "zerostart":
        asyncio.run(serve_zerostart(port))
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(SERVERS[kind], "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------- measuring
def import_ms(kind: str) -> float | None:
    if kind == "handwritten":
        return 0.0
    module = "zerostart.serve.http" if kind == "zerostart" else kind
    code = (
        f"import asyncio, json, time; t=time.perf_counter(); import {module}; "
        "print((time.perf_counter()-t)*1e3)"
    )
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
            ).stdout
        )
        for _ in range(IMPORT_RUNS)
    ]
    return round(statistics.median(runs), 2)


def closure_bytes(kind: str) -> int:
    if kind in ("handwritten", "zerostart"):
        return 0  # zerostart: httptools' own bytes are the httptools row
    dist = importlib.metadata.distribution(kind)
    return sum(os.path.getsize(p) for f in dist.files or () if os.path.isfile(p := str(f.locate())))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (/proc/PID/stat): less noisy than requests/s
    when other jobs share the cores."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_wrk(port: int, seconds: float, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out or ("Socket errors" in out and "timeout" in out):
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1))


async def _asyncio_load(port: int, seconds: float, connections: int) -> float:
    request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    expected = _response(200, OK_BODY)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            writer.write(request)
            got = await reader.readexactly(len(expected))
            if got != expected:
                raise RuntimeError(f"unexpected response {got!r}")
            done += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - start)


def requests_per_s(port: int, seconds: float, connections: int) -> tuple[float, str]:
    if shutil.which("wrk"):
        return load_wrk(port, seconds, connections), "wrk -t1"
    return asyncio.run(_asyncio_load(port, seconds, connections)), "asyncio client"


ROBUSTNESS: list[tuple[str, bytes, str]] = [
    # (name, raw request bytes, what a correct server does: a status prefix or "close")
    (
        "oversized head (64 KiB header)",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 65536 + b"\r\n\r\n",
        "4",
    ),
    (
        "chunked body",
        b"POST /e HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        '200{"n":11}',
    ),
    (
        "invalid chunk size",
        b"POST /e HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "4",
    ),
    (
        "content-length and chunked (smuggling)",
        b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "4",
    ),
    (
        "conflicting content-lengths",
        b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "4",
    ),
    ("negative content-length", b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", "4"),
    ("space before colon", b"GET / HTTP/1.1\r\nhost : x\r\n\r\n", "4"),
    ("three pipelined requests", b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * 3, "200x3"),
]


def _probe(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        # the server may close while we still send a huge head: that is a pass
        with contextlib.suppress(OSError):
            s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def robustness(port: int) -> dict[str, bool]:
    verdicts = {}
    for name, raw, want in ROBUSTNESS:
        got = _probe(port, raw)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3})", got)
        if want == "4":
            ok = len(statuses) == 1 and statuses[0].startswith(b"4")
        elif want == "200x3":
            ok = statuses == [b"200"] * 3
        else:
            ok = statuses == [b"200"] and got.endswith(b'{"n":11}')
        verdicts[name] = ok
    return verdicts


def machine() -> dict[str, Any]:
    from zerostart.benchmark import machine_description

    return {
        **machine_description(),
        "versions": {k: importlib.metadata.version(k) for k in ("h11", "httptools")},
        "note": "shared machine: other jobs ran concurrently, so req/s are indicative (compare ratios)",
    }


def main() -> None:
    from zerostart.procs import free_port

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--candidates", default=",".join(CANDIDATES), help="comma-separated subset to run"
    )
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    results: dict[str, Any] = {"machine": machine(), "candidates": {}}
    for kind in args.candidates.split(","):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            cpu0, t0 = cpu_s(proc.pid), time.perf_counter()
            rps, loader = requests_per_s(port, args.seconds, args.connections)
            served = rps * (time.perf_counter() - t0)
            cpu_us = (cpu_s(proc.pid) - cpu0) / served * 1e6
            row = {
                "import_ms": import_ms(kind),
                "closure_bytes": closure_bytes(kind),
                "requests_per_s": round(rps),
                "server_cpu_us_per_request": round(cpu_us, 1),
                "load_generator": f"{loader}, {args.connections} keep-alive connections, {args.seconds:g} s",
                "robustness": robustness(port),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        results["candidates"][kind] = row
        print(kind, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
