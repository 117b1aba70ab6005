"""Local child processes and ports: a free port, and a child stopped politely then firmly.

A leaf (standard library only), shared by the image builder's trace
(``image/trace.py``), the benchmarks (``benchmark.py``) and the platform, so
that none of them imports another for a helper.
"""

from __future__ import annotations

import signal
import socket
import subprocess

STOP_TIMEOUT_S = 10.0  # a worker's SIGTERM drain of in-flight requests takes well under this


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when asked (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait ``timeout_s`` for a clean exit, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return int(proc.returncode)
