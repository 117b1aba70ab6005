"""The GPU kernels ModernBERT needs beyond BERT's (``triton_kernels``), in Triton.

Build time only, like ``triton_kernels``: ``zerostart.kernels.aot`` compiles
them ahead of time and the worker never imports Triton. Same numerics: fp16
in memory, fp32 arithmetic inside a kernel, one rounding to fp16 on store.
The forward pass they serve is ``zerostart.bundle.modernbert_layout``'s (the
numpy reference is ``zerostart.engine.modernbert_ref``); its projections have
no bias, so they run on ``triton_kernels.gemm`` with a zero bias vector.

Kernels, and what they fuse:

* ``ln_nobias``: LayerNorm without a bias (ModernBERT's every norm), one
  program per row; with ``GATHER`` the row is ``x[ids[row]]``, which makes it
  the embedding too (word row gather + norm in one pass, no position table).
* ``rotary``: rotary position embedding (Su et al. 2021, RoFormer; GPT-NeoX's
  half-split ``rotate_half`` as in transformers' ``apply_rotary_pos_emb``) on
  the query and key blocks of the fused QKV output, in place. ``cos``/``sin``
  are float32 tables ``[positions, head_dim / 2]`` of one theta; the engine
  passes the global (160k) or the local (10k) table per layer. Tables, not
  in-kernel ``cos``: angles reach 8,192 rad, past the range of the GPU's
  approximate sine, and the tables then equal the reference's bit for bit.
* ``gemm_geglu``: the FFN's first product fused with GeGLU,
  ``C = act(A @ Wi[:, :N]) * (A @ Wi[:, N:2N])`` with two accumulators per
  tile, so the ``[M, 2N]`` product is never written.
* ``attention_band``: ``triton_kernels.attention`` with a band: query ``i``
  sees keys ``j < length`` with ``|i - j| <= window``. Key blocks wholly
  outside a query block's band are not visited (the loop runs over
  ``[m0 - window, m0 + BLOCK_M + window)`` only), so a local layer costs
  O(T x window), not O(T^2). Global layers pass ``window >= T``.
* ``mean_pool``: the masked mean over a sequence's real tokens (the
  classifier's ``classifier_pooling="mean"``).
"""

# mypy: disable-error-code="no-untyped-def,untyped-decorator"
# (Triton kernels are typed by their compile-time signature, not by Python annotations.)
from __future__ import annotations

import triton
import triton.language as tl

from zerostart.kernels.triton_kernels import _LOG2E, _activate

# A finite "minus infinity" for the running max: a query row may meet a key block
# with no key inside its band, and exp2(-inf - -inf) would be NaN.
_NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def ln_nobias(x_ptr, ids_ptr, w_ptr, y_ptr, H, eps, GATHER: tl.constexpr, BLOCK_H: tl.constexpr):
    """y[row] = LayerNorm(x[src]) * w, src = ids[row] if GATHER else row; rows of length H."""
    row = tl.program_id(0).to(tl.int64)
    if GATHER:  # noqa: SIM108 (a constexpr branch: compiled in or out)
        src = tl.load(ids_ptr + row).to(tl.int64)
    else:
        src = row
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(x_ptr + src * H + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / H
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * H + cols, (xc * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rotary(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    T,
    H,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Rotate q and k of ``qkv [B*T, 3H]`` in place: x * cos + rotate_half(x) * sin.

    Position of row ``b*T + t`` is ``t``; ``cos``/``sin`` are ``[>= T, HEAD_DIM/2]``
    float32. Grid: (cdiv(T, BLOCK_T), B * NUM_HEADS).
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NUM_HEADS
    h = bh % NUM_HEADS
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rd = tl.arange(0, HALF)
    mask = (rt < T)[:, None]
    table = rt[:, None].to(tl.int64) * HALF + rd[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    rows = ((b * T).to(tl.int64) + rt[:, None]) * (3 * H) + h * HEAD_DIM + rd[None, :]
    for part in tl.static_range(2):  # 0: the query block, 1: the key block
        p = qkv_ptr + rows + part * H
        x1 = tl.load(p, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(p, (x1 * cos - x2 * sin).to(qkv_ptr.dtype.element_ty), mask=mask)
        tl.store(p + HALF, (x2 * cos + x1 * sin).to(qkv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gemm_geglu(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    lda,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """C[M, N] = act(A @ B[:, :N]) * (A @ B[:, N:]); B [K, 2N] contiguous, C [M, N] contiguous.

    ``triton_kernels.gemm``'s tiling and grid, with the gate's tile accumulated
    beside the input's from the same A tile. ``EVEN_K`` as there.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * lda + rk[None, :]
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * (2 * N) + rn[None, :]
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0)
            bu = tl.load(b_ptrs, mask=mask_n[None, :], other=0.0)
            bg = tl.load(b_ptrs + N, mask=mask_n[None, :], other=0.0)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & (rk[None, :] < k_left), other=0.0)
            mask_b = (rk[:, None] < k_left) & mask_n[None, :]
            bu = tl.load(b_ptrs, mask=mask_b, other=0.0)
            bg = tl.load(b_ptrs + N, mask=mask_b, other=0.0)
        acc_u = tl.dot(a, bu, acc_u)
        acc_g = tl.dot(a, bg, acc_g)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * 2 * N
    out = _activate(acc_u, ACT) * acc_g
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(c_ptr + offs, out.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def attention_band(
    qkv_ptr,
    lens_ptr,
    out_ptr,
    T,
    H,
    window,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``triton_kernels.attention`` limited to keys ``j`` with ``|i - j| <= window``.

    Same arguments plus ``window`` (>= T for a global layer); grid
    (cdiv(T, BLOCK_M), B * NUM_HEADS). Query blocks wholly in the padding are
    written as zeros; a padding row that sees no real key gets zeros too.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NUM_HEADS
    h = bh % NUM_HEADS
    length = tl.load(lens_ptr + b)
    m0 = pid_m * BLOCK_M
    rm = m0 + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_DIM)
    row0 = (b * T).to(tl.int64)
    out_ptrs = out_ptr + (row0 + rm[:, None]) * H + h * HEAD_DIM + rd[None, :]
    mask_q = rm < T
    if m0 >= length:
        zero = tl.zeros((BLOCK_M, HEAD_DIM), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptrs, zero, mask=mask_q[:, None])
    else:
        stride = 3 * H
        q = tl.load(
            qkv_ptr + (row0 + rm[:, None]) * stride + h * HEAD_DIM + rd[None, :],
            mask=mask_q[:, None],
            other=0.0,
        )
        m_i = tl.full((BLOCK_M,), _NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        # The band of the whole query block, the first key block aligned to BLOCK_N.
        lo = (tl.maximum(m0 - window, 0) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(m0 + BLOCK_M + window, length)
        for start in range(lo, hi, BLOCK_N):
            rn = start + tl.arange(0, BLOCK_N)
            mask_k = rn < length
            kv_rows = (row0 + rn[:, None]) * stride + h * HEAD_DIM + rd[None, :]
            k = tl.load(qkv_ptr + kv_rows + H, mask=mask_k[:, None], other=0.0)
            v = tl.load(qkv_ptr + kv_rows + 2 * H, mask=mask_k[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * _LOG2E
            near = tl.abs(rm[:, None] - rn[None, :]) <= window
            s = tl.where(mask_k[None, :] & near, s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_q[:, None])


@triton.jit
def mean_pool(x_ptr, lens_ptr, y_ptr, T, H, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """y[b] = mean of x[b*T + t] over t < lens[b]; x [B*T, H], y [B, H]. Grid (B, cdiv(H, BLOCK_H))."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = cols < H
    length = tl.load(lens_ptr + b)
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for start in range(0, length, BLOCK_T):
        rt = start + tl.arange(0, BLOCK_T)
        rows = (b * T).to(tl.int64) + rt[:, None]
        mask = (rt < length)[:, None] & mask_h[None, :]
        x = tl.load(x_ptr + rows * H + cols[None, :], mask=mask, other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    y = acc / tl.maximum(length, 1).to(tl.float32)
    tl.store(y_ptr + b.to(tl.int64) * H + cols, y.to(y_ptr.dtype.element_ty), mask=mask_h)


KERNELS = {
    "ln_nobias": ln_nobias,
    "rotary": rotary,
    "gemm_geglu": gemm_geglu,
    "attention_band": attention_band,
    "mean_pool": mean_pool,
}
