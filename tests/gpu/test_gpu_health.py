"""The GPU health check and a CUDA warm slot on a real GPU (skipped without one).

Not yet run: no GPU was lent to the session that wrote it. What it checks: the
hand-written PTX runs and gives the bit-exact known answer, the memory
patterns read back, NVML answers for this GPU, and a cuda slot boots healthy.
"""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from zerostart.engine.cuda.health import run_checks


def _gpu_reason() -> str | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "libcuda.so.1 not found (no NVIDIA driver on this machine)"
    if lib.cuInit(0) != 0:
        return "cuInit failed: no usable NVIDIA GPU"
    n = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        return "no CUDA device visible"
    return None


_REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def test_health_checks_pass_on_this_gpu() -> None:
    report = run_checks()
    assert set(report) == {"device", "kernel", "memory", "ecc"}
    assert report["kernel"]["ms"] < 1000 and report["memory"]["ms"] < 1000
    print(report)


def test_a_cuda_slot_boots_healthy() -> None:
    from zerostart.platform.pool import WarmPool

    async def main() -> None:
        pool = WarmPool({"cuda": 1})
        try:
            await pool.start()
            await pool.wait_ready("cuda", timeout_s=120)
            assert pool.snapshot()["cuda"]["unhealthy"] == 0
        finally:
            await pool.close()

    asyncio.run(main())
