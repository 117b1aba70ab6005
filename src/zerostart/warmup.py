"""Warm-up requests and the health probe of a worker on 127.0.0.1: a leaf.

The image builder's trace (``zerostart.image.trace``) sends warm-up requests
to a worker it runs and records the answers in the image's trace file
(:data:`TRACE_NAME`, next to ``index.json``). On the node, a container about
to be snapshotted (``zerostart.container.snapshot_run``) and
``zerostart run --check`` replay the recorded requests and compare the
answers, so a worker that answers differently from the one the build traced
is never frozen or trusted. Both sides take the request type, the probe, the
comparison and the trace file's name from here; this module imports only
``zerostart.errors``.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.errors import ImageError

TRACE_NAME = "zerostart-trace.json"  # in an OCI layout folder, beside index.json
REQUEST_TIMEOUT_S = 60.0  # one warm-up request, a first batch on a slow CPU included
HEALTH_REQUEST_TIMEOUT_S = 5.0  # one GET /health: the worker answers it without the engine
POLL_INTERVAL_S = 0.05
ANSWER_TOLERANCE = 1e-5  # relative, on each number of a JSON answer (same code, same CPU)


@dataclass(frozen=True)
class WarmupRequest:
    """One request of the warm-up. ``must_succeed``: a 200 is required, else < 500."""

    method: str
    path: str
    body: Any = None  # JSON value, or bytes sent as they are
    must_succeed: bool = False
    # Replayed answers are compared with the recorded one within a tolerance; an
    # answer that is opaque bytes (base64 float32) can differ in the last bit
    # between runs (thread count, batch shape), so it is only required to succeed.
    compare: bool = True


def send(
    port: int,
    req: WarmupRequest,
    timeout_s: float = REQUEST_TIMEOUT_S,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send one request to 127.0.0.1:port; return (status, JSON body or text).

    Raises ``OSError`` / ``http.client.HTTPException`` when nothing answers.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = dict(extra_headers or {})
        payload = None
        if req.body is not None:
            payload = req.body if isinstance(req.body, bytes) else json.dumps(req.body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(req.method, req.path, payload, headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


def wait_healthy(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> float:
    """Poll GET /health until 200; returns seconds waited.

    Raises :class:`ImageError` when ``proc`` exits first or ``timeout_s`` passes.
    """
    t0 = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise ImageError(
                f"the worker exited with status {proc.returncode} before it was healthy"
            )
        try:
            status, _ = send(port, WarmupRequest("GET", "/health"), HEALTH_REQUEST_TIMEOUT_S)
            if status == 200:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise ImageError(f"the worker did not become healthy within {timeout_s:.0f}s")
        time.sleep(POLL_INTERVAL_S)


def answers_match(a: Any, b: Any, tol: float = ANSWER_TOLERANCE) -> bool:
    """Equal JSON values, numbers within ``tol`` (same code, same CPU: differences are bugs)."""
    if isinstance(a, bool) or isinstance(b, bool):  # JSON true is not the number 1
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= tol * max(1.0, abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(answers_match(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(answers_match(a[k], b[k], tol) for k in a)
    return bool(a == b)


def recorded_requests(image_path: str | Path) -> list[tuple[WarmupRequest, Any]] | None:
    """The build's successful warm-up requests with their recorded answers.

    Read from the image's trace file (``image_path/`` :data:`TRACE_NAME`,
    written by ``zerostart build``: ``{"trace": {"requests": [{"method",
    "path", "body", "answer", ...}]}}``). None when the image has no trace file
    (built elsewhere); raises :class:`ImageError` when it cannot be read.
    """
    path = Path(image_path) / TRACE_NAME
    try:
        records = json.loads(path.read_text())["trace"]["requests"]
        return [
            (WarmupRequest(r["method"], r["path"], r.get("body")), r["answer"])
            for r in records
            if "answer" in r
        ]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"{path}: unreadable trace: {exc}") from exc


def replay(
    port: int,
    recorded: Sequence[tuple[WarmupRequest, Any]],
    extra_headers: dict[str, str] | None = None,
) -> list[str]:
    """Send each request; one line per answer that is not a 200 or not the recorded one.

    An expected answer of None checks only the status. The lines read
    ``"POST /predict: HTTP 500 {...}"`` (the answer cut to 200 characters).
    """
    failures = []
    for req, expected in recorded:
        status, answer = send(port, req, extra_headers=extra_headers)
        if status != 200 or (expected is not None and not answers_match(answer, expected)):
            failures.append(f"{req.method} {req.path}: HTTP {status} {str(answer)[:200]}")
    return failures
