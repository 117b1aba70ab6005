"""ModernBERT's forward pass in numpy, float32: the reference the native kernels are tested against.

Written to follow transformers' ``modeling_modernbert.py`` (eager attention)
step by step rather than to be fast: attention builds the full ``[T, T]``
score matrix of every head and masks it the way transformers does (an
additive ``finfo(float32).min`` on padding keys and, in local layers, on keys
with ``|i - j| > local_window``), where the native kernel
(kernels/cpu/zs_modernbert.c) never computes the blocks outside the window.
The rotary tables follow transformers' float32 arithmetic
(``ModernBertRotaryEmbedding``): ``inv_freq = 1 / theta^(2i/d)``, angles
``position * inv_freq``, ``cos``/``sin`` of them; ``rotate_half`` pairs
element ``i`` with ``i + d/2`` (Su et al. 2021, RoFormer, in GPT-NeoX's
half-split form). The layer order is ``zerostart.bundle.modernbert_layout``'s.

It also serves bundles converted with ``--cpu-arch none`` (behind
``pipeline.NumpyEngine``); the worker's own engine is
``engine.modernbert_native``.

Runtime module: numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from zerostart.bundle.layout import GELU_ERF_ACTS, GELU_TANH_ACTS, layer_prefix
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.modernbert_layout import is_global, modernbert_shapes
from zerostart.engine import ops
from zerostart.engine.inputs import check_inputs
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

MASK_VALUE = float(np.finfo(np.float32).min)  # what transformers adds to masked scores


def activation(name: str) -> Callable[[np.ndarray], None]:
    """The in-place numpy activation for a Hugging Face activation name."""
    if name in GELU_ERF_ACTS:
        return ops.gelu_erf_
    if name in GELU_TANH_ACTS:
        return ops.gelu_tanh_
    if name == "relu":
        return ops.relu_
    raise EngineError(f"activation {name!r} is not supported by the CPU engine")


def rope_tables(theta: float, head_dim: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float32 [seq_len, head_dim / 2], in transformers' float32 arithmetic."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / np.power(np.float32(theta), exponent)
    angles = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [..., T, d] rotated: x * cos + rotate_half(x) * sin, cos/sin [T, d/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def layer_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm without a bias over the last axis (biased variance, like torch)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: np.ndarray = centred / np.sqrt(var + np.float32(eps)) * weight
    return out.astype(np.float32, copy=False)


class ModernBertReference:
    """ModernBERT encoder + task head on numpy; same ``forward`` contract as ``CpuEngine``."""

    kernels = None  # no native kernels: the pipeline pools in Python

    def __init__(self, manifest: Manifest, weights: Mapping[str, np.ndarray]) -> None:
        """Raises EngineError for tensors that are not the ModernBERT engine layout."""
        self.manifest = manifest
        self.w: dict[str, np.ndarray] = {}
        for name, shape in modernbert_shapes(manifest).items():
            arr = weights.get(name)
            if arr is None or arr.shape != shape or arr.dtype != np.float32:
                got = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
                raise EngineError(
                    f"tensor {name!r} is {got}, expected float32{list(shape)}",
                    hint="re-run zerostart convert",
                )
            self.w[name] = arr
        c = manifest.config
        self._act = activation(c.hidden_act)
        self._head_act = activation(c.classifier_act) if manifest.task != "embeddings" else None

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModernBertReference:
        return cls(bundle.manifest, bundle.weights)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """input_ids/attention_mask: int [B, T]; token_type_ids: ignored (ModernBERT has none).

        Returns float32: sequence classification -> logits [B, labels]; token
        classification -> logits [B, T, labels]; embeddings -> final states [B, T, H].
        """
        m, w = self.manifest, self.w
        c = m.config
        ids, mask, _ = check_inputs(
            m, input_ids, attention_mask, None, max_len=c.max_position_embeddings
        )
        b, t = ids.shape
        h, nh, eps = c.hidden_size, c.num_heads, c.layer_norm_eps
        d = h // nh
        x = layer_norm(w["embed.word"][ids], w["embed.norm.weight"], eps)  # [B, T, H]
        keys = np.where(mask[:, None, None, :] != 0, np.float32(0), np.float32(MASK_VALUE))
        pos = np.arange(t)
        outside = np.abs(pos[:, None] - pos[None, :]) > c.local_window
        local = np.where(outside[None, None], np.float32(MASK_VALUE), keys)
        tables = {
            True: rope_tables(c.rope_theta, d, t),
            False: rope_tables(c.local_rope_theta, d, t),
        }
        for i in range(c.num_layers):
            p = layer_prefix(i)
            hn = x if i == 0 else layer_norm(x, w[p + "attn.norm.weight"], eps)
            qkv = (hn @ w[p + "attn.qkv.weight"]).reshape(b, t, 3, nh, d).transpose(2, 0, 3, 1, 4)
            cos, sin = tables[is_global(m, i)]
            q, k, v = rotate(qkv[0], cos, sin), rotate(qkv[1], cos, sin), qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2)  # q was pre-scaled by 1/sqrt(d) at convert
            scores = scores + (keys if is_global(m, i) else local)
            ops.softmax_(scores)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
            x = x + ctx @ w[p + "attn.out.weight"]
            f = layer_norm(x, w[p + "ffn.norm.weight"], eps) @ w[p + "ffn.wi.weight"]
            inter = f.shape[-1] // 2
            u = np.ascontiguousarray(f[..., :inter])
            self._act(u)
            x = x + (u * f[..., inter:]) @ w[p + "ffn.wo.weight"]
        x = layer_norm(x, w["final.norm.weight"], eps)
        return self._head(x, mask)

    def _head(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m, w = self.manifest, self.w
        if m.task == "embeddings":
            return np.ascontiguousarray(x, dtype=np.float32)
        if m.task == "sequence-classification":
            if m.config.classifier_pooling == "cls":
                x = x[:, 0]
            else:
                weights = mask[:, :, None].astype(np.float32)
                x = (x * weights).sum(axis=1) / weights.sum(axis=1)
        y = np.ascontiguousarray(x @ w["head.dense.weight"] + w["head.dense.bias"], np.float32)
        assert self._head_act is not None
        self._head_act(y)
        y = layer_norm(y, w["head.norm.weight"], self.manifest.config.layer_norm_eps)
        logits: np.ndarray = y @ w["head.classifier.weight"] + w["head.classifier.bias"]
        return logits.astype(np.float32, copy=False)
