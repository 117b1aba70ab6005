"""The DeBERTa-v2/v3 reference engine, in numpy: what the native kernels are tested against.

Theory of operation. A post-LN BERT (``engine.cpu``) whose embeddings have no
positions and whose attention is disentangled (``zerostart.model.deberta``
gives the formula and where each constant comes from):

    s[i, j] = q_i . k_j + q_i . posk[r(i, j)] + k_j . posq[r(i, j)]      (q, posq pre-scaled)

This module computes it the plain way, per sequence and head: the two
``[T, W]`` products of the content with the relative tables (W = the table
rows the sequence's distances reach), then two gathers by ``r``. It is written
for clarity, never serves a bundle with native kernels, and is the reference
``kernels/cpu/zs_deberta.c`` must match (tests/unit/test_deberta.py); it
serves bundles converted with ``--cpu-arch none``.

Runtime module: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from zerostart.bundle.deberta_layout import REL_INDEX, pos_names, tensor_dtypes, tensor_shapes
from zerostart.bundle.layout import GELU_ERF_ACTS, GELU_TANH_ACTS, layer_prefix
from zerostart.bundle.manifest import Manifest
from zerostart.engine import ops
from zerostart.engine.inputs import check_inputs
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

MASK_VALUE = float(np.finfo(np.float32).min)  # transformers' masked_fill value


def activation_(name: str, x: np.ndarray) -> None:
    """x = act(x) in place, for the activations DeBERTa configs name."""
    if name in GELU_ERF_ACTS:
        ops.gelu_erf_(x)
    elif name in GELU_TANH_ACTS:
        ops.gelu_tanh_(x)
    elif name == "relu":
        ops.relu_(x)
    elif name == "tanh":
        np.tanh(x, out=x)
    else:
        raise EngineError(f"activation {name!r} is not supported by the DeBERTa engine")


def rel_rows(index: np.ndarray, t: int) -> np.ndarray:
    """int [T, T]: r(i, j), the relative-table row of query i and key j (``rel.index``)."""
    p = (index.shape[0] + 1) // 2
    delta = np.arange(t)[:, None] - np.arange(t)[None, :]
    rows: np.ndarray = index[delta + p - 1].astype(np.int64)
    return rows


def disentangled_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pos_q: np.ndarray,
    pos_k: np.ndarray,
    rows: np.ndarray,
    mask_bias: np.ndarray | None,
) -> np.ndarray:
    """One sequence, one head: softmax(q k^T + c2p + p2c + mask) v.

    q, k, v: [T, d] (q pre-scaled); pos_q, pos_k: [2 span, d] (pos_q pre-scaled);
    rows: int [T, T] from ``rel_rows``; mask_bias: [T] additive (0 / finfo.min) or None.
    Returns the context [T, d], float32.
    """
    lo, hi = int(rows.min()), int(rows.max()) + 1  # the table rows these distances use
    c2p = q @ pos_k[lo:hi].T  # [T, W]: content of i against position row w
    p2c = k @ pos_q[lo:hi].T  # [T, W]: content of j against position row w
    t = q.shape[0]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    scores = q @ k.T + c2p[i, rows - lo] + p2c[j, rows - lo]
    if mask_bias is not None:
        scores = scores + mask_bias[None, :]
    scores = scores.astype(np.float32)
    ops.softmax_(scores)
    out: np.ndarray = (scores @ v).astype(np.float32)
    return out


class DebertaEngine:
    """Runs a DeBERTa-v2/v3 bundle's encoder and task head in numpy (``CpuEngine``'s contract)."""

    def __init__(self, manifest: Manifest, weights: Mapping[str, np.ndarray]) -> None:
        """Raises EngineError for tensors that are not the DeBERTa layout."""
        dtypes = tensor_dtypes(manifest)
        for name, shape in tensor_shapes(manifest).items():
            arr = weights.get(name)
            if arr is None:
                raise EngineError(
                    f"weights have no tensor {name!r}", hint="re-run zerostart convert"
                )
            if arr.shape != shape or arr.dtype != np.dtype(dtypes[name]):
                raise EngineError(
                    f"tensor {name!r} is {arr.dtype}{list(arr.shape)}, expected {dtypes[name]}{list(shape)}",
                    hint="re-run zerostart convert",
                )
        self.manifest = manifest
        self.kernels = None
        self._w = weights

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> DebertaEngine:
        return cls(bundle.manifest, bundle.weights)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """input_ids/attention_mask/token_type_ids: int [B, T] (right-padded). Returns float32:
        sequence-classification -> logits [B, labels]; token-classification -> [B, T, labels];
        embeddings -> last_hidden_state [B, T, H]. Token types are ignored when the model
        has none (``type_vocab_size`` 0, as transformers does)."""
        m, w = self.manifest, self._w
        c = m.config
        if c.type_vocab_size == 0:
            token_type_ids = None
        ids, mask, types = check_inputs(
            m, input_ids, attention_mask, token_type_ids, max_len=c.max_position_embeddings
        )
        b, t = ids.shape
        h, nh = c.hidden_size, c.num_heads
        d = h // nh
        x = w["embed.word"][ids.reshape(-1)].astype(np.float32)
        if "embed.token_type" in w:
            tt = w["embed.token_type"]
            x += tt[types.reshape(-1)] if types is not None else tt[0]
        ops.layer_norm_(x, w["embed.norm.weight"], w["embed.norm.bias"], c.layer_norm_eps)
        rows = rel_rows(w[REL_INDEX], t)
        bias = np.where(mask != 0, np.float32(0), np.float32(MASK_VALUE))
        for layer in range(c.num_layers):
            p = layer_prefix(layer)
            pq_name, pk_name = pos_names(layer)
            qkv = (x @ w[p + "attn.qkv.weight"] + w[p + "attn.qkv.bias"]).reshape(b, t, 3, nh, d)
            pos_q = w[pq_name].reshape(-1, nh, d)
            pos_k = w[pk_name].reshape(-1, nh, d)
            ctx = np.empty((b, t, nh, d), np.float32)
            for s in range(b):
                mb = None if mask[s].all() else bias[s]
                for hd in range(nh):
                    ctx[s, :, hd] = disentangled_attention(
                        qkv[s, :, 0, hd], qkv[s, :, 1, hd], qkv[s, :, 2, hd],
                        pos_q[:, hd], pos_k[:, hd], rows, mb,
                    )  # fmt: skip
            a = ctx.reshape(b * t, h) @ w[p + "attn.out.weight"] + w[p + "attn.out.bias"] + x
            ops.layer_norm_(a, w[p + "attn.norm.weight"], w[p + "attn.norm.bias"], c.layer_norm_eps)
            f = a @ w[p + "ffn.up.weight"] + w[p + "ffn.up.bias"]
            activation_(c.hidden_act, f)
            x = f @ w[p + "ffn.down.weight"] + w[p + "ffn.down.bias"] + a
            ops.layer_norm_(x, w[p + "ffn.norm.weight"], w[p + "ffn.norm.bias"], c.layer_norm_eps)
        if m.task == "embeddings":
            states: np.ndarray = x.reshape(b, t, h)
            return states
        cls_w, cls_b = w["head.classifier.weight"], w["head.classifier.bias"]
        if m.task == "token-classification":
            out: np.ndarray = (x @ cls_w + cls_b).reshape(b, t, -1)
            return out
        pooled = x.reshape(b, t, h)[:, 0] @ w["head.pooler.weight"] + w["head.pooler.bias"]
        activation_(c.pooler_act, pooled)
        logits: np.ndarray = pooled @ cls_w + cls_b
        return logits
