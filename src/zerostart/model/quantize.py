"""Reduced-precision weights for CPU bundles: int8 per output channel, or bf16; packed.

Build time (``zerostart convert --precision int8|bfloat16``). The packed layout
is the native micro-kernel's (``zerostart.bundle.layout`` and
kernels/cpu/zs_cpu_gemm.c): panels of 64 output columns, ``k`` in groups of
G (4 for int8, 2 for bf16), ``packed[p, k // G, j, n16, k % G] = W[k, 64 p +
16 j + n16]``, zero-padded.

* int8: symmetric per output column, ``scale[n] = max_k |W[k, n]| / 127``,
  ``q = round(W / scale)`` in [-127, 127] (never -128, so that the sign flip
  of a dot product cannot overflow); plus ``colsum[n] = sum_k q[k, n]``, which
  the kernel needs to take out the zero point of its unsigned, asymmetric
  activations (the u8 x s8 scheme of Intel's VNNI guide and oneDNN).
* bf16: float32 rounded to nearest even on the upper 16 bits (the rounding of
  ``vcvtneps2bf16``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zerostart.bundle.layout import tensor_dtypes, tensor_shapes
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.packing import (
    COLSUM_SUFFIX,
    GEMM_GROUP,
    GEMM_PANEL,
    SCALE_SUFFIX,
    padded,
)

INT8_MAX = 127


def _pack(w: np.ndarray, precision: str) -> np.ndarray:
    """[K, N] -> [Np/64, Kp/G, 4, 16, G], zero padding."""
    k, n = w.shape
    kp, n_pad = padded(k, n, precision)
    g = GEMM_GROUP[precision]
    full = np.zeros((kp, n_pad), w.dtype)
    full[:k, :n] = w
    blocks = full.reshape(kp // g, g, n_pad // GEMM_PANEL, GEMM_PANEL // 16, 16)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 4, 1))


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float [K, N] -> (packed int8, scale float32 [Np], colsum int32 [Np])."""
    w64 = np.asarray(w, np.float64)
    amax = np.abs(w64).max(axis=0)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0)
    q = np.clip(np.rint(w64 / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    n_pad = padded(w.shape[0], w.shape[1], "int8")[1]
    scale_p = np.ones(n_pad, np.float32)
    scale_p[: w.shape[1]] = scale
    colsum = np.zeros(n_pad, np.int32)
    colsum[: w.shape[1]] = q.astype(np.int32).sum(axis=0)
    return _pack(q, "int8"), scale_p, colsum


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    out[nan] = 0x7FC0
    return out


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize_bf16(w: np.ndarray) -> np.ndarray:
    """float [K, N] -> packed bf16 bits (uint16)."""
    return _pack(bf16_bits(np.asarray(w, np.float32)), "bfloat16")


def reduce_precision(full: Mapping[str, np.ndarray], manifest: Manifest) -> dict[str, np.ndarray]:
    """The engine layout's tensors (``full``: every tensor of ``tensor_shapes(manifest)``
    unpacked, [K, N] for the matrices) with the encoder's matrices (those the layout's
    ``tensor_dtypes`` gives as int8 / uint16: ``zerostart.bundle.packing``) packed
    in ``manifest.dtype`` (int8 with its scale and column sums, or bf16) and the rest in
    their layout dtype (float32; DeBERTa's index table int32), in file order."""
    dtypes = tensor_dtypes(manifest)
    out: dict[str, np.ndarray] = {}
    for name in tensor_shapes(manifest):
        if name.endswith((SCALE_SUFFIX, COLSUM_SUFFIX)):
            continue  # written with their matrix, just below it
        if dtypes[name] not in ("int8", "uint16"):  # not one of the packed matrices
            out[name] = np.ascontiguousarray(full[name], dtype=dtypes[name])
        elif manifest.dtype == "int8":
            q, scale, colsum = quantize_int8(full[name])
            out[name], out[name + SCALE_SUFFIX], out[name + COLSUM_SUFFIX] = q, scale, colsum
        else:
            out[name] = quantize_bf16(full[name])
    return {name: out[name] for name in tensor_shapes(manifest)}
