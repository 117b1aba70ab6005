"""A fake pipeline and a raw HTTP client for the server's unit tests (helpers, no tests).

The fake implements the pipeline protocol (prepare / execute / finish) so the
tests exercise the server's own logic: HTTP handling, routing, batching,
limits and shutdown. Its "model" returns each sequence's length, so a test can
check that every request got its own answer back out of a merged batch.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from zerostart.errors import InputError
from zerostart.serve.config import ServerConfig
from zerostart.serve.server import Server


@dataclass
class FakeEncoding:
    ids: list[int]


@dataclass
class FakeJob:
    encodings: list[FakeEncoding]
    single: bool

    def finish(self, outputs: list[Any]) -> Any:
        rows = [{"label": "LEN", "score": float(o)} for o in outputs]
        return rows[0] if self.single else rows


@dataclass
class FakePipeline:
    routes: frozenset[str] = frozenset({"predict"})
    max_client_batch_size: int = 8
    delay_s: float = 0.0
    batches: list[int] = field(default_factory=list)  # sequences per execute call
    gate: threading.Event | None = None  # when set, execute waits for it
    fail_on: str | None = None  # a text that makes execute raise
    bug_on: str | None = None  # a text that makes prepare raise a non-zerostart error (a bug)

    def prepare(self, route: str, body: Any) -> FakeJob:
        if not isinstance(body, dict) or "inputs" not in body:
            raise InputError("missing field `inputs`")
        inputs = body["inputs"]
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if self.bug_on is not None and self.bug_on in texts:
            raise RuntimeError("a bug in the pipeline")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError("`inputs` must be a string or a list of strings")
        if not texts or not all(texts):
            raise InputError("`inputs` must not be empty")
        if len(texts) > self.max_client_batch_size:
            raise InputError(f"batch size {len(texts)} is over the limit", status=413)
        encs = [FakeEncoding(ids=[101, *range(len(t.split())), 102]) for t in texts]
        if self.fail_on in texts:
            encs[0].ids = []  # execute raises on this
        return FakeJob(encs, single)

    def execute(self, encodings: list[FakeEncoding]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(len(encodings))
        if any(not e.ids for e in encodings):
            raise ValueError("engine exploded")
        return [len(e.ids) for e in encodings]

    def info(self) -> dict[str, Any]:
        return {"model_id": "fake", "task": "sequence-classification"}


class Running:
    """A Server on a free loopback port, in a thread with its own event loop."""

    def __init__(self, pipeline: FakePipeline, config: ServerConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        if self.error:
            raise self.error

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.server = Server(self.pipeline, self.config)
            try:
                await self.server.start()
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                self._ready.set()
            await self.server.serve_until_shutdown()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test through .error
            self.error = exc

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def shutdown(self, timeout_s: float = 10) -> None:
        assert self.loop is not None and self.server is not None
        self.loop.call_soon_threadsafe(self.server.begin_shutdown)
        self.thread.join(timeout_s)


@contextmanager
def running(pipeline: FakePipeline | None = None, **config: Any) -> Iterator[Running]:
    srv = Running(pipeline or FakePipeline(), ServerConfig(port=0, **config))
    try:
        yield srv
    finally:
        srv.shutdown()


# -- a deliberately raw client: tests need control over every byte ------------
def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def post(path: str, body: bytes, *, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get(path: str, *, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: t\r\n{extra}\r\n".encode()


class Reader:
    """Reads HTTP/1.1 responses (content-length framed, as our server sends) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head; got {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self) -> bool:
        """True if the server closes (EOF or reset) with nothing more to read."""
        try:
            return not self.buf and not self._fill()
        except ConnectionResetError:
            return True


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as s:
        s.sendall(raw)
        return Reader(s).response()
