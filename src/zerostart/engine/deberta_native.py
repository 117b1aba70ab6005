"""The serving path's DeBERTa-v2/v3 engine: the native kernels on mapped weights, no numpy.

``NativeCpuEngine`` (``engine.cpu_native``) with two pieces replaced by the
kernels of kernels/cpu/zs_deberta.c: embeddings without positions
(``zs_embed_layernorm_nopos``), and attention with the content->position and
position->content terms (``zs_disentangled_attention``: the two ``[T, W]``
products with the layer's relative tables and a gather per score, never a
``[T, T, d]`` tensor). The rest of a layer (QKV, output projection, FFN, the
post-LN epilogues) and the heads are the BERT engine's; the sequence head is
transformers' ContextPooler (dense + ``pooler_act`` on token 0) and the classifier.

Matches the numpy reference (``engine.deberta``) and transformers to ~1e-6
(tests/unit/test_deberta.py).

Runtime module: standard library only.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zerostart.bundle.deberta_layout import REL_INDEX, pos_names
from zerostart.bundle.layout import GELU_ERF_ACTS, GELU_TANH_ACTS
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.weights import Weights
from zerostart.engine.cpu_native import (
    MASK_VALUE,
    ROWS_PER_PART,
    NativeCpuEngine,
    _addr,
    _Layer,
    _Matrix,
)
from zerostart.engine.native import (
    ACT_GELU_ERF,
    ACT_GELU_TANH,
    ACT_RELU,
    ACT_TANH,
    NativeKernels,
    load_bundle_kernels,
)
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

_ACTS = {
    **dict.fromkeys(GELU_ERF_ACTS, ACT_GELU_ERF),
    **dict.fromkeys(GELU_TANH_ACTS, ACT_GELU_TANH),
    "relu": ACT_RELU,
    "tanh": ACT_TANH,
}


class NativeDebertaEngine(NativeCpuEngine):
    """Runs one DeBERTa-v2/v3 bundle on its native kernels (``NativeCpuEngine.run``'s contract)."""

    def __init__(
        self,
        manifest: Manifest,
        weights: Weights,
        kernels: NativeKernels,
        *,
        threads: int | None = None,
    ) -> None:
        """Raises EngineError for a kernel build without the DeBERTa kernels, tensors that
        are not the DeBERTa layout, or a pooler activation the kernels lack."""
        if kernels.disentangled_attention is None or kernels.embed_layernorm_nopos is None:
            raise EngineError(
                f"the {kernels.arch} kernel build has no DeBERTa kernels",
                hint="re-run zerostart convert with this version of zerostart",
            )
        super().__init__(manifest, weights, kernels, threads=threads)
        c = manifest.config
        a = weights.address
        self._rel_index = a(REL_INDEX)
        self._positions = c.max_position_embeddings
        self._pos = [tuple(a(n) for n in pos_names(i)) for i in range(c.num_layers)]
        if "head.pooler.weight" in weights.info:
            h = c.hidden_size
            self._pre = (
                _Matrix("float32", a("head.pooler.weight"), 0, 0, h, h),
                a("head.pooler.bias"),
            )
            if c.pooler_act not in _ACTS:
                raise EngineError(f"pooler activation {c.pooler_act!r} is not supported")
            self._pre_act = _ACTS[c.pooler_act]

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int | None = None) -> NativeDebertaEngine:
        m = bundle.manifest
        if not m.cpu_kernels:
            raise EngineError(
                f"{bundle.path}: this bundle carries no native CPU kernels",
                hint="convert again without --cpu-arch none",
            )
        kernels = load_bundle_kernels(bundle.path, m.cpu_kernels, files=m.files)
        return cls(m, bundle.weights, kernels, threads=threads)

    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]:
        """``NativeCpuEngine.run``; token types are ignored when the model has none
        (``type_vocab_size`` 0: DeBERTa-v3, as transformers does)."""
        b, t, h = len(lengths), width, self._hidden
        n = b * t
        ids_a = ids if isinstance(ids, array) and ids.typecode == "q" else array("q", ids)
        types_a = None
        if types is not None and self._token_type is not None:
            types_a = (
                types if isinstance(types, array) and types.typecode == "q" else array("q", types)
            )
        self._check(ids_a, types_a, lengths, t)
        k, run, s = self.kernels, self._workers.run, self._scratch
        x = s.get("x", n * h)
        ids_p = _addr(ids_a)
        types_p = None if types_a is None else _addr(types_a)
        tt = self._token_type
        g, beta = self._embed_norm
        embed = k.embed_layernorm_nopos
        assert embed is not None  # checked at construction

        def embed_part(i: int, j: int) -> None:
            embed(x, ids_p, types_p, self._word, tt, g, beta, i, j, h, self._eps)

        run(embed_part, n, min_part=ROWS_PER_PART)
        mask = None
        if any(length != t for length in lengths):
            mask = array("f", bytes(4 * n))
            for row, length in enumerate(lengths):
                mask[row * t + length : (row + 1) * t] = array("f", [MASK_VALUE]) * (t - length)
        bias = None if mask is None else _addr(mask)
        for layer, pos in zip(self._layers, self._pos, strict=True):
            self._deberta_layer(layer, pos, x, bias, b, t)
        return self._head(x, b, t)

    def _deberta_layer(
        self, p: _Layer, pos: tuple[int, ...], x: int, bias: int | None, b: int, t: int
    ) -> None:
        k, s, run = self.kernels, self._scratch, self._workers.run
        n, h, nh, inter = b * t, self._hidden, self._heads, self._inter
        qkv = s.get("qkv", n * 3 * h)
        ctx = s.get("ctx", n * h)
        a = s.get("a", n * h)
        f = s.get("f", n * inter)
        self._mm(x, p.qkv, qkv, n)
        attn = k.disentangled_attention
        assert attn is not None
        pos_q, pos_k = pos

        def attention(i: int, j: int) -> None:
            rc = attn(
                qkv, p.qkv_b, pos_q, pos_k, self._rel_index, self._positions, bias, ctx,
                t, nh, h // nh, i, j,
            )  # fmt: skip
            if rc == -1:
                raise MemoryError("zs_disentangled_attention: out of memory for its scratch block")
            if rc:
                raise EngineError(f"zs_disentangled_attention: bad sizes (code {rc})")

        run(attention, b * nh)
        self._after_attention(p, x, ctx, a, f, n)
