"""The CPU engine's matrix products: fp32 (every build) and int8 / bf16 (opt-in bundles).

fp32: ``matmul_f32`` (``engine.gemm_f32``, numpy-free, re-exported here) runs zs_gemm_f32 (kernels/cpu/zs_gemm_f32.c) on the
weights as stored, with the build's GEMM plan (``zerostart.engine.cpu_tuning``):
its tile and blocking, and how threads share the product (column ranges below
``plan.col_split_rows`` rows, row ranges from there on).

int8 / bf16: x @ W with W packed.

The packed weights come from ``zerostart convert --precision int8|bfloat16``
(``zerostart.model.quantize``, layout in ``zerostart.bundle.layout``); the
products run in the native kernels (kernels/cpu/zs_cpu_gemm.c). Each thread
takes a range of rows and does both steps on it, with no barrier between:
quantise (int8: per row, dynamic, asymmetric) or round (bf16) its rows of x,
then multiply them by all of W.

Runtime module: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from zerostart.bundle.layout import COLSUM_SUFFIX, SCALE_SUFFIX, padded
from zerostart.engine.gemm_f32 import F32_TILES_PER_PART as F32_TILES_PER_PART
from zerostart.engine.gemm_f32 import ZS_GEMM_BADTILE as ZS_GEMM_BADTILE
from zerostart.engine.gemm_f32 import ZS_GEMM_NOMEM as ZS_GEMM_NOMEM
from zerostart.engine.gemm_f32 import matmul_f32 as matmul_f32  # fp32 lives there, numpy-free
from zerostart.engine.native import NativeKernels, addr
from zerostart.engine.parallel import Workers

ROWS_PER_PART = 16  # a thread's share of rows: the micro-kernel takes 4 at a time


class PackedMatrix(NamedTuple):
    """One packed [K, N] weight matrix; ``scale``/``colsum`` are int8's (None for bf16)."""

    precision: str
    packed: np.ndarray
    scale: np.ndarray | None
    colsum: np.ndarray | None
    k: int
    n: int

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, np.ndarray], name: str, precision: str, k: int, n: int
    ) -> PackedMatrix:
        if precision == "int8":
            return cls(
                precision, weights[name], weights[name + SCALE_SUFFIX],
                weights[name + COLSUM_SUFFIX], k, n,
            )  # fmt: skip
        return cls(precision, weights[name], None, None, k, n)

    def matmul(self, x: np.ndarray, kernels: NativeKernels, workers: Workers) -> np.ndarray:
        """x: float32 [M, K] C-contiguous -> float32 [M, N] (no bias)."""
        m = x.shape[0]
        kp, n_pad = padded(self.k, self.n, self.precision)
        out = np.empty((m, self.n), np.float32)
        if self.precision == "int8":
            assert self.scale is not None and self.colsum is not None
            a = np.empty((m, kp * kernels.int8_a_width), np.uint8)
            a_scale = np.empty(m, np.float32)
            a_zp = np.empty(m, np.int32)
            w, ws, cs = addr(self.packed), addr(self.scale), addr(self.colsum)

            def part_int8(i: int, j: int) -> None:
                kernels.quantize_u8(addr(x), addr(a), addr(a_scale), addr(a_zp), i, j, self.k, kp)
                kernels.gemm_u8s8(
                    addr(a),
                    addr(a_scale),
                    addr(a_zp),
                    w,
                    cs,
                    ws,
                    addr(out),
                    i,
                    j,
                    kp,
                    self.n,
                    n_pad,
                )

            workers.run(part_int8, m, min_part=ROWS_PER_PART)
        else:
            a16 = np.empty((m, kp), np.uint16)
            w = addr(self.packed)

            def part_bf16(i: int, j: int) -> None:
                kernels.to_bf16(addr(x), addr(a16), i, j, self.k, kp)
                kernels.gemm_bf16(addr(a16), w, addr(out), i, j, kp, self.n, n_pad)

            workers.run(part_bf16, m, min_part=ROWS_PER_PART)
        return out
