"""Packed matrices of reduced-precision CPU bundles: names, shapes and dtypes.

``zerostart convert --precision int8|bfloat16`` stores the four matrices of every
layer (``QUANTIZED``) packed for the native kernels' micro-kernel
(kernels/cpu/zs_cpu_gemm.c): output columns in panels of 64, ``k`` in groups of
4 (int8) or 2 (bf16), shape ``[Np/64, Kp/G, 4, 16, G]``; int8 adds a float32
scale and an int32 column sum per output column (padded to ``Np``). Every
architecture whose layers have these four matrices (BERT, DistilBERT, XLM-R,
DeBERTa) shares this; ``zerostart.bundle.layout`` re-exports it.

Runtime module: standard library only.
"""

from __future__ import annotations

# The matrices stored packed in int8 / bf16 bundles, per layer.
QUANTIZED = ("attn.qkv", "attn.out", "ffn.up", "ffn.down")
GEMM_PANEL = 64  # output columns per panel of packed weights
GEMM_GROUP = {"int8": 4, "bfloat16": 2}  # k per 32-bit lane of vpdpbusd / vdpbf16ps
SCALE_SUFFIX = ".scale"  # int8: float32 [Np], dequantisation factor per output column
COLSUM_SUFFIX = ".colsum"  # int8: int32 [Np], sum over k of the int8 weights


def padded(k: int, n: int, precision: str) -> tuple[int, int]:
    """(K, N) rounded up to the packing's group and panel."""
    g = GEMM_GROUP[precision]
    return -(-k // g) * g, -(-n // GEMM_PANEL) * GEMM_PANEL


def packed_shape(k: int, n: int, precision: str) -> tuple[int, ...]:
    kp, n_pad = padded(k, n, precision)
    g = GEMM_GROUP[precision]
    return (n_pad // GEMM_PANEL, kp // g, GEMM_PANEL // 16, 16, g)


def add_matrix(
    shapes: dict[str, tuple[int, ...]], name: str, k: int, n: int, dtype: str, *, bias: bool = True
) -> None:
    """Add ``name + ".weight"`` ([k, n] float32, or packed with int8's scale and column
    sums when ``dtype`` is a reduced precision) and, with ``bias``, ``name + ".bias"``
    ([n]) to ``shapes``."""
    if dtype not in GEMM_GROUP:
        shapes[name + ".weight"] = (k, n)
    else:
        shapes[name + ".weight"] = packed_shape(k, n, dtype)
        if dtype == "int8":
            n_pad = padded(k, n, dtype)[1]
            shapes[name + ".weight" + SCALE_SUFFIX] = (n_pad,)
            shapes[name + ".weight" + COLSUM_SUFFIX] = (n_pad,)
    if bias:
        shapes[name + ".bias"] = (n,)


def mark_packed(
    dtypes: dict[str, str],
    num_layers: int,
    dtype: str,
    matrices: tuple[str, ...] = QUANTIZED,
) -> None:
    """Set the numpy dtype names of the packed tensors of ``num_layers`` layers in place
    (int8 weights and int32 column sums, or bf16 bits as uint16); float32 bundles: no-op.
    ``matrices``: the packed matrices' names within a layer (ModernBERT has its own)."""
    if dtype not in GEMM_GROUP:
        return
    packed = "int8" if dtype == "int8" else "uint16"  # bf16 bits
    for i in range(num_layers):
        for m in matrices:
            name = f"layer.{i}.{m}.weight"
            dtypes[name] = packed
            if dtype == "int8":
                dtypes[name + COLSUM_SUFFIX] = "int32"
