"""fp32 products on the kernels' own GEMM (kernels/cpu/zs_gemm_f32.c), by address, no numpy.

Shared by the numpy reference engine (``engine.cpu``, through ``engine.cpu_gemm``)
and the worker's numpy-free engine (``engine.cpu_native``): ``matmul_f32`` runs
zs_gemm_f32 on the weights as stored, with the build's GEMM plan
(``zerostart.engine.cpu_tuning``): its tile and blocking, and how threads share
the product (column ranges below ``plan.col_split_rows`` rows, row ranges from
there on).

Runtime module: standard library only.
"""

from __future__ import annotations

from zerostart.engine.native import NativeKernels
from zerostart.engine.parallel import Workers
from zerostart.errors import EngineError

F32_TILES_PER_PART = 2  # rows split: at least two register tiles of rows per thread
ZS_GEMM_NOMEM, ZS_GEMM_BADTILE = 1, 2  # zs_gemm_f32's error returns


def matmul_f32(
    kernels: NativeKernels, workers: Workers, a: int, w: int, c: int, m: int, k: int, n: int
) -> None:
    """C = A W in float32 on our kernels: A [m, k], W [k, n], C [m, n] row-major, by address.

    The arrays must stay alive during the call. Raises MemoryError when the kernel cannot
    allocate its packing buffers (a few hundred KiB per thread).
    """
    plan = kernels.gemm_plan
    tile = kernels.gemm_f32_tiles.index(plan.tile)
    gemm, kc, mc, nc, pack = kernels.gemm_f32, plan.kc, plan.mc, plan.nc, int(plan.pack)

    def call(m0: int, m1: int, n0: int, n1: int) -> None:
        err = gemm(a, w, c, m0, m1, n0, n1, k, n, tile, kc, mc, nc, pack)
        if err == ZS_GEMM_NOMEM:
            raise MemoryError("zs_gemm_f32: out of memory for its packing buffers")
        if err:
            raise EngineError(f"zs_gemm_f32 refused tile {plan.tile} (code {err})")

    if workers.threads > 1 and m < plan.col_split_rows:
        nr = plan.nr
        workers.run(lambda i, j: call(0, m, i * nr, min(n, j * nr)), -(-n // nr))
    else:
        workers.run(lambda i, j: call(i, j, 0, n), m, min_part=F32_TILES_PER_PART * plan.mr)
