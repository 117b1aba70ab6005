"""The serving path's CPU engine: the bundle's native kernels on mapped weights, no numpy.

Theory of operation. The weights stay in the bundle's memory map; the engine
takes each tensor's address once (``Weights.address``) and hands addresses to
the native kernels (kernels/cpu/zs_cpu.c, zs_cpu_gemm.c) through ctypes. Token
ids, types and the attention mask are ``array`` buffers; activations live in
grow-only ``array('f')`` scratch buffers reused from one forward to the next
(the batcher runs one forward at a time), so a forward allocates only its
output. Per layer, as in the numpy engine's native path (``engine.cpu``):

    x -> qkv = x Wqkv -> ctx = attention(qkv + b) -> a = LN(ctx Wo + bo + x)
      -> f = act(a Wup + bup) -> x = LN(f Wdown + bdown + a)

Products are the kernel build's own (fp32 ``zs_gemm_f32`` in every build, with
the build's tuned plan: ``engine.gemm_f32``; int8/bf16 packed matrices), split
over our threads; no BLAS is involved. The task head runs here too: the [CLS] rows, pooler/pre-classifier
and classifier for sequence classification, the classifier for token
classification; embeddings return the final states (pooling is a route's
choice, ``tasks.heads``).

Matches the numpy reference engine (``engine.cpu.CpuEngine``) to ~1e-5
(tests/unit/test_cpu_native.py).

Runtime module: standard library only.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from zerostart.bundle.layout import (
    COLSUM_SUFFIX,
    GELU_ERF_ACTS,
    GELU_TANH_ACTS,
    GEMM_GROUP,
    SCALE_SUFFIX,
    layer_prefix,
    padded,
    tensor_dtypes,
    tensor_shapes,
)
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.weights import NUMPY_DTYPES, Weights
from zerostart.engine.gemm_f32 import matmul_f32
from zerostart.engine.native import (
    ACT_GELU_ERF,
    ACT_GELU_TANH,
    ACT_NONE,
    ACT_RELU,
    ACT_TANH,
    NativeKernels,
    load_bundle_kernels,
)
from zerostart.engine.parallel import Workers, default_threads
from zerostart.errors import EngineError

if TYPE_CHECKING:
    from zerostart.bundle.folder import Bundle

# Hugging Face adds finfo(float32).min to the scores of padding keys; so do we.
MASK_VALUE = -3.4028234663852886e38
ROWS_PER_PART = 64  # rows per thread below which splitting elementwise work costs more
PACKED_ROWS_PER_PART = 16  # int8/bf16 products: the micro-kernel takes 4-6 rows at a time
F32 = 4  # bytes per float32

_NATIVE_ACTS = {
    **dict.fromkeys(GELU_ERF_ACTS, ACT_GELU_ERF),
    **dict.fromkeys(GELU_TANH_ACTS, ACT_GELU_TANH),
    "relu": ACT_RELU,
}


def check_precision(manifest: Manifest, kernels: NativeKernels | None) -> None:
    """Raise EngineError unless ``kernels`` can compute this bundle's matrix products."""
    if manifest.dtype == "float32":
        return
    if manifest.dtype not in GEMM_GROUP or manifest.device != "cpu":
        raise EngineError(
            f"the CPU engine computes in float32 (or int8/bf16 with native kernels), "
            f"but this bundle holds {manifest.dtype} weights",
            hint="convert the model again with `zerostart convert --device cpu`",
        )
    if kernels is None or manifest.dtype not in kernels.precisions:
        which = "no native kernels" if kernels is None else f"the {kernels.arch} build"
        raise EngineError(
            f"this bundle's {manifest.dtype} matrices need native kernels with "
            f"{'AVX-512 VNNI or AVX2' if manifest.dtype == 'int8' else 'AVX-512 BF16'}, and {which} has none",
            hint="convert again with --precision float32, or with a --cpu-arch that has them",
        )


def _addr(buf: array[int] | array[float]) -> int:
    return int(buf.buffer_info()[0])


class _Matrix(NamedTuple):
    """One [k, n] weight matrix: float32 as stored, or packed int8/bf16 (bundle.layout)."""

    precision: str
    w: int
    scale: int  # int8 only (0 otherwise)
    colsum: int
    k: int
    n: int


def weight_matrix(weights: Weights, name: str, k: int, n: int, dtype: str) -> _Matrix:
    """The [k, n] matrix ``name`` of a bundle whose dtype is ``dtype``: float32 as stored,
    or packed int8 (with its scale and column sums) / bf16."""
    if dtype not in GEMM_GROUP:
        return _Matrix("float32", weights.address(name), 0, 0, k, n)
    if dtype == "int8":
        a = weights.address
        return _Matrix(dtype, a(name), a(name + SCALE_SUFFIX), a(name + COLSUM_SUFFIX), k, n)
    return _Matrix(dtype, weights.address(name), 0, 0, k, n)


def matmul(
    kernels: NativeKernels,
    workers: Workers,
    scratch: _Scratch,
    x: int,
    w: _Matrix,
    out: int,
    m: int,
) -> None:
    """out[m, n] = x[m, k] @ W (no bias), float32 in and out: ``zs_gemm_f32`` for a float32
    W; int8: each thread quantises its rows of x (per row, asymmetric) into ``scratch``'s
    "qa" buffer and multiplies them by the packed W; bf16: rounds them, then multiplies."""
    k, run = kernels, workers.run
    if w.precision == "float32":
        matmul_f32(k, workers, x, w.w, out, m, w.k, w.n)
        return
    kp, n_pad = padded(w.k, w.n, w.precision)
    s = scratch
    if w.precision == "int8":
        qa = s.get("qa", m * kp * k.int8_a_width, "B")
        a_scale, a_zp = s.get("qa_scale", m), s.get("qa_zp", m, "i")

        def part_int8(i: int, j: int) -> None:
            k.quantize_u8(x, qa, a_scale, a_zp, i, j, w.k, kp)
            k.gemm_u8s8(qa, a_scale, a_zp, w.w, w.colsum, w.scale, out, i, j, kp, w.n, n_pad)

        run(part_int8, m, min_part=PACKED_ROWS_PER_PART)
        return
    a16 = s.get("a16", m * kp, "H")

    def part_bf16(i: int, j: int) -> None:
        k.to_bf16(x, a16, i, j, w.k, kp)
        k.gemm_bf16(a16, w.w, out, i, j, kp, w.n, n_pad)

    run(part_bf16, m, min_part=PACKED_ROWS_PER_PART)


class _Layer(NamedTuple):
    qkv: _Matrix
    qkv_b: int
    out: _Matrix
    out_b: int
    attn_g: int
    attn_b: int
    up: _Matrix
    up_b: int
    down: _Matrix
    down_b: int
    ffn_g: int
    ffn_b: int


class _Scratch:
    """Grow-only buffers, one per role; an address stays valid until the next ``get``."""

    def __init__(self) -> None:
        self._bufs: dict[str, array[int] | array[float]] = {}

    def get(self, name: str, count: int, typecode: str = "f") -> int:
        buf = self._bufs.get(name)
        if buf is None or len(buf) < count:
            buf = array(typecode, bytes(max(count, 1) * array(typecode).itemsize))
            self._bufs[name] = buf
        return _addr(buf)

    def view(self, name: str) -> memoryview:
        return memoryview(self._bufs[name])


def check_batch(
    ids: Sequence[int],
    types: Sequence[int] | None,
    lengths: Sequence[int],
    t: int,
    max_len: int,
    vocab: int,
) -> None:
    """Raise EngineError unless ``ids`` is [len(lengths), t] with lengths in [1, t], t within
    the model's ``max_len`` positions, ids in [0, vocab) and ``types`` (if any) as many as ids."""
    b = len(lengths)
    if b < 1 or t < 1 or len(ids) != b * t:
        raise EngineError(f"{len(ids)} token ids for {b} sequences of {t}")
    if t > max_len:
        raise EngineError(f"sequence length {t} exceeds the model's positions ({max_len})")
    if any(not 0 < length <= t for length in lengths):
        raise EngineError(f"sequence lengths must be in [1, {t}], got {list(lengths)}")
    if min(ids) < 0 or max(ids) >= vocab:
        raise EngineError(f"input_ids must be in [0, {vocab})")
    if types is not None and len(types) != len(ids):
        raise EngineError(f"token_type_ids must have {len(ids)} entries, got {len(types)}")


class NativeCpuEngine:
    """Runs one bundle's encoder and task head on its native kernels, with no numpy.

    Construction checks every tensor's shape and dtype against the engine layout
    and takes addresses: it touches no weight page.
    """

    def __init__(
        self,
        manifest: Manifest,
        weights: Weights,
        kernels: NativeKernels,
        *,
        threads: int | None = None,
    ) -> None:
        """``threads``: for the kernels and products (default: the CPUs this process may
        use). Raises EngineError for tensors that are not the engine layout, or a build
        without the products the bundle needs."""
        check_precision(manifest, kernels)
        dtypes = tensor_dtypes(manifest)
        for name, shape in tensor_shapes(manifest).items():
            info = weights.info.get(name)
            if info is None:
                raise EngineError(
                    f"weights have no tensor {name!r}", hint="re-run zerostart convert"
                )
            want = dtypes[name]
            if info.shape != shape or NUMPY_DTYPES[info.dtype].lstrip("<|") != _short(want):
                raise EngineError(
                    f"tensor {name!r} is {info.dtype}{list(info.shape)}, expected {want}{list(shape)}",
                    hint="re-run zerostart convert",
                )
        if "float32" not in kernels.precisions:
            raise EngineError(
                f"the {kernels.arch} kernel build has no fp32 matrix product",
                hint="re-run zerostart convert (every build has one since kernel ABI 4)",
            )
        c = manifest.config
        self.manifest = manifest
        self.kernels = kernels
        self.weights = weights  # keeps the map (and every address) alive
        self._workers = Workers(threads or default_threads())
        self._task = manifest.task
        self._hidden, self._heads, self._eps = c.hidden_size, c.num_heads, c.layer_norm_eps
        self._inter = c.intermediate_size
        self._vocab, self._types, self._max_len = (
            c.vocab_size,
            c.type_vocab_size,
            c.max_position_embeddings,
        )
        if c.hidden_act not in _NATIVE_ACTS:
            raise EngineError(f"hidden_act {c.hidden_act!r} is not supported by the CPU engine")
        self._act = _NATIVE_ACTS[c.hidden_act]
        a = weights.address
        self._word = a("embed.word")
        self._position = a("embed.position") if "embed.position" in weights.info else 0
        self._token_type = a("embed.token_type") if "embed.token_type" in weights.info else None
        self._embed_norm = (a("embed.norm.weight"), a("embed.norm.bias"))
        h, inter = c.hidden_size, c.intermediate_size
        self._layers = []
        for i in range(c.num_layers):
            p = layer_prefix(i)
            self._layers.append(
                _Layer(
                    self._matrix(weights, p + "attn.qkv.weight", h, 3 * h), a(p + "attn.qkv.bias"),
                    self._matrix(weights, p + "attn.out.weight", h, h), a(p + "attn.out.bias"),
                    a(p + "attn.norm.weight"), a(p + "attn.norm.bias"),
                    self._matrix(weights, p + "ffn.up.weight", h, inter), a(p + "ffn.up.bias"),
                    self._matrix(weights, p + "ffn.down.weight", inter, h), a(p + "ffn.down.bias"),
                    a(p + "ffn.norm.weight"), a(p + "ffn.norm.bias"),
                )
            )  # fmt: skip
        labels = len(manifest.labels)
        pre = "head.pooler" if manifest.architecture == "bert" else "head.pre_classifier"
        self._pre: tuple[_Matrix, int] | None = None
        self._pre_act = ACT_TANH if manifest.architecture == "bert" else ACT_RELU
        if pre + ".weight" in weights.info:
            self._pre = (_Matrix("float32", a(pre + ".weight"), 0, 0, h, h), a(pre + ".bias"))
        self._classifier: tuple[_Matrix, int] | None = None
        if "head.classifier.weight" in weights.info:
            w = a("head.classifier.weight")
            self._classifier = (_Matrix("float32", w, 0, 0, h, labels), a("head.classifier.bias"))
        self._scratch = _Scratch()

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int | None = None) -> NativeCpuEngine:
        """The engine for an opened bundle that carries native kernels.

        Raises EngineError when it has none, when this CPU runs none of its builds,
        or when the chosen build lacks a product the bundle needs.
        """
        m = bundle.manifest
        if not m.cpu_kernels:
            raise EngineError(
                f"{bundle.path}: this bundle carries no native CPU kernels",
                hint="convert again without --cpu-arch none",
            )
        kernels = load_bundle_kernels(bundle.path, m.cpu_kernels, files=m.files)
        return cls(m, bundle.weights, kernels, threads=threads)

    def prefault(self) -> int:
        """Map every weight page a forward pass reads, without computing (``Weights.populate``):
        the layers and the head, which follow the embedding tables in the file (layout
        order). The embedding tables are left to the requests: each touches only its
        tokens' rows. Returns the bytes mapped."""
        return self.weights.populate(layer_prefix(0) + "attn.qkv.weight")

    @property
    def output_columns(self) -> int:
        """Columns of ``run``'s output: labels (classification) or hidden size (embeddings)."""
        return len(self.manifest.labels) if self._task != "embeddings" else self._hidden

    def _matrix(self, weights: Weights, name: str, k: int, n: int) -> _Matrix:
        return weight_matrix(weights, name, k, n, self.manifest.dtype)

    # -- the forward pass --------------------------------------------------------------
    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]:
        """One right-padded batch -> float32 outputs, row-major.

        ``ids``/``types``: int64 ``array('q')`` (or any int sequence) of ``len(lengths) *
        width`` token ids / type ids (types None: all 0); ``lengths``: each sequence's real
        tokens (the rest is padding). Returns sequence classification: logits [B, labels];
        token classification: logits [B*width, labels]; embeddings: final states
        [B*width, hidden]. Raises EngineError for ids or types out of range, a width over
        the model's positions, or sizes that disagree.
        """
        b, t, h = len(lengths), width, self._hidden
        n = b * t
        ids_a = ids if isinstance(ids, array) and ids.typecode == "q" else array("q", ids)
        types_a = None
        if types is not None:
            types_a = (
                types if isinstance(types, array) and types.typecode == "q" else array("q", types)
            )
        self._check(ids_a, types_a, lengths, t)
        if self._token_type is None or (types_a is not None and not any(types_a)):
            types_a = None  # DistilBERT accepts only zeros; BERT's all-zero types: row 0
        k, run, s = self.kernels, self._workers.run, self._scratch
        x = s.get("x", n * h)
        ids_p = _addr(ids_a)
        types_p = None if types_a is None else _addr(types_a)
        tt = self._token_type
        g, beta = self._embed_norm

        def embed(i: int, j: int) -> None:
            k.embed_layernorm(
                x, ids_p, types_p, self._word, self._position, tt, g, beta, i, j, t, h, self._eps
            )

        run(embed, n, min_part=ROWS_PER_PART)
        # [B, T]: 0 for real tokens, MASK_VALUE for padding keys; None when nothing is padded.
        mask = None
        if any(length != t for length in lengths):
            mask = array("f", bytes(4 * n))
            for row, length in enumerate(lengths):
                mask[row * t + length : (row + 1) * t] = array("f", [MASK_VALUE]) * (t - length)
        bias = None if mask is None else _addr(mask)
        for layer in self._layers:
            self._layer(layer, x, bias, b, t)
        return self._head(x, b, t)

    def _check(
        self, ids: array[int], types: array[int] | None, lengths: Sequence[int], t: int
    ) -> None:
        check_batch(ids, types, lengths, t, self._max_len, self._vocab)
        if types is None:
            return
        if self._types == 0:
            if any(types):
                raise EngineError(f"{self.manifest.architecture} has no token type embeddings")
        elif min(types) < 0 or max(types) >= self._types:
            raise EngineError(f"token_type_ids must be in [0, {self._types})")

    def _layer(self, p: _Layer, x: int, bias: int | None, b: int, t: int) -> None:
        k, s, run = self.kernels, self._scratch, self._workers.run
        n, h, nh, inter = b * t, self._hidden, self._heads, self._inter
        qkv = s.get("qkv", n * 3 * h)
        ctx = s.get("ctx", n * h)
        a = s.get("a", n * h)
        f = s.get("f", n * inter)
        self._mm(x, p.qkv, qkv, n)

        def attention(i: int, j: int) -> None:
            if k.attention(qkv, p.qkv_b, bias, ctx, t, nh, h // nh, i, j):
                raise MemoryError("zs_attention: out of memory for its scratch block")

        run(attention, b * nh)
        self._after_attention(p, x, ctx, a, f, n)

    def _after_attention(self, p: _Layer, x: int, ctx: int, a: int, f: int, n: int) -> None:
        """The post-LN layer after attention, into ``x``: a = LN(ctx Wo + bo + x),
        x = LN(act(a Wup + bup) Wdown + bdown + a); ``a``, ``f`` are [n, h], [n, inter] scratch."""
        k, run, h, eps, inter = (
            self.kernels,
            self._workers.run,
            self._hidden,
            self._eps,
            self._inter,
        )
        self._mm(ctx, p.out, a, n)

        def attn_epilogue(i: int, j: int) -> None:
            off = i * h * F32
            k.bias_residual_layernorm(a + off, x + off, p.out_b, p.attn_g, p.attn_b, j - i, h, eps)

        run(attn_epilogue, n, min_part=ROWS_PER_PART)
        self._mm(a, p.up, f, n)

        def activation(i: int, j: int) -> None:
            k.bias_act(f + i * inter * F32, p.up_b, j - i, inter, self._act)

        run(activation, n, min_part=ROWS_PER_PART)
        self._mm(f, p.down, x, n)

        def ffn_epilogue(i: int, j: int) -> None:
            off = i * h * F32
            k.bias_residual_layernorm(x + off, a + off, p.down_b, p.ffn_g, p.ffn_b, j - i, h, eps)

        run(ffn_epilogue, n, min_part=ROWS_PER_PART)

    def _mm(self, x: int, w: _Matrix, out: int, m: int) -> None:
        """out[m, n] = x[m, k] @ W (no bias)."""
        matmul(self.kernels, self._workers, self._scratch, x, w, out, m)

    def _head(self, x: int, b: int, t: int) -> array[float]:
        h, k = self._hidden, self.kernels
        if self._task == "embeddings":
            out = array("f")
            out.frombytes(self._scratch.view("x").cast("B")[: b * t * h * F32])
            return out
        assert self._classifier is not None
        cls_w, cls_b = self._classifier
        labels = cls_w.n
        if self._task == "token-classification":
            logits = array("f", bytes(4 * b * t * labels))
            self._mm(x, cls_w, _addr(logits), b * t)
            k.bias_act(_addr(logits), cls_b, b * t, labels, ACT_NONE)
            return logits
        assert self._pre is not None
        s = self._scratch
        first, pooled = s.get("cls", b * h), s.get("pooled", b * h)
        k.copy_rows(x, first, b, t, h)  # the [CLS] row of every sequence
        self._mm(first, self._pre[0], pooled, b)
        k.bias_act(pooled, self._pre[1], b, h, self._pre_act)
        logits = array("f", bytes(4 * b * labels))
        self._mm(pooled, cls_w, _addr(logits), b)
        k.bias_act(_addr(logits), cls_b, b, labels, ACT_NONE)
        return logits

    def close(self) -> None:
        self._workers.close()


def _short(dtype: str) -> str:
    """numpy dtype name -> its short code as NUMPY_DTYPES writes it ("float32" -> "f4")."""
    return {"float32": "f4", "float16": "f2", "int8": "i1", "int32": "i4", "uint16": "u2"}[dtype]
