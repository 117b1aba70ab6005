"""The native CPU kernels (kernels/cpu/zs_cpu.c) against numpy references, on odd shapes.

Every build this CPU can run is tested (the portable x86-64 build always, the
AVX2 and AVX-512 builds where the CPU has them), so CI exercises the fallback
path and the vectorised paths on whatever machine it has. Shapes: sequence
lengths 1, 3, 127, 512; batch 1 and 33; head sizes that are and are not a
multiple of the vector width; rows whose every key is padding. References are
computed in float64 from the textbook formulas (not from our numpy kernels).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from zerostart.engine.native import (
    ACT_GELU_ERF,
    ACT_GELU_TANH,
    ACT_NONE,
    ACT_RELU,
    NativeKernels,
    addr,
    cpu_flags,
)

cpu_build = pytest.importorskip("zerostart.kernels.cpu_build")
if shutil.which(cpu_build.CC) is None:
    pytest.skip(
        f"no C compiler ({cpu_build.CC}): the kernels are built at convert time",
        allow_module_level=True,
    )

SEQ_LENS = (1, 3, 127, 512)
BATCHES = (1, 33)
MASK_VALUE = float(np.finfo(np.float32).min)
TOL = 2e-5  # float32 kernels vs float64 reference, values of order 1-10


def _runnable_archs() -> list[str]:
    flags = cpu_flags()
    return [a for a in cpu_build.DEFAULT_ARCHS if set(cpu_build.arch_features(a)) <= flags]


@pytest.fixture(scope="module", params=_runnable_archs())
def kernels(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NativeKernels]:
    arch: str = request.param
    lib = cpu_build.build_library(arch, cache=tmp_path_factory.mktemp("cpu-kernels"))
    yield NativeKernels(lib, arch)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def test_portable_build_is_always_runnable() -> None:
    assert "x86-64" in _runnable_archs()
    assert cpu_build.arch_features("x86-64") == ()


@pytest.mark.parametrize("rows", [1, 3, 127])
@pytest.mark.parametrize("cols", [1, 7, 37, 1536])
@pytest.mark.parametrize("act", [ACT_NONE, ACT_GELU_ERF, ACT_GELU_TANH, ACT_RELU])
def test_bias_act(kernels: NativeKernels, rows: int, cols: int, act: int) -> None:
    rng = np.random.default_rng(rows * cols + act)
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    x[0, 0] = 12.0  # saturation of tanh / erf
    bias = rng.standard_normal(cols).astype(np.float32)
    y = x.astype(np.float64) + bias
    want = {
        ACT_NONE: y,
        ACT_GELU_ERF: 0.5 * y * (1 + _erf(y / math.sqrt(2))),
        ACT_GELU_TANH: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3))),
        ACT_RELU: np.maximum(y, 0),
    }[act]
    kernels.bias_act(addr(x), addr(bias), rows, cols, act)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=TOL)


@pytest.mark.parametrize("rows", [1, 3, 127, 512])
@pytest.mark.parametrize("cols", [1, 5, 32, 384, 768])
def test_bias_residual_layernorm(kernels: NativeKernels, rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows + cols)
    x, res = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    x[0] += 100.0  # a large mean: the two-pass variance must not cancel
    bias, g, b = (rng.standard_normal(cols).astype(np.float32) for _ in range(3))
    want = _layer_norm(x.astype(np.float64) + bias + res, g, b, 1e-12)
    kernels.bias_residual_layernorm(
        addr(x), addr(res), addr(bias), addr(g), addr(b), rows, cols, 1e-12
    )
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4 if cols == 1 else TOL * 10)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("seq", SEQ_LENS)
@pytest.mark.parametrize("with_types", [True, False])
def test_embed_layernorm(kernels: NativeKernels, batch: int, seq: int, with_types: bool) -> None:
    rng = np.random.default_rng(batch * seq)
    vocab, hidden = 97, 48
    word = rng.standard_normal((vocab, hidden)).astype(np.float32)
    pos = rng.standard_normal((512, hidden)).astype(np.float32)
    type_table = rng.standard_normal((2, hidden)).astype(np.float32)
    g, b = (rng.standard_normal(hidden).astype(np.float32) for _ in range(2))
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    types = rng.integers(0, 2, (batch, seq), dtype=np.int64)
    out = np.full((batch * seq, hidden), np.nan, np.float32)
    n = batch * seq
    t_p = addr(types) if with_types else None
    half = n // 2  # two calls on two row ranges, as the engine's threads make them
    for i, j in ((0, half), (half, n)):
        kernels.embed_layernorm(
            addr(out), addr(ids), t_p, addr(word), addr(pos), addr(type_table),
            addr(g), addr(b), i, j, seq, hidden, 1e-12,
        )  # fmt: skip
    x = word[ids].astype(np.float64) + pos[:seq] + type_table[types if with_types else 0]
    want = _layer_norm(x, g, b, 1e-12).reshape(n, hidden)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=TOL * 10)


def _attention_reference(
    qkv: np.ndarray, qkv_b: np.ndarray, mask: np.ndarray, heads: int
) -> np.ndarray:
    """softmax(q k^T + mask) v per (sequence, head), float64; q is already scaled."""
    b, t, three_h = qkv.shape
    h = three_h // 3
    d = h // heads
    out = np.empty((b, t, heads, d))
    for i in range(b):  # one sequence at a time: T=512 scores in float64 are 2 MB per head
        x = (qkv[i].astype(np.float64) + qkv_b).reshape(t, 3, heads, d)
        q, k, v = (x[:, j].transpose(1, 0, 2) for j in range(3))
        s = q @ k.transpose(0, 2, 1) + np.where(mask[i] != 0, 0.0, MASK_VALUE)
        s -= s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        out[i] = (p @ v).transpose(1, 0, 2)
    return out.reshape(b * t, h)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("seq", SEQ_LENS)
@pytest.mark.parametrize(("heads", "head_dim"), [(3, 8), (2, 24), (2, 32), (1, 64)])
def test_attention(kernels: NativeKernels, batch: int, seq: int, heads: int, head_dim: int) -> None:
    rng = np.random.default_rng(batch + seq + heads)
    h = heads * head_dim
    qkv = rng.standard_normal((batch, seq, 3 * h)).astype(np.float32)
    qkv_b = (rng.standard_normal(3 * h) * 0.1).astype(np.float32)
    mask = np.ones((batch, seq), np.int64)
    lengths = rng.integers(1, seq + 1, batch)
    for i, n in enumerate(lengths):
        mask[i, n:] = 0
    if batch > 1:
        mask[1] = 0  # a row whose every key is padding: uniform weights, like transformers
    bias = np.where(mask != 0, np.float32(0), np.float32(MASK_VALUE))
    ctx = np.full((batch * seq, h), np.nan, np.float32)
    items = batch * heads
    for i, j in ((0, items // 2), (items // 2, items)):
        rc = kernels.attention(
            addr(qkv), addr(qkv_b), addr(bias), addr(ctx), seq, heads, head_dim, i, j
        )
        assert rc == 0
    np.testing.assert_allclose(
        ctx, _attention_reference(qkv, qkv_b, mask, heads), rtol=1e-4, atol=TOL
    )
    # Without a mask (nothing padded) the kernel takes NULL.
    kernels.attention(addr(qkv), addr(qkv_b), None, addr(ctx), seq, heads, head_dim, 0, items)
    want = _attention_reference(qkv, qkv_b, np.ones_like(mask), heads)
    np.testing.assert_allclose(ctx, want, rtol=1e-4, atol=TOL)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("seq", SEQ_LENS)
def test_mean_pool(kernels: NativeKernels, batch: int, seq: int) -> None:
    rng = np.random.default_rng(batch * 7 + seq)
    hidden = 37
    x = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
    mask = (rng.random((batch, seq)) < 0.7).astype(np.int64)
    mask[0, 0] = 1
    if batch > 1:
        mask[-1] = 0  # all padding: zero vector (count clamped at 1e-9), like sentence-transformers
    out = np.full((batch, hidden), np.nan, np.float32)
    kernels.mean_pool(addr(x), addr(mask), addr(out), 0, batch, seq, hidden)
    w = mask[:, :, None].astype(np.float64)
    want = (x * w).sum(1) / np.maximum(w.sum(1), 1e-9)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=TOL)


def test_abi_mismatch_is_refused(tmp_path: Path) -> None:
    from zerostart.errors import EngineError

    bogus = tmp_path / "libzs_cpu.bogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(EngineError, match="cannot load CPU kernels"):
        NativeKernels(bogus, "bogus")
