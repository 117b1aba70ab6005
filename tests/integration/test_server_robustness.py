"""The real worker (``python -m zerostart.serve``) on a real bundle, attacked over loopback.

Each case sends something bad or unusual, checks the answer, then checks that
the same server still answers a good request correctly. Skips with a reason
until the pipeline and the bundle fixtures exist.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"
READY = re.compile(r"zerostart: ready on http://127\.0\.0\.1:(\d+) in (\d+) ms")
START_TIMEOUT_S = 60.0


def bundle_for(request: pytest.FixtureRequest, fixture: str) -> Path:
    """The bundle fixture's path (tests/conftest.py converts the real model once)."""
    return Path(request.getfixturevalue(fixture))


class Worker:
    """``python -m zerostart.serve BUNDLE --port 0 ...`` in a subprocess; stderr collected."""

    def __init__(self, bundle: Path, *args: str, entry: list[str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
        cmd = [
            sys.executable,
            *(entry or ["-m", "zerostart.serve"]),
            str(bundle),
            "--port",
            "0",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
        )
        self._lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        self.ready_ms = 0
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.proc.kill()
            raise RuntimeError(f"worker did not start:\n{self.stderr_text()}")

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self._lines.append(line)
            if m := READY.search(line):
                self.port, self.ready_ms = int(m.group(1)), int(m.group(2))
                self._ready.set()
        self._ready.set()

    def stderr_text(self) -> str:
        return "".join(self._lines)

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        ctype = resp.getheader("content-type", "")
        return resp.status, json.loads(payload) if ctype.startswith("application/json") else payload

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def serving(bundle: Path, *args: str) -> Iterator[Worker]:
    """A worker for a module-scoped fixture: yielded, then SIGTERMed; it must exit 0."""
    with Worker(bundle, *args) as w:
        yield w
        w.terminate()
        assert w.wait() == 0, w.stderr_text()


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed early: {bytes(buf)!r}")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    buf[:] = rest[n:]
    return int(lines[0].split()[1]), headers, rest[:n]


def raw_post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


@pytest.fixture(scope="module")
def worker(request: pytest.FixtureRequest) -> Any:
    bundle = bundle_for(request, "sst2_bundle")
    with Worker(bundle, "--header-timeout", "1", "--max-body-bytes", "65536") as w:
        yield w
        w.terminate()
        assert w.wait() == 0


GOOD = {"inputs": "a wonderful, heartfelt film"}


def assert_good(w: Worker) -> None:
    status, body = w.request("POST", "/predict", GOOD)
    assert status == 200, body
    assert isinstance(body, list) and body and {"label", "score"} <= set(body[0])
    assert abs(sum(row["score"] for row in body) - 1.0) < 1e-4  # softmax over all labels


def test_ready_line_health_info_metrics(worker: Worker) -> None:
    assert worker.ready_ms > 0
    assert worker.request("GET", "/health") == (200, {"status": "ready"})
    status, info = worker.request("GET", "/info")
    assert status == 200 and info["routes"] == ["decode", "predict", "tokenize"]
    assert info["start"]["mode"] == "boot"
    phases = info["start"]["phases"]
    for phase in (
        "interpreter",
        "imports",
        "bundle_map",
        "tokenizer",
        "engine",
        "warmup",
        "listening",
    ):
        assert phases[phase] >= 0, phase
    assert_good(worker)
    status, text = worker.request("GET", "/metrics")
    assert status == 200 and b'zerostart_requests_total{route="predict",status="200"}' in text
    assert b'zerostart_startup_phase_seconds{phase="warmup"}' in text


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b'{"inputs": ', 400, "not valid JSON"),
        (b'{"inputs": "caf\xe9"}', 400, "not valid UTF-8"),
        (b'{"inputs": 42}', 422, "`inputs` must be"),
        (b'{"inputs": "x", "truncate": "yes"}', 422, "`truncate` must be true or false"),
        (b'{"inputs": ""}', 400, "cannot be empty"),  # TEI: 400 "Empty"
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"inputs": "word " * 2000, "truncate": False}).encode(), 422, "tokens"),
        (json.dumps({"inputs": [["a"]] * 33}).encode(), 422, "batch size 33"),
    ],
)
def test_bad_input_then_good(worker: Worker, raw: bytes, status: int, needle: str) -> None:
    got, body = worker.request("POST", "/predict", raw=raw)
    assert got == status, body
    assert needle in body["error"]
    assert body["error_type"] == ("Empty" if status == 400 and "empty" in needle else "Validation")
    assert_good(worker)


def test_routes_the_model_does_not_serve_and_unknown_paths(worker: Worker) -> None:
    status, body = worker.request("POST", "/embed", {"inputs": "x"})
    assert (status, body["error_type"]) == (424, "Backend") and "/predict" in body["error"]
    assert worker.request("GET", "/nope")[0] == 404
    assert worker.request("GET", "/predict")[0] == 405
    assert_good(worker)


def test_truncate_true_accepts_a_long_text(worker: Worker) -> None:
    status, body = worker.request("POST", "/predict", {"inputs": "word " * 2000, "truncate": True})
    assert status == 200 and len(body) >= 2


def test_oversized_body_is_refused_without_reading_it(worker: Worker) -> None:
    with worker.connect() as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-length: 100000000\r\n\r\n")
        status, headers, _ = read_response(s, bytearray())
        assert status == 413 and headers["connection"] == "close"
    assert_good(worker)


def test_slow_client_is_closed_and_others_are_served(worker: Worker) -> None:
    with worker.connect() as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nhost: t\r\n")
        assert_good(worker)
        status, _, _ = read_response(slow, bytearray())  # header timeout is 1 s
        assert status == 408
    assert_good(worker)


def test_half_closed_client_gets_its_answer(worker: Worker) -> None:
    with worker.connect() as s:
        s.sendall(raw_post("/predict", json.dumps(GOOD).encode()))
        s.shutdown(socket.SHUT_WR)
        status, _, body = read_response(s, bytearray())
        assert status == 200 and json.loads(body)[0]["label"]


def test_client_disconnecting_mid_request(worker: Worker) -> None:
    batch = json.dumps({"inputs": [["some words to think about " * 20]] * 32}).encode()
    for _ in range(3):
        s = worker.connect()
        s.sendall(raw_post("/predict", batch))
        s.close()
    assert_good(worker)


def test_expect_continue_chunked_and_pipelined(worker: Worker) -> None:
    body = json.dumps(GOOD).encode()
    with worker.connect() as s:
        buf = bytearray()
        s.sendall(
            raw_post("/predict", b"", extra="expect: 100-continue\r\n").replace(
                b"content-length: 0", f"content-length: {len(body)}".encode()
            )
        )
        assert read_response(s, buf)[0] == 100
        s.sendall(body)
        assert read_response(s, buf)[0] == 200
        chunked = b"POST /predict HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        chunked += b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
            for i in range(0, len(body), 7)
        )
        s.sendall(chunked + b"0\r\n\r\n")
        assert read_response(s, buf)[0] == 200
        texts = ["good", "bad", "a masterpiece", "dull and boring"]
        singles = [worker.request("POST", "/predict", {"inputs": t})[1] for t in texts]
        s.sendall(b"".join(raw_post("/predict", json.dumps({"inputs": t}).encode()) for t in texts))
        piped = [json.loads(read_response(s, buf)[2]) for _ in texts]
        for one, two in zip(singles, piped, strict=True):
            assert (
                one[0]["label"] == two[0]["label"] and abs(one[0]["score"] - two[0]["score"]) < 1e-5
            )


def test_many_concurrent_connections_get_batched_correct_answers(worker: Worker) -> None:
    texts = [f"review number {i}: {'great' if i % 2 else 'terrible'} acting" for i in range(48)]
    alone = {t: worker.request("POST", "/predict", {"inputs": t})[1] for t in texts[:4]}
    results: dict[str, Any] = {}

    def client(t: str) -> None:
        status, body = worker.request("POST", "/predict", {"inputs": t})
        assert status == 200
        results[t] = body

    threads = [threading.Thread(target=client, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(texts)
    for t, body in alone.items():  # merged into batches, padded with others: same answer
        assert results[t][0]["label"] == body[0]["label"]
        assert abs(results[t][0]["score"] - body[0]["score"]) < 1e-4


def test_sigterm_finishes_the_in_flight_batch_and_exits_0(request: pytest.FixtureRequest) -> None:
    bundle = bundle_for(request, "sst2_bundle")
    batch = {"inputs": [[f"sentence {i} " + "with many more words in it " * 12] for i in range(32)]}
    with Worker(bundle) as w:
        got: dict[str, Any] = {}

        def slow_request() -> None:
            got["answer"] = w.request("POST", "/predict", batch)

        t = threading.Thread(target=slow_request)
        t.start()
        deadline = time.monotonic() + 10
        while b"zerostart_in_flight_requests 1" not in w.request("GET", "/metrics")[1]:
            assert time.monotonic() < deadline, "the batch never got in flight"
            time.sleep(0.005)
        w.terminate()  # while the batch is in the engine
        t.join(60)
        assert w.wait() == 0, w.stderr_text()
        status, body = got["answer"]
        assert status == 200 and len(body) == 32
        assert "shutting down: draining 1 connection(s)" in w.stderr_text()
        with pytest.raises(OSError):
            w.connect()


@pytest.mark.parametrize(
    ("fixture", "route", "body"),
    [
        ("embed_bundle", "/embed", {"inputs": ["a sentence", "another one"], "normalize": True}),
        ("ner_bundle", "/tokens", {"inputs": "My name is Sarah Jones and I live in Boston."}),
    ],
)
def test_other_tasks_serve_their_route(
    request: pytest.FixtureRequest, fixture: str, route: str, body: dict[str, Any]
) -> None:
    bundle = bundle_for(request, fixture)
    with Worker(bundle) as w:
        status, info = w.request("GET", "/info")
        assert route.strip("/") in info["routes"]
        status, answer = w.request("POST", route, body)
        assert status == 200, answer
        if route == "/embed":
            assert len(answer) == 2 and len(answer[0]) == info["hidden_size"]
            assert abs(sum(x * x for x in answer[0]) - 1.0) < 1e-4  # normalised
        else:
            assert isinstance(answer, list) and all(
                {"entity_group", "word"} <= set(e) for e in answer
            )
        status, err = w.request("POST", "/predict", {"inputs": "x"})
        assert status == 424 and route in err["error"]
        w.terminate()
        assert w.wait() == 0
