"""ModernBERT folders converted and run by the numpy reference and the native kernels.

The reference is transformers fp32 eager on the same ids; random weights from
configs built in the test (tests/modernbert_models.py). Every engine answers:
the numpy reference (``engine.modernbert_ref``), and the worker's numpy-free
engine (``engine.modernbert_native``) on each kernel build this CPU runs, with
one thread and with two (which splits the GeGLU product by columns below the
GEMM plan's ``col_split_rows`` and by rows above it). Lengths cross the
sliding window (8 tokens each side in the tiny models; the released 64 at
1,024 tokens).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine_reference import transformers_reference
from int8_compare import assert_int8_tracks_float32
from modernbert_models import SPECIAL_IDS, VOCAB, build, edit_config
from zerostart.bundle.folder import Bundle
from zerostart.engine.modernbert_native import ModernBertKernels, ModernBertNativeEngine
from zerostart.engine.modernbert_ref import ModernBertReference
from zerostart.engine.native import NativeKernels, addr, cpu_flags
from zerostart.errors import ConvertError
from zerostart.model.convert import convert

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
FIRST_ID = 3  # ids below are pad / cls / sep


class _Native:
    """``ModernBertNativeEngine.run`` behind ``forward``, shaped like the reference's."""

    def __init__(self, bundle: Bundle, kernels: NativeKernels, threads: int) -> None:
        self.task = bundle.manifest.task
        self.engine = ModernBertNativeEngine(
            bundle.manifest, bundle.weights, kernels, threads=threads
        )

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b, t = ids.shape
        lengths = [int(n) for n in mask.sum(axis=1)]
        out = np.frombuffer(self.engine.run(ids.reshape(-1).tolist(), None, lengths, t), np.float32)
        return (
            out.reshape(b, -1) if self.task == "sequence-classification" else out.reshape(b, t, -1)
        )


def _engines(dst: Path) -> list[tuple[str, Any]]:
    bundle = Bundle.open(dst, verify="full")
    engines: list[tuple[str, Any]] = [("reference", ModernBertReference.from_bundle(bundle))]
    flags = cpu_flags()
    for arch, build_ in bundle.manifest.cpu_kernels.items():
        if set(build_.features) <= flags:
            kernels = NativeKernels(dst / build_.file, arch)
            for threads in (1, 2):
                engines.append((f"{arch}/{threads}t", _Native(bundle, kernels, threads)))
    assert len(engines) >= 3, "no native kernel build runs on this CPU"
    return engines


def _batch(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), SPECIAL_IDS["pad_token_id"], np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(FIRST_ID, VOCAB, n)
        mask[i, :n] = 1
    return ids, mask


def _check(src: Path, dst: Path, lengths: list[int], archs: tuple[str, ...] = ()) -> None:
    manifest = convert(src, dst, cpu_archs=archs or ("x86-64", "x86-64-v3", "x86-64-v4"))
    ids, mask = _batch(lengths)
    want = transformers_reference(src, manifest.task, ids, mask, None)
    keep = mask.astype(bool)
    for name, engine in _engines(dst):
        got = engine.forward(ids, mask)
        got_k, want_k = (got, want) if manifest.task == "sequence-classification" else (
            got[keep], want[keep],
        )  # fmt: skip
        diff = float(np.abs(got_k - want_k).max())
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.2e}"
        if manifest.task != "embeddings":
            np.testing.assert_array_equal(got_k.argmax(-1), want_k.argmax(-1), err_msg=name)


@pytest.mark.parametrize(
    ("task", "pooling"),
    [
        ("embeddings", "cls"),
        ("sequence-classification", "cls"),
        ("sequence-classification", "mean"),
        ("token-classification", "cls"),
    ],
)
def test_modernbert_matches_transformers(tmp_path: Path, task: str, pooling: str) -> None:
    src = build(tmp_path / "src", task, classifier_pooling=pooling)
    _check(src, tmp_path / "bundle", [40, 13, 1, 35])


def test_other_activations(tmp_path: Path) -> None:
    """GeGLU on the tanh GELU, and a ReLU head: the activations convert accepts. Weights
    large enough (noise 0.2) that the GELU's input reaches where its two forms differ."""
    src = build(
        tmp_path / "src", "token-classification", hidden_activation="gelu_pytorch_tanh",
        classifier_activation="relu", noise=0.2,
    )  # fmt: skip
    _check(src, tmp_path / "bundle", [30, 11], archs=("x86-64", "x86-64-v3"))


@pytest.mark.parametrize("seq", [1, 127, 512, 1024])
def test_lengths_across_the_released_window(tmp_path: Path, seq: int) -> None:
    """The released models' window (128 tokens: 64 each side) at 1 .. 1,024 tokens."""
    src = build(tmp_path / "src", "token-classification", local_attention=128, labels=3)
    lengths = [seq] if seq == 1 else [seq, seq // 2, 1]
    _check(src, tmp_path / "bundle", lengths, archs=("x86-64-v3",))


def test_one_label_cross_encoder_and_the_hub_spelling(tmp_path: Path) -> None:
    """A one-label classifier (served on /rerank) whose config uses the released keys."""
    src = build(
        tmp_path / "src", "sequence-classification", labels=1, hub_spelling=True,
        classifier_pooling="mean", num_hidden_layers=7,
    )  # fmt: skip
    m = convert(src, tmp_path / "probe", cpu_archs=("none",))
    c = m.config
    assert (c.rope_theta, c.local_rope_theta, c.local_window, c.global_every) == (
        160000.0, 10000.0, 4, 3,
    )  # fmt: skip
    assert m.labels == ("L0",) and c.classifier_pooling == "mean"
    _check(src, tmp_path / "bundle", [30, 12, 2], archs=("x86-64-v3",))


def test_masked_lm_checkpoint_in_pytorch_bin_as_embeddings(tmp_path: Path) -> None:
    """ModernBERT-base's own layout: ModernBertForMaskedLM (``model.*``), here as a .bin."""
    src = build(tmp_path / "src", "embeddings", masked_lm=True, save_bin=True)
    assert (src / "pytorch_model.bin").is_file() and not (src / "model.safetensors").exists()
    with pytest.raises(ConvertError, match="cannot tell the task"):
        convert(src, tmp_path / "refused")
    manifest = convert(src, tmp_path / "bundle", task="embeddings", cpu_archs=("x86-64-v3",))
    assert manifest.source["weights_files"] == ["pytorch_model.bin"]
    ids, mask = _batch([25, 7])
    want = transformers_reference(src, "embeddings", ids, mask, None)
    for name, engine in _engines(tmp_path / "bundle"):
        got = engine.forward(ids, mask)
        keep = mask.astype(bool)
        assert float(np.abs(got[keep] - want[keep]).max()) <= TOLERANCE, name


@pytest.mark.parametrize(
    ("changes", "kwargs", "message", "hint"),
    [
        ({"attention_bias": True}, {}, "attention_bias=true is not supported", "what converts"),
        ({"norm_bias": True}, {}, "norm_bias=true is not supported", "what converts"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {}, "rotary scaling", "what converts"),
        (
            {"layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"]},
            {},
            "not every n-th layer",
            "what converts",
        ),
        ({}, {"device": "cuda"}, "CPU engines in float32 or int8", "--device cpu --precision float32 or int8"),
        ({}, {"precision": "bfloat16", "cpu_archs": ["x86-64-v4+avx512bf16"]}, "CPU engines in float32 or int8", "--device cpu"),
    ],
)  # fmt: skip
def test_unsupported_variants_are_refused_naming_what_works(
    tmp_path: Path, changes: dict[str, Any], kwargs: dict[str, Any], message: str, hint: str
) -> None:
    src = build(tmp_path / "src", "embeddings")
    edit_config(src, **changes)
    with pytest.raises(ConvertError, match=message) as err:
        convert(src, tmp_path / "bundle", **kwargs)
    assert hint in str(err.value.hint)


def test_unknown_classifier_pooling_is_refused(tmp_path: Path) -> None:
    src = build(tmp_path / "src", "sequence-classification")
    edit_config(src, classifier_pooling="max")
    with pytest.raises(
        ConvertError, match=r"classifier_pooling 'max' is not one of \('cls', 'mean'\)"
    ):
        convert(src, tmp_path / "bundle")


# -- the banded attention kernel on its own -----------------------------------------------


def _attention_inputs(t: int, heads: int, d: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((t, 3 * heads * d)).astype(np.float32)
    rope = np.zeros((t, d), np.float32)
    rope[:, : d // 2] = 1.0  # cos 1, sin 0: no rotation
    return qkv, rope, np.array([t], np.int64), np.zeros((t, heads * d), np.float32)


def _kernels() -> tuple[NativeKernels, ModernBertKernels]:
    from zerostart.kernels.cpu_build import build_library

    lib = build_library("x86-64-v3" if "avx2" in cpu_flags() else "x86-64")
    kernels = NativeKernels(lib, "probe")
    return kernels, ModernBertKernels(kernels)


def test_banded_attention_never_reads_values_outside_the_window() -> None:
    """NaN values far outside a query's band leave its context finite and exact."""
    _, mb = _kernels()
    t, heads, d, window = 512, 2, 16, 64
    qkv, rope, lengths, ctx = _attention_inputs(t, heads, d)
    qkv[400:, 2 * heads * d :] = np.nan  # values of keys 400.. (keys and queries stay finite)
    assert (
        mb.attention(addr(qkv), addr(rope), addr(lengths), addr(ctx), t, heads, d, window, 0, heads)
        == 0
    )
    q, k, v = (qkv[:, i * heads * d : (i + 1) * heads * d].reshape(t, heads, d) for i in range(3))
    far = 400 - window - 64  # rows whose tile's band (rounded to whole tiles) stops before 400
    assert np.isfinite(ctx[:far]).all()
    for hd in range(heads):
        s = q[:far, hd] @ k[:, hd].T
        pos = np.arange(t)
        s[np.abs(pos[:far, None] - pos[None, :]) > window] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        want = np.nan_to_num(p) @ np.nan_to_num(v[:, hd])
        np.testing.assert_allclose(ctx[:far, hd * d : (hd + 1) * d], want, atol=1e-5)


def test_banded_attention_costs_a_fraction_of_global() -> None:
    """At 2,048 tokens a 64-token window computes ~1/8 of the scores: CPU time shows it."""
    _, mb = _kernels()
    t, heads, d = 2048, 1, 64
    qkv, rope, lengths, ctx = _attention_inputs(t, heads, d)

    def cpu_seconds(window: int) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.thread_time()
            mb.attention(addr(qkv), addr(rope), addr(lengths), addr(ctx), t, heads, d, window, 0, 1)
            best = min(best, time.thread_time() - start)
        return best

    banded, full = cpu_seconds(64), cpu_seconds(-1)
    assert banded < 0.4 * full, f"banded {banded * 1e3:.1f} ms vs global {full * 1e3:.1f} ms"


def test_base_width_matches_transformers(tmp_path: Path) -> None:
    """ModernBERT-base's width (768, 12 heads of 64, GeGLU 1,152, the 128-token window) on
    three layers (global, local, local) and 260 tokens: the sizes the kernels tile for."""
    src = build(
        tmp_path / "src", "sequence-classification", hidden_size=768, num_attention_heads=12,
        intermediate_size=1152, num_hidden_layers=3, local_attention=128, labels=2,
        classifier_pooling="mean",
    )  # fmt: skip
    _check(src, tmp_path / "bundle", [260, 70], archs=("x86-64-v3",))


def test_pipeline_serves_both_engines(tmp_path: Path) -> None:
    """The worker's engine choice: native kernels when the bundle has them, else the reference."""
    from zerostart.pipeline import NumpyEngine, _make_engine

    src = build(tmp_path / "src", "token-classification", labels=3)
    convert(src, tmp_path / "native", cpu_archs=("x86-64",))
    convert(src, tmp_path / "numpy", cpu_archs=("none",))
    native = _make_engine(Bundle.open(tmp_path / "native"))
    reference = _make_engine(Bundle.open(tmp_path / "numpy"))
    assert isinstance(native, ModernBertNativeEngine)
    assert isinstance(reference, NumpyEngine)
    assert isinstance(reference.engine, ModernBertReference)
    ids, mask = _batch([20, 9])
    lengths = [20, 9]
    flat = ids.reshape(-1).tolist()
    types = [1] * len(flat)  # a template's segment ids: ModernBERT has no token types
    got = np.frombuffer(native.run(flat, types, lengths, 20), np.float32).reshape(2, 20, -1)
    ref = np.frombuffer(reference.run(flat, types, lengths, 20), np.float32).reshape(2, 20, -1)
    keep = mask.astype(bool)
    assert float(np.abs(got[keep] - ref[keep]).max()) <= 1e-5


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_int8_bundle_tracks_float32(tmp_path: Path, task: str) -> None:
    """int8 (the four matrices of each layer packed; the GeGLU product whole, then the
    GeGLU by rows) against the float32 bundle, past the sliding window, two threads.
    Measured on this tiny model: logits within 0.19 % (sequence) and 0.33 % (tokens),
    embeddings cosine 0.99999."""
    src = build(tmp_path / "src", task, hidden_size=64, intermediate_size=150)
    convert(src, tmp_path / "f32", cpu_archs=["x86-64-v3"])
    q8 = convert(src, tmp_path / "q8", precision="int8")
    if not any(set(b.features) <= cpu_flags() for b in q8.cpu_kernels.values()):
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: no int8 products")
    bundle = Bundle.open(tmp_path / "q8", verify="full")
    assert bundle.weights["layer.1.ffn.wi.weight"].dtype == np.int8
    assert "layer.1.ffn.wi.bias" not in bundle.weights  # ModernBERT has no biases
    rng = np.random.default_rng(5)
    ids = rng.integers(FIRST_ID, VOCAB, (3, 40))
    mask = np.ones_like(ids)
    mask[1, 25:] = 0
    mask[2, 1:] = 0
    assert_int8_tracks_float32(
        ModernBertNativeEngine.from_bundle(Bundle.open(tmp_path / "f32"), threads=2),
        ModernBertNativeEngine.from_bundle(bundle, threads=2),
        task,
        ids,
        mask,
    )
