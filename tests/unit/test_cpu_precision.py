"""int8 (AVX-512 VNNI, or AVX2) and bf16 (AVX-512 BF16) matrix products and bundles.

The products are checked against numpy on the same quantised / rounded
operands (so only the kernel's arithmetic is under test, exactly), on odd
shapes. Whole bundles are checked against the float32 bundle of the same
model: the accuracy a user trades for speed, stated as a bound here and
measured in docs/cpu.md. On a CPU without the instructions the tests of the
products skip, and the refusal is tested instead.
"""

from __future__ import annotations

import shutil
from array import array
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.folder import Bundle
from zerostart.bundle.layout import padded
from zerostart.engine.cpu import CpuEngine
from zerostart.engine.cpu_gemm import PackedMatrix
from zerostart.engine.cpu_native import NativeCpuEngine
from zerostart.engine.native import NativeKernels, cpu_flags
from zerostart.engine.parallel import Workers
from zerostart.errors import EngineError
from zerostart.model import quantize
from zerostart.model.convert import convert

cpu_build = pytest.importorskip("zerostart.kernels.cpu_build")
if shutil.which(cpu_build.CC) is None:
    pytest.skip("no C compiler", allow_module_level=True)

# The builds convert writes for each precision by default, each with the feature that
# gives it the products: int8 has two kernels (vpdpbusd; vpmaddwd on AVX2 without VNNI).
TARGETS = {"int8": ("x86-64-v4+avx512vnni", "x86-64-v3"), "bfloat16": ("x86-64-v4+avx512bf16",)}
FEATURE = {
    "x86-64-v4+avx512vnni": "avx512_vnni",
    "x86-64-v3": "avx2",
    "x86-64-v4+avx512bf16": "avx512_bf16",
}
# Bytes per quantised activation each int8 kernel reads (zs_int8_a_width).
A_WIDTH = {"x86-64-v4+avx512vnni": 1, "x86-64-v3": 2}
SHAPES = [(1, 384, 1152), (3, 37, 5), (127, 1536, 384), (33, 64, 64), (512, 32, 96)]


def _runs(target: str) -> bool:
    return set(cpu_build.arch_features(target)) <= cpu_flags()


def _has(precision: str) -> bool:
    return any(_runs(t) for t in TARGETS[precision])


@pytest.fixture(
    scope="module",
    params=[(p, t) for p, ts in TARGETS.items() for t in ts],
    ids=lambda pt: f"{pt[0]}-{pt[1]}",
)
def precision_kernels(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, NativeKernels]:
    precision, target = request.param
    if not _runs(target):
        pytest.skip(
            f"this CPU lacks {FEATURE[target]}: the {target} {precision} products cannot run"
        )
    lib = cpu_build.build_library(target, cache=tmp_path_factory.mktemp("k"))
    kernels = NativeKernels(lib, target)
    assert precision in kernels.precisions
    if precision == "int8":
        assert kernels.int8_a_width == A_WIDTH[target]
    return precision, kernels


def test_the_portable_build_has_no_reduced_precision(tmp_path: Path) -> None:
    kernels = NativeKernels(cpu_build.build_library("x86-64", cache=tmp_path), "x86-64")
    assert kernels.precisions == frozenset({"float32"})  # fp32 products only


def test_int8_packing_round_trips() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 70)).astype(np.float32)
    w[:, 3] = 0  # an all-zero column keeps scale 1, not 0/0
    packed, scale, colsum = quantize.quantize_int8(w)
    kp, n_pad = padded(37, 70, "int8")
    q = packed.transpose(1, 4, 0, 2, 3).reshape(kp, n_pad)  # back to [Kp, Np]
    assert np.abs(q).max() <= 127 and not q[37:].any() and not q[:, 70:].any()
    np.testing.assert_allclose(q[:37, :70] * scale[:70], w, atol=float(scale.max()) / 2 + 1e-7)
    np.testing.assert_array_equal(colsum[:70], q[:, :70].astype(np.int32).sum(0))


def test_bf16_rounding_is_nearest_even() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, np.inf], np.float32)
    back = quantize.bf16_to_float32(quantize.bf16_bits(x))
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even wins (1); 1 + 3*2^-8 rounds up.
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.015625, -2.5])
    assert (
        np.isinf(back[5])
        and np.isnan(quantize.bf16_to_float32(quantize.bf16_bits(np.array([np.nan], np.float32))))[
            0
        ]
    )


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_reduced_precision_product(
    precision_kernels: tuple[str, NativeKernels], m: int, k: int, n: int
) -> None:
    precision, kernels = precision_kernels
    rng = np.random.default_rng(m + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 0] = 9.0  # an outlier sets the row's scale
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    if precision == "int8":
        packed, scale, colsum = quantize.quantize_int8(w)
        mat = PackedMatrix("int8", packed, scale, colsum, k, n)
        qw = (
            packed.transpose(1, 4, 0, 2, 3).reshape(padded(k, n, "int8"))[:k, :n].astype(np.float64)
        )
        hi, lo = np.maximum(x.max(1, keepdims=True), 0), np.minimum(x.min(1, keepdims=True), 0)
        sx = ((hi - lo) / np.float32(255)).astype(np.float32)
        zp = np.clip(np.rint(-lo * (np.float32(1) / sx)), 0, 255)
        # the kernel rounds half to even too (vcvtps2dq), on x * (1 / scale) in float32
        qx = np.clip(np.rint(x * (np.float32(1) / sx)) + zp, 0, 255)
        want = ((qx - zp) @ qw) * sx * scale[:n]
        tol = 1e-4 * np.abs(want).max()
    else:
        mat = PackedMatrix("bfloat16", quantize.quantize_bf16(w), None, None, k, n)
        bx = quantize.bf16_to_float32(quantize.bf16_bits(x)).astype(np.float64)
        bw = quantize.bf16_to_float32(quantize.bf16_bits(w)).astype(np.float64)
        want = bx @ bw
        tol = 1e-5 * np.sqrt(k)  # float32 accumulation order only
    for threads in (1, 3):  # row ranges split over threads, as the engine does
        got = mat.matmul(np.ascontiguousarray(x), kernels, Workers(threads))
        assert got.shape == (m, n) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


# Bounds on the whole model against its float32 bundle (MiniLM-SST2 logits,
# MiniLM embeddings); measured values are in docs/cpu.md.
MODEL_BOUNDS = {"int8": 1.0, "bfloat16": 0.1}


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_reduced_precision_bundle_tracks_float32(
    minilm_sst2_dir: Path, tmp_path: Path, precision: str
) -> None:
    if not _has(precision):
        pytest.skip(f"this CPU lacks {' and '.join(FEATURE[t] for t in TARGETS[precision])}")
    m32 = convert(minilm_sst2_dir, tmp_path / "f32", cpu_archs=["x86-64"])
    mq = convert(minilm_sst2_dir, tmp_path / "q", precision=precision)
    assert mq.dtype == precision and set(mq.cpu_kernels) == set(TARGETS[precision])
    size32 = m32.files["weights.safetensors"].size
    # The encoder's matrices shrink 4x / 2x; the word embeddings (half of MiniLM) stay float32.
    assert mq.files["weights.safetensors"].size < size32 * (0.7 if precision == "int8" else 0.8)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (4, 40))
    mask = np.ones_like(ids)
    mask[1, 20:] = 0
    ref = CpuEngine.from_bundle(Bundle.open(tmp_path / "f32")).forward(ids, mask)
    got = CpuEngine.from_bundle(Bundle.open(tmp_path / "q", verify="full")).forward(ids, mask)
    assert float(np.abs(got - ref).max()) <= MODEL_BOUNDS[precision]
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
    # The worker's engine (numpy-free, the same kernels through its own scratch buffers).
    native = NativeCpuEngine.from_bundle(Bundle.open(tmp_path / "q"))
    lengths = [int(v) for v in mask.sum(1)]
    out = native.run(array("q", ids.reshape(-1).tolist()), None, lengths, ids.shape[1])
    np.testing.assert_allclose(np.frombuffer(out, np.float32).reshape(got.shape), got, atol=1e-4)


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_reduced_precision_bundle_on_a_cpu_without_it_is_refused(
    minilm_sst2_dir: Path, tmp_path: Path, precision: str
) -> None:
    convert(minilm_sst2_dir, tmp_path / "q", precision=precision)
    bundle = Bundle.open(tmp_path / "q")
    from zerostart.engine.native import choose_build

    # A CPU that has every feature of the builds but the ones that give the products: with
    # int8, neither VNNI nor AVX2 (a v3 CPU without AVX2 is made up, but it is what the
    # portable targets are: no build of the bundle may be taken for them).
    builds = bundle.manifest.cpu_kernels
    lacking = {FEATURE[t] for t in TARGETS[precision]}
    without = frozenset().union(*(b.features for b in builds.values())) - lacking
    with pytest.raises(EngineError, match=f"needs {'.*'.join(sorted(lacking))}"):
        choose_build(builds, without)
    # A CPU with a build's features takes that build (the VNNI one where both run).
    for target in TARGETS[precision]:
        assert choose_build(builds, without | frozenset(builds[target].features)) == target
    if not _has(precision):  # and for real, where this CPU lacks it
        with pytest.raises(EngineError, match=FEATURE[TARGETS[precision][-1]]):
            CpuEngine.from_bundle(bundle)
    # int8 matrices without kernels that multiply them: refused, not garbage.
    with pytest.raises(EngineError, match="need native kernels"):
        CpuEngine(bundle.manifest, bundle.weights)
