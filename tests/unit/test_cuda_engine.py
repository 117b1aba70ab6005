"""CudaEngine's plan without a GPU: a recording driver stands in for libcuda.

What this checks is our own logic: every launch's arguments match its
kernel's compiled signature, every grid evaluates, graphs are captured per
(batch, seq) bucket, inputs are padded into the bucket, and unsupported inputs
are refused. Numerics are checked per kernel in test_kernels_interpret.py and
end to end on a GPU in tests/gpu.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiny_models import tiny_manifest
from zerostart.bundle.layout import tensor_shapes
from zerostart.bundle.manifest import Manifest
from zerostart.engine.cuda.driver import Driver
from zerostart.errors import EngineError

pytest.importorskip("triton")


class RecordingDriver(Driver):
    """Hands out fake handles and records launches, graph captures and copies."""

    def __init__(self) -> None:
        super().__init__(lib=None)  # type: ignore[arg-type]
        self.next = 0x1000
        self.launches: list[tuple[int, tuple[int, ...], int]] = []
        self.graph_launches: list[int] = []
        self.copies: list[tuple[str, int]] = []
        self.capturing = False
        self.captured: list[int] = []

    def _handle(self, size: int = 256) -> int:
        self.next += size
        return self.next

    def init(self) -> None: ...
    def device(self, ordinal: int) -> int:
        return 0

    def primary_context(self, device: int) -> int:
        return self._handle()

    def device_name(self, device: int) -> str:
        return "Fake GPU"

    def compute_capability(self, device: int) -> int:
        return 90

    def device_attribute(self, attribute: int, device: int) -> int:
        return {16: 132, 97: 227 * 1024}[attribute]  # SMs, shared-memory opt-in (sm_90)

    def push_context(self, ctx: int) -> None: ...
    def pop_context(self) -> int:
        return 0

    def release_primary_context(self, device: int) -> None: ...
    def func_attribute(self, fn: int, attribute: int) -> int:
        return 0

    def stream_create(self) -> int:
        return self._handle()

    def stream_synchronize(self, stream: int) -> None: ...
    def mem_alloc(self, nbytes: int) -> int:
        return self._handle(nbytes)

    def mem_free(self, ptr: int) -> None: ...
    def mem_alloc_host(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(nbytes)
        self.__dict__.setdefault("_keep", []).append(buf)
        return ctypes.addressof(buf)

    def mem_free_host(self, ptr: int) -> None: ...
    def memcpy_htod(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.copies.append(("htod", nbytes))

    def memcpy_dtoh(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.copies.append(("dtoh", nbytes))

    def module_load(self, image: bytes) -> int:
        assert image[:4] == b"\x7fELF"  # sm_90 device: the cubin, not the PTX
        return self._handle()

    def module_function(self, module: int, name: str) -> int:
        return self._handle()

    def func_set_attribute(self, fn: int, attribute: int, value: int) -> None: ...
    def launch(
        self, fn: int, grid: Any, block: Any, shared_bytes: int, stream: int, params: Any
    ) -> None:
        if not self.capturing:
            self.launches.append((fn, tuple(grid), len(params)))
        else:
            self.captured[-1] += 1

    def begin_capture(self, stream: int) -> None:
        self.capturing = True
        self.captured.append(0)

    def end_capture(self, stream: int) -> int:
        self.capturing = False
        return self._handle()

    def graph_instantiate(self, graph: int) -> int:
        return self._handle()

    def graph_destroy(self, graph: int) -> None: ...
    def graph_launch(self, exe: int, stream: int) -> None:
        self.graph_launches.append(exe)


def _manifest(task: str) -> Manifest:
    return tiny_manifest(
        "bert", task, hidden=64, layers=2, heads=2, ffn=128, max_positions=64, device="cuda"
    )


@pytest.fixture(
    scope="module", params=["sequence-classification", "token-classification", "embeddings"]
)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from zerostart.engine.cuda import CudaEngine
    from zerostart.kernels.aot import compile_for_bundle
    from zerostart.kernels.variants import GemmConfig

    m = _manifest(request.param)
    out = tmp_path_factory.mktemp("bundle")
    compile_for_bundle(m, out, ["sm_90"], gemm_configs=(GemmConfig(64, 64, 32, 4, 2),), max_batch=8)
    weights = {k: np.zeros(s, np.float16) for k, s in tensor_shapes(m).items()}
    return CudaEngine(m, weights, kernels_dir=Path(out) / "kernels", driver=RecordingDriver())


def test_graph_per_bucket_with_every_launch(engine: Any) -> None:
    drv: RecordingDriver = engine.driver
    buckets = [(b, t) for b in (1, 2, 4, 8) for t in (16, 32, 64)]
    assert set(engine._graphs) <= set(buckets)  # lazily: none until a bucket is first used
    captured = len(drv.captured)
    engine.forward(np.array([[2, 5, 3]]), np.array([[1, 1, 1]]))
    assert (1, 16) in engine._graphs and len(drv.captured) == captured + (captured == 0)
    before = dict(engine._graphs)
    engine.forward(np.array([[2, 5, 3]]), np.array([[1, 1, 1]]))
    assert engine._graphs == before  # a bucket's second call reuses its graph
    engine.warm_graphs()
    assert sorted(engine._graphs) == sorted(buckets)
    head = {"sequence-classification": 2, "token-classification": 1, "embeddings": 0}[
        engine.manifest.task
    ]
    assert set(drv.captured) == {1 + 2 * 7 + head}  # embed + 7 per layer + head, in every graph


def test_forward_pads_into_bucket_and_returns_float32(engine: Any) -> None:
    drv: RecordingDriver = engine.driver
    ids = np.array([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0], [2, 3, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    drv.copies.clear()
    out = engine.forward(ids, mask)
    task = engine.manifest.task
    want = {
        "sequence-classification": (3, 3),
        "token-classification": (3, 5, 3),
        "embeddings": (3, 5, 64),
    }[task]
    assert out.shape == want and out.dtype == np.float32
    # bucket (4, 16): ids + types (64 int32 each) + lengths (4 int32) in one copy, one back
    assert drv.copies[:1] == [("htod", (64 + 64 + 4) * 4)]
    width = 64 if task == "embeddings" else 3
    rows = 4 if task == "sequence-classification" else 64
    assert drv.copies[1] == ("dtoh", rows * width * 2)
    staged = engine._in.array
    assert list(staged[128:132]) == [4, 3, 2, 0]
    assert staged[:16].tolist()[:6] == [2, 5, 7, 3, 0, 0] and not staged[64:128].any()


def test_big_batches_are_split_and_bad_inputs_refused(engine: Any) -> None:
    drv: RecordingDriver = engine.driver
    before = len(drv.graph_launches)
    ids = np.full((19, 10), 4)
    out = engine.forward(ids, np.ones_like(ids))
    assert out.shape[0] == 19 and len(drv.graph_launches) - before == 3  # 8 + 8 + 3
    with pytest.raises(EngineError, match="right-padded"):
        engine.forward(np.array([[0, 2, 3]]), np.array([[0, 1, 1]]))
    with pytest.raises(EngineError, match="exceeds the compiled maximum"):
        engine.forward(np.ones((1, 65), np.int64), np.ones((1, 65), np.int64))
    with pytest.raises(EngineError, match="input_ids must be in"):
        engine.forward(np.array([[50]]), np.array([[1]]))


def test_eager_path_matches_plan(tmp_path: Path) -> None:
    from zerostart.engine.cuda import CudaEngine
    from zerostart.kernels.aot import compile_for_bundle
    from zerostart.kernels.variants import GemmConfig

    m = _manifest("token-classification")
    compile_for_bundle(
        m, tmp_path, ["sm_90"], gemm_configs=(GemmConfig(64, 64, 32, 4, 2),), max_batch=2
    )
    weights = {k: np.zeros(s, np.float16) for k, s in tensor_shapes(m).items()}
    drv = RecordingDriver()
    e = CudaEngine(m, weights, kernels_dir=tmp_path / "kernels", driver=drv, capture_graphs=False)
    e.forward(np.array([[2, 3]]), np.array([[1, 1]]))
    grids = [g for _, g, _ in drv.launches]
    assert len(grids) == 1 + 2 * 7 + 1
    assert grids[0] == (16, 1, 1)  # embed: one program per token of bucket (1, 16)
    assert grids[2] == (1, 2, 1)  # attention: cdiv(16, 64) query blocks x (1 sequence x 2 heads)
    with pytest.raises(EngineError, match="float16"):
        CudaEngine(
            m._replace(dtype="float32"),
            weights,
            kernels_dir=tmp_path / "kernels",
            driver=drv,
        )


def test_split_k_for_few_rows_only_and_on_request(tmp_path: Path) -> None:
    """Residual GEMMs of few rows run split-K, their LayerNorm summing the slices."""
    from zerostart.engine.cuda import CudaEngine
    from zerostart.engine.cuda.engine import SPLITK_AUTO_MAX_ROWS
    from zerostart.kernels.aot import compile_for_bundle
    from zerostart.kernels.variants import GemmConfig

    m = _manifest("embeddings")  # hidden 64, FFN 128: FFN down has K = 128 = 2 x 64
    compile_for_bundle(
        m, tmp_path, ["sm_90"], gemm_configs=(GemmConfig(64, 64, 32, 4, 2),), max_batch=8
    )
    weights = {k: np.zeros(s, np.float16) for k, s in tensor_shapes(m).items()}

    def ops(split_k: int | None, b: int, t: int) -> list[str]:
        e = CudaEngine(
            m, weights, kernels_dir=tmp_path / "kernels", driver=RecordingDriver(), split_k=split_k
        )
        return [s.variant.op for s in e._plan_for(b, t)]

    layer = ops(None, 1, 16)[1:8]  # embed, then layer 0
    assert layer == [
        "gemm", "attention", "gemm", "layer_norm", "gemm", "gemm_partial", "splitk_layer_norm"
    ]  # fmt: skip
    assert SPLITK_AUTO_MAX_ROWS < 8 * 64 and "gemm_partial" not in ops(None, 8, 64)
    assert "gemm_partial" in ops(2, 8, 64)  # forced: up to the workspace's rows
    assert "gemm_partial" not in ops(1, 1, 16)  # never
    assert "gemm_partial" not in ops(4, 1, 16)  # no x4 build: K = 128 < 4 x 64


def test_run_widens_the_bucket_output_to_each_sequences_rows(engine: Any) -> None:
    """The numpy-free path: float16 output of bucket (2, 16) -> float32 rows of the real
    batch (2 sequences of 5), with no numpy in ``run``. The recording driver copies
    nothing back, so the pinned output buffer holds the pattern written here."""
    task = engine.manifest.task
    width = 64 if task == "embeddings" else 3
    pattern = (np.arange(engine._out.count) % 2048).astype(np.float16) * np.float16(0.5)
    engine._out.array[:] = pattern
    out = engine.run([2, 5, 7, 3, 0, 2, 9, 3, 0, 0], None, [4, 3], 5)
    got = np.frombuffer(out, np.float32)
    grid = pattern[: 2 * 16 * width].astype(np.float32)
    if task == "sequence-classification":
        want = grid[: 2 * width]
    else:
        want = grid.reshape(2, 16, width)[:, :5].reshape(-1)
    np.testing.assert_array_equal(got, want)
    staged = engine._in.view  # ids [2, 16] at 0, types at 32, lengths at 64
    assert list(staged[64:66]) == [4, 3] and list(staged[16:21]) == [2, 9, 3, 0, 0]
    with pytest.raises(EngineError, match="token ids for"):
        engine.run([2, 5, 3], None, [3, 1], 3)
    with pytest.raises(EngineError, match="input_ids must be in"):
        engine.run([2, 500, 3], None, [3], 3)


@pytest.mark.parametrize(
    ("task", "pooling", "head"),
    [
        ("sequence-classification", "mean", 4),  # mean_pool, dense, norm, classifier
        ("sequence-classification", "cls", 3),  # dense on the strided [CLS] rows, norm, classifier
        ("token-classification", "cls", 3),
        ("embeddings", "cls", 0),
    ],
)
def test_modernbert_plan_on_the_engine(tmp_path: Path, task: str, pooling: str, head: int) -> None:
    """ModernBERT's launch plan (engine/cuda/modernbert_plan.py) runs through CudaEngine:
    rotary tables and the zero bias are uploaded once, one graph per bucket holds every
    launch, outputs come back in the reference's shapes. Numerics: the same plan runs in
    Triton's interpreter in test_kernels_interpret_engine.py; on a GPU in issue 23."""
    from fake_libcuda import write_fake_kernels
    from interpret_engine import tiny_modernbert
    from zerostart.engine.cuda import CudaEngine

    m, w = tiny_modernbert(task, pooling=pooling)
    write_fake_kernels(m, tmp_path)
    drv = RecordingDriver()
    weights = {k: v.astype(np.float16) for k, v in w.items()}
    engine = CudaEngine(m, weights, kernels_dir=tmp_path / "kernels", driver=drv)
    c = m.config
    half, max_t = c.hidden_size // c.num_heads // 2, engine._max_t
    tables = [n for kind, n in drv.copies if kind == "htod" and n == max_t * half * 4]
    assert len(tables) == 4  # cos and sin of the global and of the local theta
    ids = np.array([[2, 5, 7, 3, 9], [2, 9, 3, 0, 0]])
    out = engine.forward(ids, (ids != 0).astype(np.int64))
    want = {"sequence-classification": (2, 3), "token-classification": (2, 5, 3)}
    assert out.shape == want.get(task, (2, 5, c.hidden_size)) and out.dtype == np.float32
    # embedding norm; layer 0: 7 launches, later layers 8 (their attention norm); final norm
    assert drv.captured == [1 + 7 + 8 * (c.num_layers - 1) + 1 + head]
    assert engine._hidden == engine._mb.h  # embeddings: the final norm's output, not x


def test_modernbert_rope_tables_match_the_reference_within_an_ulp() -> None:
    """The engine's pure-Python tables (no numpy on the serving path) vs engine/modernbert_ref's."""
    from zerostart.engine import modernbert_ref
    from zerostart.engine.cuda.modernbert_plan import rope_tables

    for theta in (160_000.0, 10_000.0):
        cos, sin = rope_tables(theta, 64, 1024)
        ref_cos, ref_sin = modernbert_ref.rope_tables(theta, 64, 1024)
        for got, ref in ((cos, ref_cos), (sin, ref_sin)):
            diff = np.abs(np.frombuffer(got, np.float32).reshape(1024, 32) - ref)
            assert diff.max() <= 6e-8, diff.max()  # 1 ulp at 1.0


@pytest.mark.parametrize(("task", "head"), [("sequence-classification", 2), ("embeddings", 0)])
def test_deberta_plan_on_the_engine(tmp_path: Path, task: str, head: int) -> None:
    """DeBERTa on CudaEngine: BERT's layer with rel_proj + attention_rel in place of its
    attention (8 launches a layer), the embedding on a zero position table, the pooler with
    the model's own activation; W and lo per bucket from rel.index. Numerics: the same engine
    runs in Triton's interpreter in test_kernels_interpret_deberta.py."""
    from fake_libcuda import write_fake_kernels
    from interpret_engine import tiny_deberta
    from zerostart.engine.cuda import CudaEngine

    m, w = tiny_deberta(task)
    write_fake_kernels(m, tmp_path)
    drv = RecordingDriver()
    weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in w.items()}
    engine = CudaEngine(m, weights, kernels_dir=tmp_path / "kernels", driver=drv)
    ids = np.array([[2, 5, 7, 3, 9], [2, 9, 3, 0, 0]])
    out = engine.forward(ids, (ids != 0).astype(np.int64))
    assert out.shape == ((2, 3) if task == "sequence-classification" else (2, 5, 32))
    assert drv.captured == [1 + 8 * m.config.num_layers + head]
    plan = engine._plan(2, 16)
    rel = [s for s in plan if s.variant.op == "rel_proj"]
    # 16 tokens: distances up to 15 reach buckets 16 +- (8 + log buckets), not all 32 rows
    lo, width = rel[0].args["lo"], rel[0].args["W"]
    assert lo > 0 and lo + width < 2 * m.config.relative_span and width < 2 * 16
    pooler = [s for s in plan if s.variant.op == "gemm" and s.args["M"] == 2]
    assert all(s.variant.params["ACT"] == 1 for s in pooler[:1])  # GELU (ContextPooler)
    with pytest.raises(EngineError, match="int32"):
        bad = {**weights, "rel.index": weights["rel.index"].astype(np.float16)}
        CudaEngine(m, bad, kernels_dir=tmp_path / "kernels", driver=RecordingDriver())
