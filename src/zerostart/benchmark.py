"""Measurement helpers shared by `zerostart bench` and the scripts in bench/.

Cold start is measured from the outside, the way a platform sees it: the
clock starts just before ``exec`` of the worker process and stops when the
first correct HTTP answer has been read. The worker's own phase breakdown
(``/info``) tells where that time went.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.procs import free_port, stop_process

POLL_INTERVAL_S = 0.002  # connect retry while the worker starts; bounds timing error to ~2 ms


class BenchError(ZerostartError):
    """A measured process failed to start or answered wrongly."""


def machine_description() -> dict[str, Any]:
    """What a reader needs to compare results across machines."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a dependency
        numpy_version = None
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "gpu": None,
        # Other work on the machine skews timings; say how busy it was.
        "load_average_1m_5m_15m": list(os.getloadavg()),
    }


def post_json(port: int, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode()
        conn.request("POST", path, payload, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    status, _, body = request_json(port, "GET", path, timeout=timeout)
    return status, body


def request_json(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], Any]:
    """One request to 127.0.0.1:``port`` with a JSON body (if any): status, headers
    (lower-case names) and the answer parsed as JSON, or as text when it is not JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed
    finally:
        conn.close()


def time_cold_start(
    cmd: Sequence[str],
    port: int,
    path: str,
    body: Any,
    check: Callable[[Any], bool],
    *,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    keep: bool = False,
) -> tuple[float, Any, subprocess.Popen[bytes]]:
    """Exec ``cmd`` and time until ``POST path`` answers 200 with a body ``check`` accepts.

    Returns (seconds, answer, process). The process is stopped unless ``keep``.
    """
    # stderr to a file, not a pipe: a chatty server must never block on a full pipe.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=log, env=env)
    answered = False
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise BenchError(
                    f"{cmd[0]} exited with {proc.returncode} before answering: {err[-800:]}"
                )
            if time.perf_counter() - t0 > timeout_s:
                raise BenchError(f"{' '.join(cmd)} did not answer within {timeout_s:.0f}s")
            try:
                status, answer = post_json(port, path, body)
            except (ConnectionError, OSError, http.client.HTTPException):
                time.sleep(POLL_INTERVAL_S)
                continue
            if status == 503:  # listening but not ready yet
                time.sleep(POLL_INTERVAL_S)
                continue
            elapsed = time.perf_counter() - t0
            if status != 200 or not check(answer):
                raise BenchError(f"wrong answer from {cmd[0]}: HTTP {status} {str(answer)[:300]}")
            answered = True
            return elapsed, answer, proc
    finally:
        log.close()
        if not (keep and answered):  # a failed start never leaves a process behind
            stop_process(proc)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def drop_page_cache() -> bool:
    """Drop the kernel's page cache (root only); False where it is not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def worker_command(bundle: str | os.PathLike[str], port: int) -> list[str]:
    return [sys.executable, "-m", "zerostart.serve", str(bundle), "--port", str(port)]


def sample_request(task: str) -> tuple[str, Any, Callable[[Any], bool]]:
    """A request every bundle of ``task`` answers, and a check that the answer is well-formed."""
    text = "My name is Clara Schmidt and I live at 12 Rue de Rivoli in Paris; I love this film."
    if task == "embeddings":
        return "/embed", {"inputs": text}, lambda a: isinstance(a, list) and len(a[0]) > 8
    if task == "token-classification":
        return "/tokens", {"inputs": text}, lambda a: isinstance(a, list)
    return "/predict", {"inputs": text}, lambda a: isinstance(a, list) and "label" in a[0]


def run_bench(
    bundle: str | os.PathLike[str],
    *,
    cold_runs: int = 5,
    warm_iters: int = 20,
    seq_len: int = 128,
    batch: int = 32,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """zerostart alone: cold starts, warm latency, throughput. Prints a table; returns the numbers."""
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle)
    task = pipe.manifest.task
    path, body, check = sample_request(task)
    cold: list[float] = []
    phases: list[dict[str, float]] = []
    for run in range(cold_runs):
        if progress:
            progress(f"cold start {run + 1}/{cold_runs}", run / max(cold_runs, 1))
        port = free_port()
        seconds, _, proc = time_cold_start(
            worker_command(bundle, port), port, path, body, check, keep=True
        )
        try:
            _, info = get_json(port, "/info")
            if isinstance(info, dict):
                phases.append(info.get("start", {}).get("phases", {}))
        finally:
            stop_process(proc)
        cold.append(seconds)
    word = "hello "
    text = (word * seq_len).strip()
    enc = pipe.tokenizer.encode(text, max_length=seq_len)
    results: dict[str, Any] = {
        "bundle": str(bundle),
        "task": task,
        "machine": machine_description(),
    }
    results["cold_start_s"] = summarize(cold)
    results["cold_start_phases_s"] = phases[len(phases) // 2] if phases else {}
    for name, n in (("latency_b1", 1), (f"throughput_b{batch}", batch)):
        if progress:
            progress(f"warm {name}", 0.9)
        encs = [enc] * n
        pipe.execute(encs)
        times = []
        for _ in range(warm_iters):
            t0 = time.perf_counter()
            pipe.execute(encs)
            times.append(time.perf_counter() - t0)
        results[name + "_s"] = summarize(times)
        results[name + "_seq_per_s"] = n / statistics.median(times)
    if progress:
        progress("done", 1.0)
    c = results["cold_start_s"]["median"]
    lat = results["latency_b1_s"]["median"]
    thr = results[f"throughput_b{batch}_seq_per_s"]
    print(f"cold start (exec -> first answer), median of {cold_runs}: {c * 1e3:.0f} ms")
    for k, v in results["cold_start_phases_s"].items():
        print(f"  {k:<14} {float(v) * 1e3:8.1f} ms")
    print(f"warm latency batch 1 x {len(enc.ids)} tokens: {lat * 1e3:.2f} ms")
    print(f"throughput batch {batch} x {len(enc.ids)} tokens: {thr:.1f} sequences/s")
    return results
