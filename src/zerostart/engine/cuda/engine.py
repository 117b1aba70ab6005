"""CudaEngine: the BERT / DistilBERT (and ModernBERT) forward pass on an NVIDIA GPU, libcuda alone.

ModernBERT's plan is ``modernbert_plan``'s (same buffers, graphs and buckets;
its rotary tables and a zero bias vector are uploaded once at start-up).
Converting ModernBERT for ``--device cuda`` is still refused until issue 23
has run its parity on a GPU (docs/gpu.md).

Theory of operation. At start-up the engine opens the driver, retains the
device's primary context, loads the bundle's ahead-of-time compiled kernels
(cubin for this GPU's arch, else PTX), copies the fp16 weights to the device
once, and allocates one set of activation buffers sized for the largest
(batch bucket x sequence bucket). For every bucket pair it then records the
whole forward pass (embeddings, L layers, head) as a launch plan and captures
it into a CUDA graph; buffers are shared by all graphs because a graph runs
one at a time on the engine's stream.

A request is padded up to its bucket: token ids, token types and per-sequence
lengths go into pinned host buffers, are copied to the device, the bucket's
graph is launched, and the output (fp16) is copied back and widened to
float32. Padding costs no attention work (keys stop at each sequence's
length); it does cost GEMM rows, which is what the bucket sizes bound.

Threads. The driver's current context is per OS thread, and the worker loads
the engine on its main thread but serves requests on the batcher thread. The
engine therefore keeps its context handle and pushes it on the calling thread
for the duration of every entry point (``__init__``, ``forward``, ``close``),
popping it afterwards, rather than funnelling calls to one owner thread: a push
and a pop cost about a microsecond, a hand-off between threads tens of
microseconds on a request path whose target is 0.5 ms, and any caller (the
batcher, a benchmark, a test) works unchanged. A lock serialises the entry
points, because every bucket shares one set of device and pinned buffers.

Outputs match ``CpuEngine.forward``: sequence-classification logits
``[B, L]``, token-classification logits ``[B, T, L]``, embeddings
``[B, T, H]``. Positions past a sequence's length hold zeros (attention) or
values derived from them; only the real positions are meaningful, as on CPU.

The serving path calls :meth:`CudaEngine.run` (``array`` buffers in, float32
``array`` out, no numpy, weights copied to the device from the bundle's map by
address); :meth:`CudaEngine.forward` is the numpy contract of the tests and
benchmarks, on top of it.

Runtime module: standard library + this package (``forward`` imports numpy). No
CUDA library but libcuda is opened.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zerostart.bundle.deberta_layout import ARCHITECTURE as DEBERTA
from zerostart.bundle.deberta_layout import REL_INDEX, pos_names
from zerostart.bundle.launch import (
    ACT_NONE,
    ACT_RELU,
    ACT_TANH,
    KERNELS_DIR,
    KernelManifest,
    KernelVariant,
    activation_code,
    bucket,
    select_gemm,
    select_splitk,
)
from zerostart.bundle.layout import layer_prefix, tensor_shapes
from zerostart.bundle.manifest import Manifest
from zerostart.engine.cuda.driver import (
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
    Driver,
)
from zerostart.engine.cuda.memory import CachingAllocator, PinnedBuffer
from zerostart.engine.cuda.modernbert_plan import ModernBertBuffers, modernbert_plan, rope_tables
from zerostart.engine.cuda.module import KernelLibrary
from zerostart.errors import EngineError

if TYPE_CHECKING:
    import numpy as np

FP16_BYTES = 2
FP32_BYTES = 4
# Split-K (see kernels/variants.py) only for GEMMs of at most this many rows: the K slices'
# fp32 workspace is sized for it, and more rows already give every SM work.
SPLITK_MAX_ROWS = 512
# Automatic split-K (``split_k=None``) up to this many rows (batch 1 up to 256 tokens).
SPLITK_AUTO_MAX_ROWS = 256


def _input_offsets(b: int, t: int) -> tuple[int, int, int]:
    """int32 offsets of token ids, token types and lengths for bucket (b, t) in the input block."""
    return 0, b * t, 2 * b * t


@dataclass(frozen=True)
class _Launch:
    variant: KernelVariant
    sizes: dict[str, int]
    args: dict[str, int | float]


class CudaEngine:
    """Runs one bundle's encoder and task head on one GPU; same ``forward`` as CpuEngine."""

    def __init__(
        self,
        manifest: Manifest,
        weights: Mapping[str, Any],
        *,
        kernels_dir: str | Path,
        device: int = 0,
        capture_graphs: bool = True,
        driver: Driver | None = None,
        split_k: int | None = None,
    ) -> None:
        if manifest.dtype != "float16":
            raise EngineError(
                f"the GPU engine runs float16 weights but this bundle holds {manifest.dtype}",
                hint="convert with `zerostart convert --device cuda --arch sm_XY`",
            )
        self.manifest = manifest
        self._deberta = manifest.architecture == DEBERTA
        c = manifest.config
        self._h, self._inter, self._heads = c.hidden_size, c.intermediate_size, c.num_heads
        self._eps = float(c.layer_norm_eps)
        self._act = activation_code(c.hidden_act)
        self._labels = len(manifest.labels)
        self._split_k = split_k  # None: automatic; 1: never; 2, 4: wherever compiled and allowed
        self.kernels = KernelManifest.load(kernels_dir)
        self.driver = drv = driver or Driver.load()
        self._lock = threading.Lock()
        self._closed = False
        # Seconds per start-up phase, in order (what /status and bench/gpu.py report).
        self.startup_phases: dict[str, float] = {}
        t0 = time.perf_counter()
        drv.init()
        self._device = drv.device(device)
        self._mark("driver_init", t0)
        t0 = time.perf_counter()
        self._context = drv.primary_context(self._device)
        self._mark("context", t0)
        try:
            with drv.current(self._context):
                self._start(weights, Path(kernels_dir), capture_graphs)
        except BaseException:
            drv.release_primary_context(self._device)
            raise

    def _mark(self, phase: str, since: float) -> None:
        self.startup_phases[phase] = time.perf_counter() - since

    def _start(self, weights: Mapping[str, Any], kernels_dir: Path, capture_graphs: bool) -> None:
        """Everything after the context is retained; runs with it current.

        Launch plans, their kernels' modules and graphs are made lazily, per
        bucket pair on its first use (a few milliseconds), not all at start-up: a
        worker serves a handful of bucket pairs, and planning and capturing all
        42 was most of the engine's start-up.
        """
        drv, c = self.driver, self.manifest.config
        t0 = time.perf_counter()
        self.device_name = drv.device_name(self._device)
        self.compute_capability = drv.compute_capability(self._device)
        self._sms = drv.device_attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self._device)
        optin = drv.device_attribute(
            CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, self._device
        )
        self.library = KernelLibrary(drv, kernels_dir, self.kernels, self.compute_capability, optin)
        self._stream = drv.stream_create()
        self._alloc = CachingAllocator(drv)
        self._mark("setup", t0)
        t0 = time.perf_counter()
        self._w = self._upload(weights)
        self._mark("weights_upload", t0)
        t0 = time.perf_counter()
        self._max_b = self.kernels.batch_buckets[-1]
        self._max_t = min(self.kernels.seq_buckets[-1], c.max_position_embeddings)
        self._buffers()
        self._mark("buffers", t0)
        self._capture_graphs = capture_graphs
        self._graphs: dict[tuple[int, int], int] = {}
        self._plans: dict[tuple[int, int], list[_Launch]] = {}
        self._gemm_choice: dict[tuple[str | int, ...], KernelVariant] = {}
        self._pairs = [
            (b, t)
            for b in self.kernels.batch_buckets
            for t in self.kernels.seq_buckets
            if t <= self._max_t
        ]
        # Fail at start-up, not on a request: plan the smallest pair (its modules loaded:
        # the likeliest first request) and check the largest one's kernel choices.
        t0 = time.perf_counter()
        self._plan_for(*self._pairs[0])
        self._plan(*self._pairs[-1])
        self._mark("plans", t0)

    @classmethod
    def from_bundle(cls, bundle: object, **kwargs: object) -> CudaEngine:
        """From an opened ``zerostart.bundle.folder.Bundle`` (its kernels/ folder)."""
        path = Path(bundle.path)  # type: ignore[attr-defined]
        return cls(bundle.manifest, bundle.weights, kernels_dir=path / KERNELS_DIR, **kwargs)  # type: ignore[attr-defined,arg-type]

    # -- start-up ----------------------------------------------------------------
    def _upload(self, weights: Mapping[str, Any]) -> dict[str, int]:
        """Copy every tensor to the device: from the bundle's map by address (``Weights``),
        or from numpy arrays (a mapping of them: tests, the canary)."""
        out: dict[str, int] = {}
        mapped = getattr(weights, "info", None)
        self._int_tensors = {REL_INDEX} if self._deberta else set()
        if self._deberta:  # the bucket table, also read here: a plan's W and lo depend on it
            if mapped is not None:  # read from the map, as the upload does (no numpy)
                import ctypes

                addr = weights.address(REL_INDEX)  # type: ignore[attr-defined]
                raw = ctypes.string_at(addr, mapped[REL_INDEX].nbytes)
            else:
                raw = weights[REL_INDEX].astype("<i4").tobytes()
            self._rel_index = array("i", raw)
        for name, shape in tensor_shapes(self.manifest).items():
            if name not in weights:
                raise EngineError(
                    f"weights have no tensor {name!r}", hint="re-run zerostart convert"
                )
            want = "int32" if name in self._int_tensors else "float16"
            if mapped is not None:
                info = mapped[name]
                dtype, got_shape, src, nbytes = (
                    info.dtype, info.shape, weights.address(name), info.nbytes,  # type: ignore[attr-defined]
                )  # fmt: skip
                ok = dtype == ("I32" if want == "int32" else "F16")
            else:
                import numpy as np

                arr = np.ascontiguousarray(weights[name])
                dtype, got_shape, src, nbytes = arr.dtype, arr.shape, arr.ctypes.data, arr.nbytes
                ok = arr.dtype == np.dtype(want)
            if got_shape != shape or not ok:
                raise EngineError(
                    f"tensor {name!r} is {dtype}{list(got_shape)}, expected {want}{list(shape)}",
                    hint="re-run zerostart convert --device cuda",
                )
            ptr = self._alloc.alloc(nbytes)
            self.driver.memcpy_htod(ptr, src, nbytes, self._stream)
            self.driver.stream_synchronize(self._stream)  # src may be a temporary copy
            out[name] = ptr
        return out

    def _buffers(self) -> None:
        n, h = self._max_b * self._max_t, self._h
        a = self._alloc.alloc
        # Token ids, token types and lengths of a batch travel in one copy: per bucket
        # (b, t) they lie at int32 offsets 0, b*t and 2*b*t of one block (``_input_offsets``).
        self._inputs = a((2 * n + self._max_b) * 4)
        self._x, self._ctx, self._tmp, self._a = (a(n * h * FP16_BYTES) for _ in range(4))
        self._qkv = a(n * 3 * h * FP16_BYTES)
        self._f = a(n * self._inter * FP16_BYTES)
        self._pooled = a(self._max_b * h * FP16_BYTES)
        self._logits = a(n * max(1, self._labels) * FP16_BYTES)
        self._in = PinnedBuffer(self.driver, "i", 2 * n + self._max_b)  # int32
        self._out = PinnedBuffer(self.driver, "e", n * max(h, self._labels))  # float16
        splits = [v.params["SPLIT_K"] for v in self.kernels.variants if v.op == "gemm_partial"]
        rows = min(n, SPLITK_MAX_ROWS)
        self._ws = a(max(splits) * rows * h * FP32_BYTES) if splits else 0
        if self._deberta:
            c = self.manifest.config
            self._zero_pos = self._upload_bytes(bytes(self._max_t * h * FP16_BYTES))
            rel = self._max_b * c.num_heads * self._max_t * self._rel_width(self._max_t)[1]
            self._c2p, self._p2c = a(rel * FP32_BYTES), a(rel * FP32_BYTES)
        self._hidden = self._x  # where the encoder's last hidden states end up
        if self.manifest.architecture == "modernbert":
            self._mb = self._modernbert_buffers()
            self._hidden = self._mb.h

    def _rel_width(self, t: int) -> tuple[int, int]:
        """(lo, W): the rows of the relative tables that distances |i - j| < t reach."""
        p = (len(self._rel_index) + 1) // 2
        rows = self._rel_index[p - t : p - 1 + t]
        return min(rows), max(rows) + 1 - min(rows)

    def _attention(self, b: int, t: int, lens_ptr: int, layer: int) -> list[_Launch]:
        """BERT's attention launch, or DeBERTa's two (``kernels/triton_deberta.py``)."""
        h, sizes = self._h, {"B": b, "T": t}
        common: dict[str, int | float] = {"qkv_ptr": self._qkv, "T": t, "H": h}
        if not self._deberta:
            attn = self.kernels.find("attention", NUM_HEADS=self._heads)
            return [_Launch(attn, sizes, {**common, "lens_ptr": lens_ptr, "out_ptr": self._ctx})]
        lo, width = self._rel_width(t)
        pos_q, pos_k = pos_names(layer)
        rel = {**common, "c2p_ptr": self._c2p, "p2c_ptr": self._p2c, "W": width, "lo": lo}
        proj = {**rel, "posq_ptr": self._w[pos_q], "posk_ptr": self._w[pos_k]}
        att = {**rel, "idx_ptr": self._w[REL_INDEX], "lens_ptr": lens_ptr, "out_ptr": self._ctx}
        att["P"] = (len(self._rel_index) + 1) // 2
        return [
            _Launch(self.kernels.find("rel_proj"), {**sizes, "W": width}, proj),
            _Launch(self.kernels.find("attention_rel"), sizes, att),
        ]

    def _upload_bytes(self, data: array[Any] | bytes) -> int:
        """A device copy of host ``data`` (synchronous: ``data`` may be a temporary)."""
        host = array("b", data) if isinstance(data, bytes) else data
        addr, count = host.buffer_info()
        ptr = self._alloc.alloc(count * host.itemsize)
        self.driver.memcpy_htod(ptr, addr, count * host.itemsize, self._stream)
        self.driver.stream_synchronize(self._stream)
        return ptr

    def _modernbert_buffers(self) -> ModernBertBuffers:
        """The activation buffers BERT's plan uses, one more [B, H], rotary tables, zero bias."""
        c, h = self.manifest.config, self._h
        d = h // c.num_heads
        tables = {}
        for theta in {c.rope_theta, c.local_rope_theta}:
            cos, sin = rope_tables(theta, d, self._max_t)
            tables[theta] = (self._upload_bytes(cos), self._upload_bytes(sin))
        return ModernBertBuffers(
            ids=0,  # per bucket pair: set by _plan
            lens=0,
            x=self._x,
            h=self._a,
            ctx=self._ctx,
            tmp=self._tmp,
            qkv=self._qkv,
            f=self._f,
            pooled=self._pooled,
            pooled2=self._alloc.alloc(self._max_b * h * FP16_BYTES),
            logits=self._logits,
            zero_bias=self._upload_bytes(bytes(3 * h * FP16_BYTES)),
            rope_global=tables[c.rope_theta],
            rope_local=tables[c.local_rope_theta],
        )

    def _choose(
        self, op: str, act: int, res: bool, m: int, n: int, k: int, lda: int
    ) -> KernelVariant:
        """``select_gemm`` for one GEMM-like launch (contiguous C), cached per shape: BERT's
        products (``op`` "gemm") and ModernBERT's (``gemm_geglu`` too) alike."""
        key = (op, act, int(res), m, n, k, lda)
        v = self._gemm_choice.get(key)
        if v is None:
            v = self._gemm_choice[key] = select_gemm(
                self.kernels,
                act=act,
                has_res=res,
                m=m,
                n=n,
                k=k,
                lda=lda,
                ldc=n,
                sm_count=self._sms,
                arch=f"sm_{self.compute_capability}",
                fits=self.library.fits,
                op=op,
            )
        return v

    def _gemm(
        self, a: int, w: str, c: int, m: int, *, act: int = ACT_NONE, res: int = 0, lda: int = 0
    ) -> _Launch:
        k, n = tensor_shapes(self.manifest)[w + ".weight"]
        lda = lda or k
        v = self._choose("gemm", act, bool(res), m, n, k, lda)
        args: dict[str, int | float] = {
            "a_ptr": a,
            "b_ptr": self._w[w + ".weight"],
            "bias_ptr": self._w[w + ".bias"],
            "res_ptr": res or c,
            "c_ptr": c,
            "M": m,
            "N": n,
            "K": k,
            "lda": lda,
            "ldc": n,
        }
        return _Launch(v, {"M": m, "N": n}, args)

    def _choose_split(self, m: int, n: int, k: int) -> KernelVariant | None:
        """The split-K partial GEMM for a residual site of ``m`` rows, or None to not split.

        Within the workspace's rows (SPLITK_MAX_ROWS), automatically (``split_k=None``)
        up to SPLITK_AUTO_MAX_ROWS; which variant is ``launch.select_splitk``'s rule.
        """
        if self._split_k == 1 or not self._ws or m > SPLITK_MAX_ROWS:
            return None
        if self._split_k is None and m > SPLITK_AUTO_MAX_ROWS:
            return None
        return select_splitk(
            self.kernels, m=m, n=n, k=k, split_k=self._split_k, fits=self.library.fits
        )

    def _residual_norm(self, x: int, w: str, res: int, norm: str, y: int, m: int) -> list[_Launch]:
        """y = LayerNorm(x @ W + b + res): a GEMM and a LayerNorm, or split-K and its LayerNorm."""
        k, n = tensor_shapes(self.manifest)[w + ".weight"]
        partial = self._choose_split(m, n, k)
        if partial is None:
            return [self._gemm(x, w, self._tmp, m, res=res), self._norm(self._tmp, norm, y, m)]
        ln = self.kernels.find("splitk_layer_norm", SPLIT_K=partial.params["SPLIT_K"])
        return [
            _Launch(
                partial,
                {"M": m, "N": n},
                {
                    "a_ptr": x,
                    "b_ptr": self._w[w + ".weight"],
                    "w_ptr": self._ws,
                    "M": m,
                    "N": n,
                    "K": k,
                    "lda": k,
                },
            ),
            _Launch(
                ln,
                {"ROWS": m},
                {
                    "w_ptr": self._ws,
                    "bias_ptr": self._w[w + ".bias"],
                    "res_ptr": res,
                    "g_ptr": self._w[norm + ".weight"],
                    "b_ptr": self._w[norm + ".bias"],
                    "y_ptr": y,
                    "M": m,
                    "H": self._h,
                    "eps": self._eps,
                },
            ),
        ]

    def _norm(self, x: int, prefix: str, y: int, rows: int) -> _Launch:
        v = self.kernels.find("layer_norm")
        args: dict[str, int | float] = {
            "x_ptr": x,
            "w_ptr": self._w[prefix + ".weight"],
            "b_ptr": self._w[prefix + ".bias"],
            "y_ptr": y,
            "H": self._h,
            "eps": self._eps,
        }
        return _Launch(v, {"ROWS": rows}, args)

    def _plan(self, b: int, t: int) -> list[_Launch]:
        """Every launch of one forward pass at bucket (b, t), in order."""
        n, h, w = b * t, self._h, self._w
        ids_ptr, types_ptr, lens_ptr = (self._inputs + 4 * o for o in _input_offsets(b, t))
        if self.manifest.architecture == "modernbert":
            buf = dataclasses.replace(self._mb, ids=ids_ptr, lens=lens_ptr)
            steps = modernbert_plan(self.manifest, self.kernels, w, buf, b, t, self._choose)
            return [_Launch(s.variant, s.sizes, s.args) for s in steps]
        has_types = "embed.token_type" in w
        plan = [
            _Launch(
                self.kernels.find("embed", HAS_TYPES=int(has_types)),
                {"B": b, "T": t},
                {
                    "ids_ptr": ids_ptr,
                    "types_ptr": types_ptr,
                    "word_ptr": w["embed.word"],
                    "pos_ptr": self._zero_pos if self._deberta else w["embed.position"],
                    "type_ptr": w.get("embed.token_type", w["embed.word"]),
                    "w_ptr": w["embed.norm.weight"],
                    "b_ptr": w["embed.norm.bias"],
                    "y_ptr": self._x,
                    "T": t,
                    "H": h,
                    "eps": self._eps,
                },
            )
        ]
        for i in range(self.manifest.config.num_layers):
            p = layer_prefix(i)
            plan += [
                self._gemm(self._x, p + "attn.qkv", self._qkv, n),
                *self._attention(b, t, lens_ptr, i),
                *self._residual_norm(
                    self._ctx, p + "attn.out", self._x, p + "attn.norm", self._a, n
                ),
                self._gemm(self._a, p + "ffn.up", self._f, n, act=self._act),
                *self._residual_norm(self._f, p + "ffn.down", self._a, p + "ffn.norm", self._x, n),
            ]
        task = self.manifest.task
        if task == "token-classification":
            plan.append(self._gemm(self._x, "head.classifier", self._logits, n))
        elif task == "sequence-classification":
            bert = self.manifest.architecture == "bert"
            pre, act = ("head.pooler", ACT_TANH) if bert else ("head.pre_classifier", ACT_RELU)
            if self._deberta:  # ContextPooler: dense + its own activation on token 0
                pooler = self.manifest.config.pooler_act
                act = ACT_TANH if pooler == "tanh" else activation_code(pooler)
                pre = "head.pooler"
            # [CLS] rows read in place: row i of A is token 0 of sequence i (stride T*H).
            plan.append(self._gemm(self._x, pre, self._pooled, b, act=act, lda=t * h))
            plan.append(self._gemm(self._pooled, "head.classifier", self._logits, b))
        return plan

    def _run(self, plan: list[_Launch]) -> None:
        for step in plan:
            self.library.launch(step.variant, step.sizes, step.args, self._stream)

    def _capture(self, plan: list[_Launch]) -> int:
        self.driver.begin_capture(self._stream)
        try:
            self._run(plan)
        finally:
            graph = self.driver.end_capture(self._stream)
        exe = self.driver.graph_instantiate(graph)
        self.driver.graph_destroy(graph)  # the executable graph keeps what it needs
        return exe

    def _plan_for(self, b: int, t: int) -> list[_Launch]:
        """The bucket pair's launch plan, made on first use with its kernels' modules loaded."""
        plan = self._plans.get((b, t))
        if plan is None:
            plan = self._plan(b, t)
            for step in plan:  # module loads are not allowed while a stream captures
                self.library.load(step.variant)
            self._plans[(b, t)] = plan
        return plan

    def _graph(self, b: int, t: int) -> int:
        """The bucket pair's executable graph, captured on first use; 0 when graphs are off."""
        plan = self._plan_for(b, t)
        if not self._capture_graphs:
            return 0
        exe = self._graphs.get((b, t))
        if exe is None:
            exe = self._graphs[(b, t)] = self._capture(plan)
        return exe

    def warm_graphs(self, pairs: list[tuple[int, int]] | None = None) -> None:
        """Plan and capture ``pairs`` (default: every bucket pair) now, not on first use."""
        with self._lock, self.driver.current(self._context):
            for b, t in pairs if pairs is not None else self._pairs:
                self._graph(b, t)

    # -- inference ---------------------------------------------------------------
    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]:
        """``NativeCpuEngine.run``'s contract: a right-padded batch of ``len(lengths)``
        sequences of ``width`` (flat ids/types) -> float32 logits [B, labels] or per-token
        outputs [B*width, cols]. No numpy. Callable from any thread; calls are serialised.

        Raises EngineError for ids or types out of range, a width over the compiled
        maximum, or sizes that disagree.
        """
        b, c = len(lengths), self.manifest.config
        if b < 1 or width < 1 or len(ids) != b * width:
            raise EngineError(f"{len(ids)} token ids for {b} sequences of {width}")
        if width > self._max_t:
            raise EngineError(
                f"sequence length {width} exceeds the compiled maximum ({self._max_t})"
            )
        if any(not 0 < n <= width for n in lengths):
            raise EngineError(f"sequence lengths must be in [1, {width}], got {list(lengths)}")
        if min(ids) < 0 or max(ids) >= c.vocab_size:
            raise EngineError(f"input_ids must be in [0, {c.vocab_size})")
        if types is not None:
            if len(types) != len(ids):
                raise EngineError(f"token_type_ids must have {len(ids)} entries")
            if c.type_vocab_size == 0:
                if any(types):
                    raise EngineError(f"{self.manifest.architecture} has no token type embeddings")
                types = None
            elif min(types) < 0 or max(types) >= c.type_vocab_size:
                raise EngineError(f"token_type_ids must be in [0, {c.type_vocab_size})")
        ids_i = array("i", ids)
        types_i = None if types is None else array("i", types)
        out = array("f")
        with self._lock:
            if self._closed:
                raise EngineError("the GPU engine is closed")
            with self.driver.current(self._context):
                for i in range(0, b, self._max_b):
                    j = min(b, i + self._max_b)
                    rows = slice(i * width, j * width)
                    part = None if types_i is None else types_i[rows]
                    out.extend(self._forward_chunk(ids_i[rows], lengths[i:j], part, width))
        return out

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Same contract as ``CpuEngine.forward`` (numpy); inputs must be right-padded."""
        import numpy as np

        from zerostart.engine.inputs import check_inputs

        ids, mask, types = check_inputs(
            self.manifest,
            input_ids,
            attention_mask,
            token_type_ids,
            max_len=self._max_t,
            what_limits="the compiled maximum",
        )
        lens = (mask != 0).sum(axis=1)
        if not np.array_equal(mask != 0, np.arange(ids.shape[1])[None, :] < lens[:, None]):
            raise EngineError("the GPU engine needs right-padded inputs (mask 1...1 0...0 per row)")
        b, t = ids.shape
        flat_types = None if types is None else types.reshape(-1).tolist()
        out = np.frombuffer(
            self.run(ids.reshape(-1).tolist(), flat_types, lens.tolist(), t), np.float32
        )
        if self.manifest.task == "sequence-classification":
            return out.reshape(b, -1).copy()
        return out.reshape(b, t, -1).copy()

    def _forward_chunk(
        self, ids: array[int], lens: Sequence[int], types: array[int] | None, t: int
    ) -> array[float]:
        b = len(lens)
        bb, tb = bucket(b, self.kernels.batch_buckets), bucket(t, self.kernels.seq_buckets)
        n = bb * tb
        d, s = self.driver, self._stream
        graph = self._graph(bb, tb)  # captured before this call's copies are queued
        staged = self._in.view
        at_ids, at_types, at_lens = _input_offsets(bb, tb)
        staged[at_ids : at_ids + n] = array("i", [self.manifest.config.pad_token_id]) * n
        staged[at_types : at_types + n] = array("i", bytes(4 * n))
        for r in range(b):
            staged[at_ids + r * tb : at_ids + r * tb + t] = ids[r * t : (r + 1) * t]
            if types is not None:
                staged[at_types + r * tb : at_types + r * tb + t] = types[r * t : (r + 1) * t]
        staged[at_lens : at_lens + bb] = array("i", [*lens, *([0] * (bb - b))])
        d.memcpy_htod(self._inputs, self._in.ptr, (at_lens + bb) * 4, s)
        if graph:
            d.graph_launch(graph, s)
        else:
            self._run(self._plan_for(bb, tb))
        task = self.manifest.task
        if task == "embeddings":
            src, width, rows = self._hidden, self._h, n
        elif task == "token-classification":
            src, width, rows = self._logits, self._labels, n
        else:
            src, width, rows = self._logits, self._labels, bb
        d.memcpy_dtoh(self._out.ptr, src, rows * width * FP16_BYTES, s)
        d.stream_synchronize(s)
        half = self._out  # float16, widened to float32 (struct.unpack: in C)
        if task == "sequence-classification":
            return array("f", half.unpack(0, b * width))
        out = array("f")
        for r in range(b):
            out.extend(half.unpack(r * tb * width, t * width))
        return out

    def close(self) -> None:
        """Free device memory and pinned buffers, then release the primary context. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self.driver.current(self._context):
                self._alloc.release_all()
                for buf in (self._in, self._out):
                    buf.close()
            self.driver.release_primary_context(self._device)
