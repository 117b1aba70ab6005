"""The worker's ModernBERT engine: the bundle's native kernels on mapped weights, no numpy.

Theory of operation. Like ``engine.cpu_native.NativeCpuEngine`` (whose contract,
``run``, it keeps): tensor addresses taken once from the bundle's map, activations
in grow-only ``array`` buffers reused between forwards, products on the build's
own fp32 GEMM (``zs_gemm_f32``) split over our threads. The ModernBERT work is in
kernels/cpu/zs_modernbert.c; per layer (``bundle.modernbert_layout``)::

    qkv = h Wqkv -> ctx = attention(rotary(q, k), v; window) -> a = ctx Wo
    x += a; h = LN(x)                                  (one pass: zs_mb_residual_norm)
    f = h Wi; g = GeGLU(f)                             (per thread, on the block it wrote)
    x += g Wo; h = LN(x)                               (the next layer's norm, or the final)

``x`` is the residual stream and ``h`` its normed copy, so a layer reads ``h`` and
adds into ``x``. The rotary tables (one per theta) are computed on first use for
as many positions as the longest batch so far and kept. GeGLU "fused into the
first product": each thread's part of ``h Wi`` (blocks of its rows, one GEMM
A-block each, or below ``plan.col_split_rows`` rows its columns of the input half
and the same columns of the gate half) is followed at once by that block's GeGLU,
while it is in cache, so ``f`` is never read back by a pass over the whole batch.

Matches the numpy reference (``engine.modernbert_ref``) and transformers to
~1e-5 (tests/unit/test_modernbert.py).

Runtime module: standard library only.
"""

from __future__ import annotations

import ctypes
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from zerostart.bundle.layout import layer_prefix
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.modernbert_layout import is_global, modernbert_dtypes, modernbert_shapes
from zerostart.bundle.weights import NUMPY_DTYPES, Weights
from zerostart.engine.cpu_native import (
    _NATIVE_ACTS,
    F32,
    ROWS_PER_PART,
    _Matrix,
    _Scratch,
    _short,
    check_batch,
    check_precision,
    matmul,
    weight_matrix,
)
from zerostart.engine.gemm_f32 import ZS_GEMM_NOMEM, matmul_f32
from zerostart.engine.native import ACT_NONE, NativeKernels, load_bundle_kernels
from zerostart.engine.parallel import Workers, default_threads
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

POOL_MODES = {"cls": 0, "mean": 1}  # zs_mb_pool's
GEGLU_ROWS = 96  # rows per product + GeGLU block when the GEMM plan leaves mc to the kernel

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_SIGNATURES = {
    "zs_mb_embed_norm": (None, [_P, _P, _P, _P, _I, _I, _I, _F]),
    "zs_mb_norm": (None, [_P, _P, _P, _I, _I, _F]),
    "zs_mb_residual_norm": (None, [_P, _P, _P, _P, _I, _I, _F]),
    "zs_mb_geglu": (None, [_P, _P, _I, _I, _I, _I, _I, ctypes.c_int]),
    "zs_mb_rope_table": (None, [_P, _I, _I, _I, _F]),
    "zs_mb_pool": (None, [_P, _P, _P, _I, _I, _I, ctypes.c_int]),
    "zs_mb_attention": (ctypes.c_int, [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I]),
}


class ModernBertKernels:
    """zs_modernbert.c's functions in a loaded kernel build, with typed signatures."""

    def __init__(self, kernels: NativeKernels) -> None:
        """Raises EngineError for a build compiled before these kernels existed."""
        lib = ctypes.CDLL(str(kernels.path))  # the handle NativeKernels opened (dlopen counts)
        if not hasattr(lib, "zs_mb_attention"):
            raise EngineError(
                f"{kernels.path} has no ModernBERT kernels", hint="re-run zerostart convert"
            )
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.embed_norm = lib.zs_mb_embed_norm
        self.norm = lib.zs_mb_norm
        self.residual_norm = lib.zs_mb_residual_norm
        self.geglu = lib.zs_mb_geglu
        self.rope_table = lib.zs_mb_rope_table
        self.pool = lib.zs_mb_pool
        self.attention = lib.zs_mb_attention


class _Layer(NamedTuple):
    attn_g: int  # 0 for layer 0 (no attention norm)
    qkv: _Matrix
    out: _Matrix
    ffn_g: int
    wi: _Matrix
    wo: _Matrix
    theta: float
    window: int  # -1: global


class ModernBertNativeEngine:
    """One ModernBERT bundle's encoder and task head on its native kernels, with no numpy."""

    def __init__(
        self,
        manifest: Manifest,
        weights: Weights,
        kernels: NativeKernels,
        *,
        threads: int | None = None,
    ) -> None:
        """Raises EngineError for tensors that are not the ModernBERT layout, int8 matrices
        without a build that multiplies them, or a build without the kernels."""
        check_precision(manifest, kernels)
        dtypes = modernbert_dtypes(manifest)
        for name, shape in modernbert_shapes(manifest).items():
            info = weights.info.get(name)
            if info is None:
                raise EngineError(
                    f"weights have no tensor {name!r}", hint="re-run zerostart convert"
                )
            want = _short(dtypes[name])
            if info.shape != shape or NUMPY_DTYPES[info.dtype].lstrip("<|") != want:
                raise EngineError(
                    f"tensor {name!r} is {info.dtype}{list(info.shape)}, expected "
                    f"{dtypes[name]}{list(shape)}",
                    hint="re-run zerostart convert",
                )
        c = manifest.config
        for act in (c.hidden_act, *([c.classifier_act] if manifest.task != "embeddings" else [])):
            if act not in _NATIVE_ACTS:
                raise EngineError(f"activation {act!r} is not supported by the CPU engine")
        self.manifest = manifest
        self.kernels = kernels
        self.mb = ModernBertKernels(kernels)
        self.weights = weights  # keeps the map (and every address) alive
        self._workers = Workers(threads or default_threads())
        self._task = manifest.task
        self._hidden, self._heads, self._eps = c.hidden_size, c.num_heads, c.layer_norm_eps
        self._inter, self._vocab, self._max_len = (
            c.intermediate_size,
            c.vocab_size,
            c.max_position_embeddings,
        )
        self._act = _NATIVE_ACTS[c.hidden_act]
        a = weights.address
        h, inter = c.hidden_size, c.intermediate_size

        def mat(name: str, k: int, n: int) -> _Matrix:
            return weight_matrix(weights, name, k, n, manifest.dtype)

        self._word, self._embed_g = a("embed.word"), a("embed.norm.weight")
        self._layers = [
            _Layer(
                a(p + "attn.norm.weight") if i else 0,
                mat(p + "attn.qkv.weight", h, 3 * h),
                mat(p + "attn.out.weight", h, h),
                a(p + "ffn.norm.weight"),
                mat(p + "ffn.wi.weight", h, 2 * inter),
                mat(p + "ffn.wo.weight", inter, h),
                c.rope_theta if is_global(manifest, i) else c.local_rope_theta,
                -1 if is_global(manifest, i) else c.local_window,
            )
            for i, p in ((i, layer_prefix(i)) for i in range(c.num_layers))
        ]
        self._final_g = a("final.norm.weight")
        self._head: tuple[int, ...] | None = None
        if manifest.task != "embeddings":
            names = (
                "dense.weight",
                "dense.bias",
                "norm.weight",
                "classifier.weight",
                "classifier.bias",
            )
            self._head = tuple(a("head." + n) for n in names)
            self._head_act = _NATIVE_ACTS[c.classifier_act]
        self._pool_mode = POOL_MODES[c.classifier_pooling]
        self._rope: dict[float, array[float]] = {}
        self._scratch = _Scratch()

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int | None = None) -> ModernBertNativeEngine:
        """The engine for an opened bundle that carries native kernels (EngineError if none runs)."""
        m = bundle.manifest
        if not m.cpu_kernels:
            raise EngineError(
                f"{bundle.path}: this bundle carries no native CPU kernels",
                hint="convert again without --cpu-arch none",
            )
        kernels = load_bundle_kernels(bundle.path, m.cpu_kernels, files=m.files)
        return cls(m, bundle.weights, kernels, threads=threads)

    def prefault(self) -> int:
        """Map every weight page a forward pass reads after the embedding table."""
        return self.weights.populate("embed.norm.weight")

    @property
    def output_columns(self) -> int:
        return len(self.manifest.labels) if self._task != "embeddings" else self._hidden

    def close(self) -> None:
        self._workers.close()

    # -- the forward pass ------------------------------------------------------------
    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]:
        """``NativeCpuEngine.run``'s contract: a right-padded batch -> float32 outputs, row-major.

        Returns sequence classification: logits [B, labels]; token classification:
        logits [B*width, labels]; embeddings: final states [B*width, hidden] (padded rows
        are not defined). ``types`` are ignored: ModernBERT has no token types (transformers'
        forward takes none), whatever a tokenizer's template writes. Raises EngineError for
        ids out of range, a width over the model's positions, or sizes that disagree.
        """
        b, t, h = len(lengths), width, self._hidden
        n = b * t
        ids_a = ids if isinstance(ids, array) and ids.typecode == "q" else array("q", ids)
        self._check(ids_a, types, lengths, t)
        lengths_a = array("q", lengths)
        k, mb, run, s = self.kernels, self.mb, self._workers.run, self._scratch
        x, hbuf = s.get("x", n * h), s.get("h", n * h)
        ids_p, word, g0, eps = _addr(ids_a), self._word, self._embed_g, self._eps
        run(lambda i, j: mb.embed_norm(x, ids_p, word, g0, i, j, h, eps), n, min_part=ROWS_PER_PART)
        for i, layer in enumerate(self._layers):
            nxt = self._layers[i + 1].attn_g if i + 1 < len(self._layers) else self._final_g
            self._layer(layer, x if i == 0 else hbuf, x, hbuf, nxt, lengths_a, b, t)
        return self._output(k, hbuf, lengths_a, b, t)

    def _check(
        self, ids: array[int], types: Sequence[int] | None, lengths: Sequence[int], t: int
    ) -> None:
        check_batch(ids, types, lengths, t, self._max_len, self._vocab)

    def _rope_table(self, theta: float, t: int) -> int:
        """The address of the rotary table for ``theta`` with at least ``t`` positions."""
        d = self._hidden // self._heads
        table = self._rope.get(theta)
        have = 0 if table is None else len(table) // d
        if have < t:
            grown = array("f", bytes(4 * t * d))
            if table is not None:
                grown[: len(table)] = table
            self.mb.rope_table(_addr(grown), have, t, d, theta)
            self._rope[theta] = table = grown
        assert table is not None
        return _addr(table)

    def _layer(
        self,
        p: _Layer,
        src: int,
        x: int,
        hbuf: int,
        next_g: int,
        lengths: array[int],
        b: int,
        t: int,
    ) -> None:
        mb, s, run = self.mb, self._scratch, self._workers.run
        n, h, nh, eps, inter = b * t, self._hidden, self._heads, self._eps, self._inter
        qkv, ctx, a = s.get("qkv", n * 3 * h), s.get("ctx", n * h), s.get("a", n * h)
        rope, lens = self._rope_table(p.theta, t), _addr(lengths)
        matmul(self.kernels, self._workers, s, src, p.qkv, qkv, n)

        def attention(i: int, j: int) -> None:
            if mb.attention(qkv, rope, lens, ctx, t, nh, h // nh, p.window, i, j):
                raise MemoryError("zs_mb_attention: out of memory for its scratch block")

        run(attention, b * nh)
        matmul(self.kernels, self._workers, s, ctx, p.out, a, n)

        def attn_residual(i: int, j: int) -> None:
            off = i * h * F32
            mb.residual_norm(x + off, a + off, hbuf + off, p.ffn_g, j - i, h, eps)

        run(attn_residual, n, min_part=ROWS_PER_PART)
        g = s.get("g", n * inter)
        self._geglu_product(hbuf, p.wi, g, n)
        matmul(self.kernels, self._workers, s, g, p.wo, a, n)

        def ffn_residual(i: int, j: int) -> None:
            off = i * h * F32
            mb.residual_norm(x + off, a + off, hbuf + off, next_g, j - i, h, eps)

        run(ffn_residual, n, min_part=ROWS_PER_PART)

    def _geglu_product(self, src: int, wi_m: _Matrix, g: int, m: int) -> None:
        """g[m, I] = GeGLU(src[m, H] Wi[H, 2I]), each thread's part of the product then its GeGLU."""
        k, mb, h, inter = self.kernels, self.mb, self._hidden, self._inter
        f = self._scratch.get("f", m * 2 * inter)
        act = self._act
        if wi_m.precision != "float32":  # int8: the whole product, then GeGLU by rows
            matmul(k, self._workers, self._scratch, src, wi_m, f, m)

            def gate(i: int, j: int) -> None:
                mb.geglu(f, g, i, j, inter, 0, inter, act)

            self._workers.run(gate, m, min_part=ROWS_PER_PART)
            return
        wi = wi_m.w
        plan = k.gemm_plan
        tile = k.gemm_f32_tiles.index(plan.tile)
        gemm, kc, mc, nc, pack = k.gemm_f32, plan.kc, plan.mc, plan.nc, int(plan.pack)

        def product(m0: int, m1: int, n0: int, n1: int) -> None:
            err = gemm(src, wi, f, m0, m1, n0, n1, h, 2 * inter, tile, kc, mc, nc, pack)
            if err == ZS_GEMM_NOMEM:
                raise MemoryError("zs_gemm_f32: out of memory for its packing buffers")
            if err:
                raise EngineError(f"zs_gemm_f32 refused tile {plan.tile} (code {err})")

        if self._workers.threads > 1 and m < plan.col_split_rows:
            nr = plan.nr

            def columns(i: int, j: int) -> None:
                c0, c1 = i * nr, min(inter, j * nr)
                product(0, m, c0, c1)  # the GeGLU input's columns ...
                product(0, m, inter + c0, inter + c1)  # ... and the same columns of its gate
                mb.geglu(f, g, 0, m, inter, c0, c1, act)

            self._workers.run(columns, -(-inter // nr))
        else:
            # Row blocks of the plan's A block (the GEMM packs W per such block anyway), so
            # the GeGLU reads a block of f that is still in cache, not a whole part of it.
            block = max(plan.mr, (plan.mc or GEGLU_ROWS) // plan.mr * plan.mr)

            def rows(i: int, j: int) -> None:
                for r0 in range(i, j, block):
                    r1 = min(j, r0 + block)
                    product(r0, r1, 0, 2 * inter)
                    mb.geglu(f, g, r0, r1, inter, 0, inter, act)

            self._workers.run(rows, m, min_part=2 * plan.mr)

    def _output(
        self, k: NativeKernels, hbuf: int, lengths: array[int], b: int, t: int
    ) -> array[float]:
        h, mb, s = self._hidden, self.mb, self._scratch
        if self._head is None:
            out = array("f")
            out.frombytes(s.view("h").cast("B")[: b * t * h * F32])
            return out
        dense_w, dense_b, norm_g, cls_w, cls_b = self._head
        labels = len(self.manifest.labels)
        if self._task == "sequence-classification":
            rows, src = b, s.get("pooled", b * h)
            mb.pool(hbuf, _addr(lengths), src, b, t, h, self._pool_mode)
        else:
            rows, src = b * t, hbuf
        y = s.get("head", rows * h)
        matmul_f32(k, self._workers, src, dense_w, y, rows, h, h)
        k.bias_act(y, dense_b, rows, h, self._head_act)
        mb.norm(y, y, norm_g, rows, h, self._eps)
        logits = array("f", bytes(4 * rows * labels))
        matmul_f32(k, self._workers, y, cls_w, _addr(logits), rows, h, labels)
        k.bias_act(_addr(logits), cls_b, rows, labels, ACT_NONE)
        return logits


def _addr(buf: array[int] | array[float]) -> int:
    return int(buf.buffer_info()[0])
