"""The slot health check's canary: its known answer is right, and a fault changes it.

KNOWN_LOGITS is a constant in the source; here it is checked against Hugging
Face transformers on the same weights (un-fused back into transformers'
layout), and a single corrupted weight byte on disk, which the bundle's fast
verification does not see, is shown to fail the check.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.manifest import Manifest
from zerostart.bundle.weights import map_weights
from zerostart.engine.canary import (
    CANARY_INPUTS,
    CANARY_VOCAB,
    KNOWN_ANSWER_ATOL,
    KNOWN_LOGITS,
    canary_manifest,
    check_logits,
)
from zerostart.errors import ConvertError, EngineError
from zerostart.model.canary import canary_tensors, write_canary
from zerostart.pipeline import Pipeline
from zerostart.tokenize import WordPieceTokenizer


def _logits(bundle: Path) -> np.ndarray:
    pipe = Pipeline.load(bundle, verify="fast")
    enc = pipe.tokenizer.encode_batch(list(CANARY_INPUTS), max_length=pipe.manifest.max_length)
    return np.stack(pipe.execute(enc))


def test_engine_reproduces_the_known_answer(tmp_path: Path) -> None:
    logits = _logits(write_canary(tmp_path / "canary"))
    check_logits(logits)
    assert np.abs(logits - np.asarray(KNOWN_LOGITS)).max() < 1e-5
    # the two inputs get different answers: the canary's output depends on its input
    assert np.abs(logits[0] - logits[1]).max() > 100 * KNOWN_ANSWER_ATOL


def test_canary_runs_on_the_native_kernels_and_the_numpy_engine_alike(tmp_path: Path) -> None:
    native = write_canary(tmp_path / "native")
    assert Manifest.load(native).cpu_kernels  # the build this CPU runs best
    assert type(Pipeline.load(native).engine).__name__ == "NativeCpuEngine"
    plain = write_canary(tmp_path / "plain", cpu_archs=())
    assert not Manifest.load(plain).cpu_kernels
    assert type(Pipeline.load(plain).engine).__name__ == "NumpyEngine"
    check_logits(_logits(plain))
    assert np.abs(_logits(native) - _logits(plain)).max() < 1e-5


def test_without_a_compiler_the_canary_falls_back_to_the_numpy_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from zerostart.kernels import cpu_build

    monkeypatch.setattr(cpu_build, "CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("ZEROSTART_CACHE", str(tmp_path / "cache"))  # nothing built before
    bundle = write_canary(tmp_path / "canary")
    assert not Manifest.load(bundle).cpu_kernels
    assert "install gcc" in caplog.text
    check_logits(_logits(bundle))
    with pytest.raises(ConvertError, match="not found"):  # named targets are not optional
        write_canary(tmp_path / "named", cpu_archs=["x86-64"])


def test_canary_is_deterministic(tmp_path: Path) -> None:
    a, b = write_canary(tmp_path / "a"), write_canary(tmp_path / "b")
    for name in ("weights.safetensors", "vocab.txt", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_a_flipped_weight_byte_fails_the_check(tmp_path: Path) -> None:
    bundle = write_canary(tmp_path / "canary")
    weights = map_weights(bundle / "weights.safetensors")
    name = "layer.1.ffn.down.weight"
    assert weights.buffer is not None
    base = np.frombuffer(weights.buffer, np.uint8).ctypes.data
    offset = weights[name].ctypes.data - base + 4 * 7 + 3  # sign byte of element 7
    del weights
    raw = bytearray((bundle / "weights.safetensors").read_bytes())
    raw[offset] ^= 0x80
    (bundle / "weights.safetensors").write_bytes(bytes(raw))
    logits = _logits(bundle)  # verify="fast" hashes the header, not the tensor data
    with pytest.raises(EngineError, match="wrong answer"):
        check_logits(logits)


def test_nan_and_wrong_shape_fail() -> None:
    bad = np.array(KNOWN_LOGITS)
    bad[1, 2] = np.nan
    with pytest.raises(EngineError, match="wrong answer"):
        check_logits(bad)
    with pytest.raises(EngineError, match="shape"):
        check_logits(np.zeros((1, 3)))
    with pytest.raises(EngineError, match="shape"):
        check_logits([[1.0, 2.0, 3.0], [1.0, 2.0]])
    check_logits([list(row) for row in KNOWN_LOGITS])  # plain rows, as the slot passes them


@pytest.mark.parity
def test_known_answer_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = canary_manifest()
    c = m.config
    t = {k: v.astype(np.float64) for k, v in canary_tensors(m).items()}
    h = c.hidden_size
    scale = 1.0 / math.sqrt(h // c.num_heads)  # the engine layout pre-scales the query
    sd: dict[str, np.ndarray] = {
        "bert.embeddings.word_embeddings.weight": t["embed.word"],
        "bert.embeddings.position_embeddings.weight": t["embed.position"],
        "bert.embeddings.token_type_embeddings.weight": t["embed.token_type"],
        "bert.embeddings.LayerNorm.weight": t["embed.norm.weight"],
        "bert.embeddings.LayerNorm.bias": t["embed.norm.bias"],
        "bert.pooler.dense.weight": t["head.pooler.weight"].T,
        "bert.pooler.dense.bias": t["head.pooler.bias"],
        "classifier.weight": t["head.classifier.weight"].T,
        "classifier.bias": t["head.classifier.bias"],
    }
    for i in range(c.num_layers):
        p, s = f"layer.{i}.", f"bert.encoder.layer.{i}."
        w, b = t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"]
        for j, part in enumerate(("query", "key", "value")):
            f = 1 / scale if part == "query" else 1.0
            sd[s + f"attention.self.{part}.weight"] = w[:, j * h : (j + 1) * h].T * f
            sd[s + f"attention.self.{part}.bias"] = b[j * h : (j + 1) * h] * f
        sd[s + "attention.output.dense.weight"] = t[p + "attn.out.weight"].T
        sd[s + "attention.output.dense.bias"] = t[p + "attn.out.bias"]
        sd[s + "attention.output.LayerNorm.weight"] = t[p + "attn.norm.weight"]
        sd[s + "attention.output.LayerNorm.bias"] = t[p + "attn.norm.bias"]
        sd[s + "intermediate.dense.weight"] = t[p + "ffn.up.weight"].T
        sd[s + "intermediate.dense.bias"] = t[p + "ffn.up.bias"]
        sd[s + "output.dense.weight"] = t[p + "ffn.down.weight"].T
        sd[s + "output.dense.bias"] = t[p + "ffn.down.bias"]
        sd[s + "output.LayerNorm.weight"] = t[p + "ffn.norm.weight"]
        sd[s + "output.LayerNorm.bias"] = t[p + "ffn.norm.bias"]
    config = transformers.BertConfig(
        vocab_size=c.vocab_size,
        hidden_size=h,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act=c.hidden_act,
        num_labels=len(m.labels),
        attn_implementation="eager",
    )
    model = transformers.BertForSequenceClassification(config).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)

    # The inputs as our tokenizer encodes them (its parity with `tokenizers` is tested elsewhere).
    tok = WordPieceTokenizer(list(CANARY_VOCAB), m.tokenizer, source="canary")
    enc = tok.encode_batch(list(CANARY_INPUTS), max_length=m.max_length)
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = e.ids, 1, e.type_ids
    with torch.inference_mode():
        want = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).logits.numpy()
    diff = np.abs(want - np.asarray(KNOWN_LOGITS)).max()
    assert diff < 1e-5, f"KNOWN_LOGITS is off from transformers by {diff}"
