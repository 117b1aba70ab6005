"""The one ``GET /health`` probe: start paths' readiness check and the gateway's liveness probe.

Every start path ends with :func:`ready_check` on a fresh :class:`UpstreamPool`;
its connection stays open in that pool, which the replica hands on to the
gateway (``Replica.connections``), so the first request reuses it: one TCP
connect on the cold path, not two (measured in docs/platform.md). The gateway's
liveness probe (:func:`probe`) asks the same route with its own deadline.

``GET /health`` needs no key (``_types.py``, "Worker key").
"""

from __future__ import annotations

import time

from zerostart.platform.errors import StartError
from zerostart.platform.upstream import UpstreamError, UpstreamPool

HEALTH_TIMEOUT_S = 5.0  # a ready worker answers in < 5 ms here; a loaded node in < 0.5 s
HEALTH_MAX_BODY_BYTES = 1 << 16


async def probe(pool: UpstreamPool, timeout_s: float) -> str | None:
    """``GET /health`` on ``pool``: None if it answered 200, else why not (one line)."""
    try:
        response = await pool.request(
            "GET", "/health", timeout_s=timeout_s, max_body_bytes=HEALTH_MAX_BODY_BYTES
        )
    except UpstreamError as exc:
        return f"health check failed: {exc}"
    if response.status != 200:
        return f"health check answered {response.status}: {response.body[:200]!r}"
    return None


async def ready_check(
    model: str, path: str, host: str, port: int, *, timeout_s: float = HEALTH_TIMEOUT_S
) -> tuple[UpstreamPool, float]:
    """A start path's readiness check: the pool (its connection kept open) and the check's ms.

    Raises :class:`StartError` (``path`` named) unless ``/health`` answers 200;
    the pool is closed then.
    """
    t0 = time.perf_counter()
    pool = UpstreamPool(host, port)
    why = await probe(pool, timeout_s)
    if why is not None:
        pool.close()
        raise StartError(model, why, path=path)
    return pool, (time.perf_counter() - t0) * 1e3
