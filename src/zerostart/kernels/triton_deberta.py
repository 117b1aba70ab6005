"""DeBERTa-v2/v3's disentangled attention in Triton (the rest of its layer is BERT's kernels).

Build time only, like ``triton_kernels``. The score of query ``i`` and key
``j`` (``zerostart.model.deberta`` gives the formula's source, and
``zerostart.engine.deberta.disentangled_attention`` is the numpy reference)::

    s[i, j] = q_i . k_j + q_i . posk[r(i, j)] + k_j . posq[r(i, j)]   (q, posq pre-scaled)

with ``r(i, j) = index[i - j + P - 1]``, the bundle's ``rel.index`` table of
log-bucketed relative positions (int32 ``[2P - 1]``). As in the CPU kernel
(kernels/cpu/zs_deberta.c), no ``[T, T, d]`` tensor is made: the two
content-to-position products are ``[T, W]`` per sequence and head, where
``W = hi - lo`` are the table rows the bucket's distances reach, and the
attention gathers from them by ``r``:

* ``rel_proj``: ``c2p[i, w] = q_i . posk[lo + w]`` and ``p2c[j, w] = k_j .
  posq[lo + w]`` for every (sequence, head), float32, one launch for both
  (grid axis 2 picks the product);
* ``attention_rel``: ``triton_kernels.attention``'s online softmax with the two
  gathered terms added to each score tile; keys stop at the sequence's length,
  query blocks wholly in the padding are written as zeros.
"""

# mypy: disable-error-code="no-untyped-def,untyped-decorator"
from __future__ import annotations

import triton
import triton.language as tl

from zerostart.kernels.triton_kernels import _LOG2E


@triton.jit
def rel_proj(
    qkv_ptr,
    posq_ptr,
    posk_ptr,
    c2p_ptr,
    p2c_ptr,
    T,
    H,
    W,
    lo,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """c2p / p2c ``[B*NUM_HEADS, T, W]`` float32 from ``qkv [B*T, 3H]`` and ``pos* [2S, H]``.

    Grid: (cdiv(T, BLOCK_M), cdiv(W, BLOCK_N), B * NUM_HEADS * 2); axis 2's low
    bit picks c2p (q against posk) or p2c (k against posq).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    z = tl.program_id(2)
    part = z % 2
    bh = z // 2
    b = bh // NUM_HEADS
    h = bh % NUM_HEADS
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, HEAD_DIM)
    mask_m = rm < T
    mask_n = rn < W
    cols = h * HEAD_DIM + rd[None, :]
    x = tl.load(
        qkv_ptr + ((b * T).to(tl.int64) + rm[:, None]) * (3 * H) + part * H + cols,
        mask=mask_m[:, None],
        other=0.0,
    )
    pos_rows = (lo + rn[:, None]).to(tl.int64) * H + cols
    if part == 0:
        pos = tl.load(posk_ptr + pos_rows, mask=mask_n[:, None], other=0.0)
    else:
        pos = tl.load(posq_ptr + pos_rows, mask=mask_n[:, None], other=0.0)
    acc = tl.dot(x, tl.trans(pos))
    offs = (bh * T).to(tl.int64) * W + rm[:, None].to(tl.int64) * W + rn[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if part == 0:
        tl.store(c2p_ptr + offs, acc, mask=mask)
    else:
        tl.store(p2c_ptr + offs, acc, mask=mask)


@triton.jit
def attention_rel(
    qkv_ptr,
    c2p_ptr,
    p2c_ptr,
    idx_ptr,
    lens_ptr,
    out_ptr,
    T,
    H,
    W,
    lo,
    P,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """ctx = softmax(q k^T + c2p[i, r - lo] + p2c[j, r - lo]) v, r = idx[i - j + P - 1].

    ``triton_kernels.attention``'s arguments plus the ``rel_proj`` outputs, the
    index table and its ``P``. Grid: (cdiv(T, BLOCK_M), B * NUM_HEADS).
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
        zero = tl.zeros((BLOCK_M, HEAD_DIM), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptrs, zero, mask=mask_q[:, None])
    else:
        stride = 3 * H
        q = tl.load(
            qkv_ptr + (row0 + rm[:, None]) * stride + h * HEAD_DIM + rd[None, :],
            mask=mask_q[:, None],
            other=0.0,
        )
        rel0 = (bh * T).to(tl.int64) * W
        m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            rn = start + tl.arange(0, BLOCK_N)
            mask_k = rn < length
            kv_rows = (row0 + rn[:, None]) * stride + h * HEAD_DIM + rd[None, :]
            k = tl.load(qkv_ptr + kv_rows + H, mask=mask_k[:, None], other=0.0)
            v = tl.load(qkv_ptr + kv_rows + 2 * H, mask=mask_k[:, None], other=0.0)
            both = mask_q[:, None] & mask_k[None, :]
            r = tl.load(idx_ptr + (rm[:, None] - rn[None, :] + P - 1), mask=both, other=0) - lo
            c2p = tl.load(c2p_ptr + rel0 + rm[:, None].to(tl.int64) * W + r, mask=both, other=0.0)
            p2c = tl.load(p2c_ptr + rel0 + rn[None, :].to(tl.int64) * W + r, mask=both, other=0.0)
            s = (tl.dot(q, tl.trans(k)) + c2p + p2c) * _LOG2E
            s = tl.where(mask_k[None, :], s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_q[:, None])


KERNELS = {"rel_proj": rel_proj, "attention_rel": attention_rel}
