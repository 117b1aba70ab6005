"""Interim: fp32 products through the OpenBLAS that numpy's wheel ships, without numpy.

Kernel builds without their own fp32 product (today the portable and AVX2
builds; AVX-512 builds have ``zs_gemm_f32``) used to hand ``x @ W`` to numpy,
which costs the worker numpy's import (~100 ms of a cold start) for one BLAS
routine. This module calls that same routine, ``cblas_sgemm``, through ctypes:
same library, same threads, same results, and numpy is never imported. It
goes away when every kernel build computes its own products (docs/cpu.md).

The library is found where numpy's wheel puts it, without importing numpy: a
``numpy.libs`` folder on ``sys.path`` (site-packages). numpy 2 wheels keep it
there as ``libscipy_openblas64_-<hash>.so`` with ILP64 symbols named
``scipy_cblas_sgemm64_``; older wheels ``libopenblas64_p-*.so``
(``cblas_sgemm64_``). Only the library's own path is looked at (no
``importlib`` lookup of numpy's package), so an image whose builder traced the
``dlopen`` (zerostart.image.trace) carries everything this needs.

Runtime module: standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

ROW_MAJOR, NO_TRANS = 101, 111  # CBLAS enum values (cblas.h)
# (symbol, 64-bit integers): numpy 2's scipy-openblas, numpy 1's openblas64_, plain LP64.
SGEMM_SYMBOLS = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("cblas_sgemm", False))

Sgemm = Callable[[int, int, int, int, int, int], None]


def _library_paths() -> list[str]:
    found = []
    for entry in sys.path:
        libs = os.path.join(entry or ".", "numpy.libs")
        try:
            names = sorted(os.listdir(libs))
        except OSError:
            continue
        found += [os.path.join(libs, n) for n in names if "openblas" in n and ".so" in n]
    return found


def load_sgemm() -> Sgemm | None:
    """``sgemm(a, w, c, m, k, n)``: C[m, n] = A[m, k] W[k, n], row-major float32 addresses.

    None when no OpenBLAS is found (then the caller needs its own products).
    """
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, ilp64 in SGEMM_SYMBOLS:
            fn = getattr(lib, symbol, None)
            if fn is None:
                continue
            i = ctypes.c_int64 if ilp64 else ctypes.c_int
            e, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
            fn.restype = None
            fn.argtypes = [e, e, e, i, i, i, f, p, i, p, i, f, p, i]

            def sgemm(a: int, w: int, c: int, m: int, k: int, n: int, fn=fn) -> None:  # type: ignore[no-untyped-def]
                fn(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, a, k, w, n, 0.0, c, n)

            return sgemm
    return None
