"""The warm-up leaf (zerostart/warmup.py): what the builder records and the node replays.

A real HTTP server on 127.0.0.1 (the standard library's) stands in for the
worker: these tests are of our probe, replay and trace reading, not of the
worker (tests/integration/test_image_build.py and test_image_snapshot.py replay
against the real one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from zerostart.errors import ImageError
from zerostart.warmup import (
    TRACE_NAME,
    WarmupRequest,
    answers_match,
    recorded_requests,
    replay,
    wait_healthy,
)


class _Worker(BaseHTTPRequestHandler):
    score = 0.75  # what /predict answers; a test changes it to play a drifted worker

    def _answer(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"status": "ok"})
        else:
            self._answer(404, {"error": "no such route"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/predict" and body.get("inputs"):
            self._answer(200, [{"label": "POSITIVE", "score": type(self).score}])
        else:
            self._answer(500, {"error": "boom"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def worker() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Worker.score = 0.75
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _trace(folder: Path, requests: list[dict[str, Any]]) -> Path:
    (folder / TRACE_NAME).write_text(json.dumps({"trace": {"requests": requests}}))
    return folder


PREDICT = {"method": "POST", "path": "/predict", "body": {"inputs": "good"}, "status": 200}


def test_recorded_requests_are_those_with_an_answer(tmp_path: Path) -> None:
    _trace(
        tmp_path,
        [
            {"method": "GET", "path": "/health", "status": 200},
            {**PREDICT, "answer": [{"label": "POSITIVE", "score": 0.75}]},
        ],
    )
    assert recorded_requests(tmp_path) == [
        (
            WarmupRequest("POST", "/predict", {"inputs": "good"}),
            [{"label": "POSITIVE", "score": 0.75}],
        )
    ]


def test_no_trace_is_none_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    assert recorded_requests(tmp_path) is None  # an image built elsewhere
    (tmp_path / TRACE_NAME).write_text("{not json")
    with pytest.raises(ImageError, match="unreadable trace"):
        recorded_requests(tmp_path)
    (tmp_path / TRACE_NAME).write_text(json.dumps({"files": []}))
    with pytest.raises(ImageError, match="unreadable trace"):
        recorded_requests(tmp_path)


def test_replay_passes_a_worker_that_answers_as_recorded(worker: int, tmp_path: Path) -> None:
    recorded = recorded_requests(
        _trace(tmp_path, [{**PREDICT, "answer": [{"label": "POSITIVE", "score": 0.75000001}]}])
    )
    assert recorded is not None
    assert replay(worker, recorded) == []
    assert replay(worker, [(WarmupRequest("GET", "/health"), None)]) == []  # status only


def test_replay_names_each_answer_that_drifted_or_failed(worker: int) -> None:
    _Worker.score = 0.5
    recorded = [
        (
            WarmupRequest("POST", "/predict", {"inputs": "good"}),
            [{"label": "POSITIVE", "score": 0.75}],
        ),
        (WarmupRequest("POST", "/predict", {"inputs": ""}), None),
        (WarmupRequest("GET", "/health"), {"status": "ok"}),
    ]
    failures = replay(worker, recorded)
    assert failures == [
        "POST /predict: HTTP 200 [{'label': 'POSITIVE', 'score': 0.5}]",
        "POST /predict: HTTP 500 {'error': 'boom'}",
    ]


def test_answers_match_within_the_tolerance_and_no_further() -> None:
    assert answers_match({"a": [1.0, 2.0]}, {"a": [1.0 + 1e-7, 2.0]})
    assert not answers_match({"a": [1.0, 2.0]}, {"a": [1.001, 2.0]})
    assert not answers_match({"a": 1}, {"a": 1, "b": 2})
    assert not answers_match(True, 1)  # JSON true is not the number 1
    assert not answers_match([1.0], [1.0, 2.0])


def test_wait_healthy_returns_once_healthy_and_refuses_a_dead_worker(worker: int) -> None:
    assert 0 <= wait_healthy(worker, None, timeout_s=5.0) < 5.0
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait(30)
    with pytest.raises(ImageError, match="exited with status 3 before it was healthy"):
        wait_healthy(worker + 1 if worker < 65535 else worker - 1, dead, timeout_s=5.0)
