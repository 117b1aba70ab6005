"""The CPU engine: a BERT / DistilBERT forward pass in numpy, float32.

Theory of operation. The weights arrive in the engine layout (see
``zerostart.bundle.layout``): every linear layer is ``x @ W + b`` with ``W``
stored ``[in, out]``, and Q, K, V are one fused ``[H, 3H]`` matrix whose query
block is pre-scaled by ``1/sqrt(head_dim)``. Activations are kept as one 2-D
``[B*T, H]`` array so each projection is a single BLAS call; attention
reshapes the fused QKV output into strided ``[B, heads, T, d]`` views (no copy)
and runs ``np.matmul`` per (sequence, group of heads) so the scores stay in
cache. Elementwise work runs in place (see ``ops``) and, like attention, is
split over a few threads (``parallel``): BLAS threads only the big products. Both architectures are post-LN encoders and differ only
in their embeddings (token types or not) and their sequence-classification
head (BERT: tanh pooler; DistilBERT: pre_classifier + ReLU), so one class runs
both. Matches Hugging Face transformers (eager attention) to ~1e-5.

Runtime module: numpy only. Nothing global is set at import; BLAS threading
is whatever the process was started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from zerostart.bundle.layout import (
    GELU_ERF_ACTS,
    GELU_TANH_ACTS,
    GEMM_GROUP,
    layer_prefix,
    tensor_dtypes,
    tensor_shapes,
)
from zerostart.bundle.manifest import Manifest
from zerostart.engine import ops
from zerostart.engine.cpu_gemm import PackedMatrix, matmul_f32
from zerostart.engine.cpu_native import check_precision
from zerostart.engine.inputs import check_inputs
from zerostart.engine.native import (
    ACT_GELU_ERF,
    ACT_GELU_TANH,
    ACT_RELU,
    NativeKernels,
    addr,
    load_bundle_kernels,
)
from zerostart.engine.parallel import Workers, default_threads
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

# Scores of one attention work item: 32 Ki float32 = 128 KiB, which stays in L2
# through scale, mask, softmax and the product with V.
SCORES_BLOCK_ELEMS = 32 * 1024
# Rows per part below which splitting elementwise work over threads costs more than it saves.
ROWS_PER_PART = 64

# Hugging Face adds finfo(dtype).min to the scores of padding keys; so do we, so
# that a fully padded row (impossible with [CLS], but still) behaves the same.
MASK_VALUE = float(np.finfo(np.float32).min)


class _Layer(NamedTuple):
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    attn_norm_w: np.ndarray
    attn_norm_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ffn_norm_w: np.ndarray
    ffn_norm_b: np.ndarray


_LAYER_TENSORS = (
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.out.weight",
    "attn.out.bias",
    "attn.norm.weight",
    "attn.norm.bias",
    "ffn.up.weight",
    "ffn.up.bias",
    "ffn.down.weight",
    "ffn.down.bias",
    "ffn.norm.weight",
    "ffn.norm.bias",
)


_NATIVE_ACTS = {
    **dict.fromkeys(GELU_ERF_ACTS, ACT_GELU_ERF),
    **dict.fromkeys(GELU_TANH_ACTS, ACT_GELU_TANH),
    "relu": ACT_RELU,
}
F32 = 4  # bytes per float32: row offsets of the native kernels' pointers


def _activation(name: str) -> Callable[[np.ndarray], None]:
    if name in GELU_ERF_ACTS:
        return ops.gelu_erf_
    if name in GELU_TANH_ACTS:
        return ops.gelu_tanh_
    if name == "relu":
        return ops.relu_
    raise EngineError(f"hidden_act {name!r} is not supported by the CPU engine")


class CpuEngine:
    """Runs one bundle's encoder and task head on the CPU.

    Holds references to the (memory-mapped) weights and nothing else, so
    constructing it costs microseconds and touches no weight pages.
    """

    def __init__(
        self,
        manifest: Manifest,
        weights: Mapping[str, np.ndarray],
        *,
        threads: int | None = None,
        kernels: NativeKernels | None = None,
    ) -> None:
        """``threads``: threads for the work BLAS does not parallelise (attention per head,
        softmax, GELU, layer norm). Default 1: on the shared 2-core machine this was
        measured, a second thread competed with BLAS's own and lost (docs/bundle.md);
        ``parallel.default_threads()`` gives the CPUs this process may use.
        ``kernels``: the bundle's native kernels (``from_bundle`` loads them); None runs
        the numpy kernels of ``ops``."""
        check_precision(manifest, kernels)
        w: dict[str, np.ndarray] = {}
        dtypes = tensor_dtypes(manifest)
        for name, shape in tensor_shapes(manifest).items():
            if name not in weights:
                raise EngineError(
                    f"weights have no tensor {name!r}", hint="re-run zerostart convert"
                )
            arr = weights[name]
            if arr.shape != shape or arr.dtype != np.dtype(dtypes[name]):
                raise EngineError(
                    f"tensor {name!r} is {arr.dtype}{list(arr.shape)}, expected {dtypes[name]}{list(shape)}",
                    hint="re-run zerostart convert",
                )
            w[name] = arr
        c = manifest.config
        self.manifest = manifest
        self.kernels = kernels
        self._native_act = _NATIVE_ACTS.get(c.hidden_act, -1)
        # Products that are ours (every build with native kernels: fp32, int8, bf16) are split
        # over our threads: they need the cores BLAS would otherwise use. When BLAS does the
        # products (the numpy engine), one thread for the rest (BLAS's threads spin between calls).
        self._own_f32 = kernels is not None and "float32" in kernels.precisions
        own = self._own_f32 or manifest.dtype in GEMM_GROUP
        self._workers = Workers(threads or (default_threads() if own else 1))
        self._task = manifest.task
        self._hidden = c.hidden_size
        self._heads = c.num_heads
        self._eps = c.layer_norm_eps
        self._act = _activation(c.hidden_act)
        self._word = w["embed.word"]
        self._position = w["embed.position"]
        self._token_type = w.get("embed.token_type")
        self._embed_norm = (w["embed.norm.weight"], w["embed.norm.bias"])
        self._layers = [
            _Layer(*(self._tensor(w, layer_prefix(i) + t) for t in _LAYER_TENSORS))
            for i in range(c.num_layers)
        ]
        pre = "head.pooler" if manifest.architecture == "bert" else "head.pre_classifier"
        self._pre = (w[pre + ".weight"], w[pre + ".bias"]) if pre + ".weight" in w else None
        cls = "head.classifier"
        self._classifier = (w[cls + ".weight"], w[cls + ".bias"]) if cls + ".weight" in w else None

    def _tensor(self, w: Mapping[str, np.ndarray], name: str) -> Any:
        """A layer tensor: the array, or for int8/bf16 bundles a PackedMatrix."""
        m = self.manifest
        if m.dtype not in GEMM_GROUP or name.endswith(".bias") or ".norm." in name:
            return w[name]
        h, inter = m.config.hidden_size, m.config.intermediate_size
        k, n = {
            "attn.qkv.weight": (h, 3 * h),
            "attn.out.weight": (h, h),
            "ffn.up.weight": (h, inter),
            "ffn.down.weight": (inter, h),
        }[name.split(".", 2)[-1]]
        return PackedMatrix.from_weights(w, name, m.dtype, k, n)

    def _mm(self, x: np.ndarray, w: np.ndarray | PackedMatrix) -> np.ndarray:
        if isinstance(w, PackedMatrix):
            assert self.kernels is not None  # _check_precision made sure
            return w.matmul(x, self.kernels, self._workers)
        if self._own_f32 and x.flags.c_contiguous and w.flags.c_contiguous:
            assert self.kernels is not None
            m, (k, n) = x.shape[0], w.shape
            res = np.empty((m, n), np.float32)
            matmul_f32(self.kernels, self._workers, addr(x), addr(w), addr(res), m, k, n)
            return res
        out: np.ndarray = x @ w
        return out

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int | None = None) -> CpuEngine:
        """The engine for an opened bundle, on its native kernels when it carries them.

        Raises EngineError when the bundle's kernels need CPU features this CPU lacks.
        """
        m = bundle.manifest
        kernels = (
            load_bundle_kernels(bundle.path, m.cpu_kernels, files=m.files)
            if m.cpu_kernels
            else None
        )
        return cls(m, bundle.weights, threads=threads, kernels=kernels)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """input_ids/attention_mask/token_type_ids: int [B, T] (right-padded). Returns float32:
        sequence-classification -> logits [B, num_labels]; token-classification -> logits
        [B, T, num_labels]; embeddings -> last_hidden_state [B, T, H]."""
        ids, mask, types = self._check_inputs(input_ids, attention_mask, token_type_ids)
        b, t = ids.shape
        if self.kernels is not None:
            return self._forward_native(self.kernels, ids, mask, types)
        x = self._embed(ids, types)
        # [B, 1, T]: 0 for real tokens, finfo.min for padding keys; None when nothing is padded.
        bias = None
        if not mask.all():
            bias = np.where(mask[:, None, :] != 0, np.float32(0), np.float32(MASK_VALUE))
        for layer in self._layers:
            x = self._layer(x, bias, b, t, layer)
        return self._head(x, b, t)

    # -- pieces --------------------------------------------------------------
    def _embed(self, ids: np.ndarray, types: np.ndarray | None) -> np.ndarray:
        b, t = ids.shape
        x = self._word.take(ids.reshape(-1), axis=0)  # [B*T, H], a fresh array
        x3 = x.reshape(b, t, self._hidden)
        x3 += self._position[:t]
        if self._token_type is not None:
            if types is None:
                x3 += self._token_type[0]
            else:
                x += self._token_type.take(types.reshape(-1), axis=0)
        ops.layer_norm_(x, *self._embed_norm, self._eps)
        return x

    def _layer(
        self, x: np.ndarray, bias: np.ndarray | None, b: int, t: int, p: _Layer
    ) -> np.ndarray:
        n, run = b * t, self._workers.run
        qkv = x @ p.qkv_w
        ctx = self._attention(qkv, p.qkv_b, bias, b, t)
        a = ctx @ p.out_w

        def attn_epilogue(i: int, j: int) -> None:
            a[i:j] += p.out_b
            a[i:j] += x[i:j]
            ops.layer_norm_(a[i:j], p.attn_norm_w, p.attn_norm_b, self._eps)

        run(attn_epilogue, n, min_part=ROWS_PER_PART)
        f = a @ p.up_w

        def activation(i: int, j: int) -> None:
            f[i:j] += p.up_b
            self._act(f[i:j])

        run(activation, n, min_part=ROWS_PER_PART)
        out: np.ndarray = f @ p.down_w

        def ffn_epilogue(i: int, j: int) -> None:
            out[i:j] += p.down_b
            out[i:j] += a[i:j]
            ops.layer_norm_(out[i:j], p.ffn_norm_w, p.ffn_norm_b, self._eps)

        run(ffn_epilogue, n, min_part=ROWS_PER_PART)
        return out

    def _attention(
        self, qkv: np.ndarray, qkv_b: np.ndarray, bias: np.ndarray | None, b: int, t: int
    ) -> np.ndarray:
        """Softmax(q k^T + mask) v for every sequence and head, as [B*T, H].

        Work is cut into (sequence, group of heads) items whose scores fit in L2
        and is spread over the workers; each item writes its context straight
        into the [B, T, heads, d] output, so no transpose copy follows.
        """
        h, nh = self._hidden, self._heads
        d = h // nh
        run = self._workers.run
        run(lambda i, j: np.add(qkv[i:j], qkv_b, out=qkv[i:j]), b * t, min_part=ROWS_PER_PART)
        qkv5 = qkv.reshape(b, t, 3, nh, d)
        q = qkv5[:, :, 0].transpose(0, 2, 1, 3)  # [B, nh, T, d], strided views, no copies
        k_t = qkv5[:, :, 1].transpose(0, 2, 3, 1)  # [B, nh, d, T]
        v = qkv5[:, :, 2].transpose(0, 2, 1, 3)
        ctx = np.empty((b, t, nh, d), np.float32)
        per_item = max(1, min(nh, SCORES_BLOCK_ELEMS // (t * t)))
        items = [(i, g) for i in range(b) for g in range(0, nh, per_item)]

        def work(start: int, stop: int) -> None:
            scores = np.empty((per_item, t, t), np.float32)  # reused by this part's items
            for i, g in items[start:stop]:
                e = min(nh, g + per_item)
                s = scores[: e - g]
                np.matmul(q[i, g:e], k_t[i, g:e], out=s)  # q was pre-scaled at convert time
                if bias is not None:
                    s += bias[i]
                ops.softmax_(s)
                np.matmul(s, v[i, g:e], out=ctx[i].transpose(1, 0, 2)[g:e])

        run(work, len(items))
        return ctx.reshape(b * t, h)

    def mean_pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Masked mean over tokens on the native kernel: hidden [B, T, H], mask [B, T] -> [B, H].

        Same contract as ``zerostart.tasks.pool(..., "mean")`` (count clamped at 1e-9);
        raises EngineError when this engine has no native kernels.
        """
        if self.kernels is None:
            raise EngineError("mean_pool needs the native kernels; use zerostart.tasks.pool")
        b, t, h = hidden.shape
        hidden = np.ascontiguousarray(hidden, np.float32)
        mask = np.ascontiguousarray(mask, np.int64)
        out = np.empty((b, h), np.float32)
        self.kernels.mean_pool(addr(hidden), addr(mask), addr(out), 0, b, t, h)
        return out

    # -- native kernels (kernels/cpu/zs_cpu.c) ----------------------------------------
    def _forward_native(
        self, k: NativeKernels, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
    ) -> np.ndarray:
        b, t = ids.shape
        n, h, run = b * t, self._hidden, self._workers.run
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        types_p = None if types is None else addr(types := np.ascontiguousarray(types, np.int64))
        tt = self._token_type
        x = np.empty((n, h), np.float32)
        g, beta = self._embed_norm

        def embed(i: int, j: int) -> None:
            k.embed_layernorm(
                addr(x), addr(ids), types_p, addr(self._word), addr(self._position),
                None if tt is None else addr(tt), addr(g), addr(beta), i, j, t, h, self._eps,
            )  # fmt: skip

        run(embed, n, min_part=ROWS_PER_PART)
        # [B, T]: 0 for real tokens, finfo.min for padding keys; None when nothing is padded.
        bias = None
        if not mask.all():
            bias = np.where(mask != 0, np.float32(0), np.float32(MASK_VALUE))
        for layer in self._layers:
            x = self._layer_native(k, x, bias, b, t, layer)
        return self._head(x, b, t)

    def _layer_native(
        self, k: NativeKernels, x: np.ndarray, bias: np.ndarray | None, b: int, t: int, p: _Layer
    ) -> np.ndarray:
        n, h, nh, eps, run = b * t, self._hidden, self._heads, self._eps, self._workers.run
        qkv = self._mm(x, p.qkv_w)
        ctx = np.empty((n, h), np.float32)
        bias_p = None if bias is None else addr(bias)

        def attention(i: int, j: int) -> None:
            if k.attention(addr(qkv), addr(p.qkv_b), bias_p, addr(ctx), t, nh, h // nh, i, j):
                raise MemoryError("zs_attention: out of memory for its scratch block")

        run(attention, b * nh)
        a = self._mm(ctx, p.out_w)

        def attn_epilogue(i: int, j: int) -> None:
            k.bias_residual_layernorm(
                addr(a) + i * h * F32, addr(x) + i * h * F32, addr(p.out_b),
                addr(p.attn_norm_w), addr(p.attn_norm_b), j - i, h, eps,
            )  # fmt: skip

        run(attn_epilogue, n, min_part=ROWS_PER_PART)
        f = self._mm(a, p.up_w)
        inter = f.shape[1]

        def activation(i: int, j: int) -> None:
            k.bias_act(addr(f) + i * inter * F32, addr(p.up_b), j - i, inter, self._native_act)

        run(activation, n, min_part=ROWS_PER_PART)
        out = self._mm(f, p.down_w)

        def ffn_epilogue(i: int, j: int) -> None:
            k.bias_residual_layernorm(
                addr(out) + i * h * F32, addr(a) + i * h * F32, addr(p.down_b),
                addr(p.ffn_norm_w), addr(p.ffn_norm_b), j - i, h, eps,
            )  # fmt: skip

        run(ffn_epilogue, n, min_part=ROWS_PER_PART)
        return out

    def _head(self, x: np.ndarray, b: int, t: int) -> np.ndarray:
        if self._task == "embeddings":
            return x.reshape(b, t, self._hidden)
        assert self._classifier is not None
        cls_w, cls_b = self._classifier
        if self._task == "token-classification":
            token_logits: np.ndarray = x @ cls_w
            token_logits += cls_b
            return token_logits.reshape(b, t, -1)
        assert self._pre is not None
        pooled = x.reshape(b, t, self._hidden)[:, 0] @ self._pre[0]
        pooled += self._pre[1]
        if self.manifest.architecture == "bert":
            np.tanh(pooled, out=pooled)
        else:
            ops.relu_(pooled)
        logits: np.ndarray = pooled @ cls_w
        logits += cls_b
        return logits

    def _check_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        ids, mask, types = check_inputs(
            self.manifest,
            input_ids,
            attention_mask,
            token_type_ids,
            max_len=self.manifest.config.max_position_embeddings,
        )
        if self._token_type is None:  # weights without token types: only zeros were accepted
            types = None
        return ids, mask, types
