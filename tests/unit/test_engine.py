"""The CPU engine without a reference library: kernels against float64 math, input
checking, and properties of the forward pass (padding must not change an answer).

Parity with transformers is in test_engine_parity.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zerostart
from tiny_models import tiny_manifest
from zerostart.bundle.layout import tensor_shapes
from zerostart.bundle.manifest import Manifest
from zerostart.engine import ops
from zerostart.engine.cpu import MASK_VALUE, CpuEngine
from zerostart.errors import EngineError

_erf64 = np.vectorize(math.erf)


def test_erf_matches_math_erf() -> None:
    x = np.concatenate([np.linspace(-7, 7, 200_001), [0.0, -0.0, 1e-30, 3.9, 4.0, 50.0, -50.0]])
    got = ops.erf(x.astype(np.float32))
    want = _erf64(x.astype(np.float32).astype(np.float64))
    assert got.dtype == np.float32
    err = np.abs(got - want)
    # The rational approximation itself is within 6.5e-8; evaluating it in float32
    # without FMA adds rounding, worst (~7 ulps of 1.0) near |x| = 3.3.
    assert err.max() <= 5e-7
    assert err[np.abs(x) < 1].max() <= 2e-7
    np.testing.assert_array_equal(ops.erf(np.array([np.inf, -np.inf], np.float32)), [1.0, -1.0])
    assert np.isnan(ops.erf(np.array([np.nan], np.float32)))[0]


def test_gelu_variants_match_float64_formulas() -> None:
    x64 = np.linspace(-12, 12, 100_003)
    x = x64.astype(np.float32)
    xr = x.astype(np.float64)
    exact = 0.5 * xr * (1 + _erf64(xr / math.sqrt(2)))
    tanh = 0.5 * xr * (1 + np.tanh(math.sqrt(2 / math.pi) * (xr + 0.044715 * xr**3)))
    for fn, want in ((ops.gelu_erf_, exact), (ops.gelu_tanh_, tanh)):
        y = x.copy()
        fn(y)
        assert np.all(np.abs(y - want) <= 1e-6 * np.maximum(1.0, np.abs(xr))), fn.__name__
    assert np.abs(exact - tanh).max() > 1e-4  # the two really differ: choosing matters


def test_layer_norm_and_softmax_match_float64() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 96)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(96).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    xr = x.astype(np.float64)
    want = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + 1e-12) * w + b
    y = x.copy()
    ops.layer_norm_(y, w, b, 1e-12)
    np.testing.assert_allclose(y, want, atol=2e-5)

    s = (rng.standard_normal((4, 3, 10)) * 5).astype(np.float32)
    s[..., 7:] += MASK_VALUE  # masked keys, the way the engine masks padding
    sr = s.astype(np.float64)
    e = np.exp(sr - sr.max(-1, keepdims=True))
    ops.softmax_(s)
    np.testing.assert_allclose(s, e / e.sum(-1, keepdims=True), atol=1e-7)
    assert np.all(s[..., 7:] == 0)


# -- a small random model, built directly in the engine layout -------------------------


def _manifest(arch: str, task: str, *, act: str = "gelu", dtype: str = "float32") -> Manifest:
    return tiny_manifest(
        arch, task, hidden=24, layers=2, heads=3, ffn=40, max_positions=16, act=act, dtype=dtype
    )


def _weights(m: Manifest) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    out = {}
    for name, shape in tensor_shapes(m).items():
        arr = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if name.endswith("norm.weight"):
            arr += 1
        arr.flags.writeable = False  # like the mmap: the engine must never write weights
        out[name] = arr
    return out


def _batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    lengths = [9, 4, 1, 12]
    ids = np.zeros((4, 12), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, 50, n)
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1
    return ids, mask, types


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_outputs_do_not_depend_on_padding_or_batch_mates(arch: str, task: str, act: str) -> None:
    m = _manifest(arch, task, act=act)
    engine = CpuEngine(m, _weights(m))
    ids, mask, types = _batch()
    tt = types if arch == "bert" else None
    out = engine.forward(ids, mask, tt)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    expected_shape = {"sequence-classification": (4, 3), "token-classification": (4, 12, 3)}
    assert out.shape == expected_shape.get(task, (4, 12, 24))
    for i in range(4):
        n = int(mask[i].sum())
        alone = engine.forward(
            ids[i : i + 1, :n], mask[i : i + 1, :n], None if tt is None else tt[i : i + 1, :n]
        )
        got = out[i] if task == "sequence-classification" else out[i, :n]
        np.testing.assert_allclose(got, alone[0], atol=1e-5)


def test_token_types_change_bert_outputs_and_default_to_zero() -> None:
    m = _manifest("bert", "embeddings")
    engine = CpuEngine(m, _weights(m))
    ids, mask, types = _batch()
    with_types = engine.forward(ids, mask, types)
    assert not np.allclose(with_types, engine.forward(ids, mask))
    np.testing.assert_array_equal(
        engine.forward(ids, mask), engine.forward(ids, mask, np.zeros_like(ids))
    )


def test_engine_refuses_wrong_weights() -> None:
    m = _manifest("bert", "token-classification")
    w = _weights(m)
    with pytest.raises(EngineError, match="computes in float32"):
        CpuEngine(_manifest("bert", "token-classification", dtype="float16"), w)
    missing = dict(w)
    del missing["layer.1.ffn.up.bias"]
    with pytest.raises(EngineError, match=re.escape("no tensor 'layer.1.ffn.up.bias'")):
        CpuEngine(m, missing)
    wrong = dict(w, **{"head.classifier.weight": np.zeros((24, 4), np.float32)})
    with pytest.raises(EngineError, match=r"expected float32\[24, 3\]"):
        CpuEngine(m, wrong)
    half = dict(w, **{"embed.word": w["embed.word"].astype(np.float16)})
    with pytest.raises(EngineError, match=re.escape("'embed.word' is float16")):
        CpuEngine(m, half)


def test_engine_refuses_bad_inputs() -> None:
    m = _manifest("distilbert", "sequence-classification")
    engine = CpuEngine(m, _weights(m))
    ids, mask, types = _batch()
    cases = [
        ((ids[0], mask[0], None), "must be \\[batch, seq\\]"),
        ((ids, mask[:, :5], None), "attention_mask shape"),
        ((ids.astype(np.float32), mask, None), "integer"),
        ((ids + 50, mask, None), "input_ids must be in"),
        (
            (np.ones((1, 17), np.int64), np.ones((1, 17), np.int64), None),
            "exceeds the model's positions \\(16\\)",
        ),
        ((ids, mask, types), "no token type embeddings"),
    ]
    for args, message in cases:
        with pytest.raises(EngineError, match=message):
            engine.forward(*args)
    engine.forward(ids, mask, np.zeros_like(ids))  # all-zero token types are harmless


def test_runtime_modules_import_only_stdlib_and_numpy() -> None:
    code = (
        "import sys; import zerostart.engine.cpu, zerostart.bundle.folder; "
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(zerostart.__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.replace("'", '"')))
    for heavy in (
        "torch",
        "transformers",
        "safetensors",
        "tokenizers",
        "onnx",
        "onnxruntime",
        "scipy",
    ):
        assert heavy not in loaded
    assert "numpy" in loaded


@pytest.mark.parametrize("task", ["sequence-classification", "embeddings"])
def test_threads_split_the_work_without_changing_a_bit(task: str) -> None:
    m = _manifest("bert", task)
    w = _weights(m)
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 50, (16, 16))  # 256 rows: elementwise work splits too
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    single = CpuEngine(m, w).forward(ids, mask)
    for threads in (2, 3):
        np.testing.assert_array_equal(CpuEngine(m, w, threads=threads).forward(ids, mask), single)
