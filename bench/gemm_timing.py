"""Timing our fp32 products against numpy's OpenBLAS, interleaved: shared by bench/gemm_cpu.py
and tools/cpu_tune.py.

OpenBLAS's thread count is set through its own entry point (``openblas_set_num_threads``
under numpy's symbol prefix), so one process can time 1 and 2 threads; every candidate
runs once per round, in the same order, and a candidate's time is the median over rounds
(the minimum is kept too: on a machine shared with other work it is the least disturbed).
"""

from __future__ import annotations

import copy
import ctypes
import glob
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.engine.cpu_gemm import matmul_f32
from zerostart.engine.cpu_tuning import GemmPlan, cpu_identity
from zerostart.engine.native import NativeKernels, addr
from zerostart.engine.parallel import Workers

# (model, K, N) of the four products of a layer: QKV, attention output, FFN up, FFN down.
LAYERS = {"minilm": (384, 1536), "bert-base": (768, 3072)}


def encoder_shapes(rows: tuple[int, ...] = (128, 4096)) -> list[tuple[str, int, int, int]]:
    """(model, M, K, N) for MiniLM and bert-base at each row count (b1 x 128, b32 x 128)."""
    out = []
    for model, (h, inter) in LAYERS.items():
        for m in rows:
            for k, n in ((h, 3 * h), (h, h), (h, inter), (inter, h)):
                out.append((model, m, k, n))
    return out


def set_openblas_threads(n: int) -> None:
    """numpy's OpenBLAS to ``n`` threads (scipy-openblas's prefixed entry point, else plain)."""
    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "libscipy_openblas*"))
    for path in libs or []:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)  # only takes effect in new processes


def with_plan(kernels: NativeKernels, plan: GemmPlan) -> NativeKernels:
    """A view of ``kernels`` that runs ``plan`` (the library stays loaded once)."""
    other = copy.copy(kernels)
    other.gemm_plan = plan
    return other


def plan_of(kernels: NativeKernels, **changes: Any) -> GemmPlan:
    return kernels.gemm_plan._replace(**changes)


class Problem:
    """Operands of one product, and its float64 reference for the correctness check."""

    def __init__(self, m: int, k: int, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.m, self.k, self.n = m, k, n
        self.x = rng.standard_normal((m, k)).astype(np.float32)
        self.w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        self.out = np.empty((m, n), np.float32)
        self.gflop = 2 * m * k * n / 1e9

    def ours(self, kernels: NativeKernels, workers: Workers) -> Callable[[], None]:
        a, w, c = addr(self.x), addr(self.w), addr(self.out)
        m, k, n = self.m, self.k, self.n
        return lambda: matmul_f32(kernels, workers, a, w, c, m, k, n)

    def openblas(self) -> Callable[[], object]:
        x, w, out = self.x, self.w, self.out
        return lambda: np.matmul(x, w, out=out)

    def relative_error(self) -> float:
        """max |out - exact| / (|x| |w|), after a call of the candidate to check."""
        x64, w64 = self.x.astype(np.float64), self.w.astype(np.float64)
        err = np.abs(self.out - x64 @ w64) / np.maximum(np.abs(x64) @ np.abs(w64), 1e-30)
        return float(err.max())


def interleave(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Each candidate once per round, same order; per candidate the median and min wall
    seconds, and the median of the calling thread's CPU seconds (``cpu_median_s``).

    The CPU time is what a one-thread product costs when other processes share the cores:
    it leaves out the time the thread waited for a core (but not the caches they took), so
    on this shared 2-core machine it separates plans that wall time cannot. It is only
    meaningful when the work runs on the calling thread (one thread).
    """
    for fn in fns.values():
        fn()  # warm: page in, allocate, start threads
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {
        n: {
            "median_s": statistics.median(wall[n]),
            "min_s": min(wall[n]),
            "cpu_median_s": statistics.median(cpu[n]),
        }
        for n in fns
    }


def machine_cpu() -> dict[str, Any]:
    """The CPU identity the tuning table keys on, for every result file."""
    c = cpu_identity()
    return {
        "vendor": c.vendor, "family": c.family, "model": c.model, "model_name": c.model_name,
        "l1d_bytes": c.l1d_bytes, "l2_bytes": c.l2_bytes, "l3_bytes": c.l3_bytes,
    }  # fmt: skip
