"""The GPU kernels of the BERT / DistilBERT forward pass, in Triton.

Build time only: ``zerostart.kernels.aot`` compiles these ahead of time into
cubins (one per GPU arch) and PTX; the worker loads the results through
libcuda and never imports Triton (see ``zerostart.engine.cuda``).

Numerics: fp16 weights and activations in memory, fp32 accumulation and fp32
math inside every kernel (LayerNorm statistics, softmax, GELU), one rounding
to fp16 on store. The weight layout is the bundle's engine layout
(``zerostart.bundle.layout``): linear weights ``[in, out]``, fused QKV
``[H, 3H]`` with the query block pre-scaled by ``1/sqrt(head_dim)``.

Kernels, and what they fuse:

* ``gemm``: ``C = act(A @ B + bias) (+ R)``. Bias, activation (GELU erf / tanh,
  ReLU, tanh for BERT's pooler) and the residual add are epilogues, so the
  fused QKV projection, the FFN up projection and both residual projections
  are one launch each. ``A`` has a row stride, so the pooler reads the [CLS]
  rows straight out of the hidden states (stride ``T*H``) with no gather.
* ``layer_norm``: one program per row, statistics in fp32.
* ``embed``: word + position (+ token type) gather and LayerNorm in one pass.
* ``attention``: flash-style (online softmax), one program per (query block,
  sequence x head); keys are visited only up to the sequence's length, and a
  query block that lies wholly in the padding is written as zeros without
  touching a key, so padding costs no attention work.

Elementwise maths avoids ``libdevice`` calls (tanh via exp) so the same source
runs under Triton's CPU interpreter in the unit tests.
"""

# mypy: disable-error-code="no-untyped-def,untyped-decorator"
# (Triton kernels are typed by their compile-time signature, not by Python annotations.)
from __future__ import annotations

import triton
import triton.language as tl

# Activation codes of the GEMM epilogue (ACT, a constexpr): see
# zerostart.bundle.launch.ACT_* (0 none, 1 GELU erf, 2 GELU tanh, 3 ReLU, 4 tanh).
_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact in the limits, no libdevice call.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _activate(x, ACT: tl.constexpr):
    if ACT == 1:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 2:
        x = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == 3:
        x = tl.maximum(x, 0.0)
    elif ACT == 4:
        x = _tanh(x)
    return x


@triton.jit
def gemm(
    a_ptr,
    b_ptr,
    bias_ptr,
    res_ptr,
    c_ptr,
    M,
    N,
    K,
    lda,
    ldc,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """C[M, N] = act(A[M, K] @ B[K, N] + bias[N]) (+ R[M, N]); B contiguous, R strided like C.

    ``EVEN_K``: the caller promises K % BLOCK_K == 0, so the K loop loads without a K mask
    (the launch rule only picks such a variant when that holds).
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row blocks share B tiles while they are in L2.
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
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * N + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=mask_n[None, :], other=0.0)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & (rk[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * N

    bias = tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    acc = _activate(acc + bias[None, :], ACT)
    mask = mask_m[:, None] & mask_n[None, :]
    offs = rm[:, None].to(tl.int64) * ldc + rn[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layer_norm(x_ptr, w_ptr, b_ptr, y_ptr, H, eps, BLOCK_H: tl.constexpr):
    """y[row] = LayerNorm(x[row]) * w + b over rows of length H (contiguous)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(x_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / H
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * H + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gemm_partial(
    a_ptr,
    b_ptr,
    w_ptr,
    M,
    N,
    K,
    lda,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Split-K: W[s] = A[:, Ks] @ B[Ks, :] in fp32 for the s-th of SPLIT_K slices of K.

    Grid (tiles, SPLIT_K). The caller promises K % (SPLIT_K * BLOCK_K) == 0. Few rows
    (batch 1) give a GEMM few tiles; splitting K multiplies the programs and shortens
    each one's loop. ``splitk_layer_norm`` sums the slices in its epilogue.
    """
    pid = tl.program_id(0)
    s = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    k_len = K // SPLIT_K
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = s * k_len + tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * lda + rk[None, :]
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * N + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, k_len // BLOCK_K):
        a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * N
    offs = (s * M).to(tl.int64) * N + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(w_ptr + offs, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def splitk_layer_norm(
    w_ptr,
    bias_ptr,
    res_ptr,
    g_ptr,
    b_ptr,
    y_ptr,
    M,
    H,
    eps,
    SPLIT_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """y[row] = LayerNorm(sum_s W[s, row] + bias + res[row]) * g + b: a split-K GEMM's epilogue.

    The residual GEMMs of a layer (attention output, FFN down) are each followed by a
    LayerNorm over the same rows, so the slices are summed here, with no launch of
    their own. One program per row.
    """
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(res_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    for s in tl.static_range(SPLIT_K):
        x += tl.load(w_ptr + (s * M + row) * H + cols, mask=mask, other=0.0)
    x = x.to(tl.float16).to(tl.float32)  # the unsplit GEMM rounds its output to fp16 here
    mean = tl.sum(x, axis=0) / H
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    g = tl.load(g_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * H + cols, (xc * rstd * g + b).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def embed(
    ids_ptr,
    types_ptr,
    word_ptr,
    pos_ptr,
    type_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    T,
    H,
    eps,
    HAS_TYPES: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """y[token] = LayerNorm(word[id] + position[t] (+ token_type[type])); one program per token.

    ``HAS_TYPES`` is 1 for BERT (the engine passes zeros when a request has no
    token type ids, which is what BERT does) and 0 for DistilBERT, whose bundle
    has no token type table (``types_ptr``/``type_ptr`` are then unused).
    """
    tok = tl.program_id(0)
    t = (tok % T).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    wid = tl.load(ids_ptr + tok).to(tl.int64)
    x = tl.load(word_ptr + wid * H + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(pos_ptr + t * H + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_TYPES:
        tid = tl.load(types_ptr + tok).to(tl.int64)
        x += tl.load(type_ptr + tid * H + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / H
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(y_ptr + tok.to(tl.int64) * H + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def attention(
    qkv_ptr,
    lens_ptr,
    out_ptr,
    T,
    H,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """ctx = softmax(q k^T) v per (sequence, head), keys limited to the sequence's length.

    ``qkv`` is the fused projection ``[B*T, 3H]`` with its bias already added
    and q pre-scaled; ``lens[b]`` is the number of real (right-aligned to the
    left, i.e. right-padded) tokens of sequence b; ``out`` is ``[B*T, H]``.
    Grid: (cdiv(T, BLOCK_M), B * NUM_HEADS).
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NUM_HEADS
    h = bh % NUM_HEADS
    length = tl.load(lens_ptr + b)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_DIM)
    row0 = (b * T).to(tl.int64)
    out_ptrs = out_ptr + (row0 + rm[:, None]) * H + h * HEAD_DIM + rd[None, :]
    mask_q = rm < T
    if pid_m * BLOCK_M >= length:
        # Every query row here is padding: no key is read, the output is zero.
        zero = tl.zeros((BLOCK_M, HEAD_DIM), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptrs, zero, mask=mask_q[:, None])
    else:
        stride = 3 * H
        q = tl.load(
            qkv_ptr + (row0 + rm[:, None]) * stride + h * HEAD_DIM + rd[None, :],
            mask=mask_q[:, None],
            other=0.0,
        )
        m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            rn = start + tl.arange(0, BLOCK_N)
            mask_k = rn < length
            kv_rows = (row0 + rn[:, None]) * stride + h * HEAD_DIM + rd[None, :]
            k = tl.load(qkv_ptr + kv_rows + H, mask=mask_k[:, None], other=0.0)
            v = tl.load(qkv_ptr + kv_rows + 2 * H, mask=mask_k[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * _LOG2E
            s = tl.where(mask_k[None, :], s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_q[:, None])


KERNELS = {
    "gemm": gemm,
    "layer_norm": layer_norm,
    "embed": embed,
    "attention": attention,
    "gemm_partial": gemm_partial,
    "splitk_layer_norm": splitk_layer_norm,
}
