"""CpuEngine and NativeCpuEngine against Hugging Face transformers (torch fp32, eager attention).

Every model is converted with ``zerostart convert`` and run on the same padded
batch (different lengths; sentence pairs with token types for BERT). Logits or
hidden states must agree within 1e-4 at every non-padding position, and the
predicted class must be identical, for the numpy kernels and for every native
kernel build in the bundle that this CPU can run (the portable x86-64 one
always; AVX2 and AVX-512 where present), through the numpy engine's native
path and through the serving path's numpy-free NativeCpuEngine. Real folders come from
tests/conftest.py; tiny random models cover every architecture x task x
activation cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine_reference import auto_class, encode_padded, transformers_reference
from zerostart.bundle.folder import Bundle
from zerostart.engine.cpu import CpuEngine
from zerostart.engine.cpu_native import NativeCpuEngine
from zerostart.engine.native import NativeKernels, cpu_flags
from zerostart.model.convert import convert

pytestmark = pytest.mark.parity

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOLERANCE = 1e-4
SENTENCES = [
    (
        "My name is Sarah Johnson and I live at 42 Baker Street, Springfield.",
        "Call me at 555-1234.",
    ),
    ("Their was to much traffic in Paris yesterday, which were annoying.", "Yes."),
    ("ok", "Email john.doe@example.com before Friday, or don't."),
    ("The quick brown fox jumps over the lazy dog again and again and again.", "Nothing here."),
]


def _assert_parity(got: np.ndarray, want: np.ndarray, mask: np.ndarray, task: str) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    if task != "sequence-classification":
        keep = mask.astype(bool)
        got, want = got[keep], want[keep]
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"
    if task != "embeddings":
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def _check(
    src: Path, dst: Path, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
) -> None:
    convert(src, dst)
    bundle = Bundle.open(dst, verify="full")
    m = bundle.manifest
    if m.architecture != "bert":
        types = None
    want = transformers_reference(src, m.task, ids, mask, types)
    _assert_parity(CpuEngine(m, bundle.weights).forward(ids, mask, types), want, mask, m.task)
    flags = cpu_flags()
    runnable = [a for a, b in m.cpu_kernels.items() if set(b.features) <= flags]
    assert "x86-64" in runnable  # the portable build is in every default bundle and runs anywhere
    for arch in runnable:
        kernels = NativeKernels(dst / m.cpu_kernels[arch].file, arch)
        got = CpuEngine(m, bundle.weights, kernels=kernels).forward(ids, mask, types)
        _assert_parity(got, want, mask, m.task)
        _assert_parity(_native(m, bundle, kernels, ids, mask, types), want, mask, m.task)


def _native(
    m: object,
    bundle: Bundle,
    kernels: NativeKernels,
    ids: np.ndarray,
    mask: np.ndarray,
    types: np.ndarray | None,
) -> np.ndarray:
    """NativeCpuEngine.run on the same batch, reshaped like CpuEngine.forward's output."""
    engine = NativeCpuEngine(bundle.manifest, bundle.weights, kernels)
    lengths = [int(n) for n in mask.sum(axis=1)]
    flat_types = None if types is None else types.reshape(-1).tolist()
    out = np.frombuffer(
        engine.run(ids.reshape(-1).tolist(), flat_types, lengths, ids.shape[1]), np.float32
    )
    b, t = ids.shape
    if bundle.manifest.task == "sequence-classification":
        return out.reshape(b, -1)
    return out.reshape(b, t, -1)


@pytest.mark.parametrize(
    "fixture",
    [
        "minilm_embed_dir",
        "minilm_sst2_dir",
        "minilm_multilabel_dir",
        "minilm_sst2_bin_dir",
        "rampart_ner_dir",
        "quire_tagger_dir",
        "quire_cls_dir",
    ],
)
def test_real_models_match_transformers(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(fixture)
    ids, mask, types = encode_padded(src, SENTENCES, pairs=True)
    assert len({int(r.sum()) for r in mask}) > 1  # really padded
    _check(src, tmp_path / "bundle", ids, mask, types if types.any() else None)


# -- tiny random models ------------------------------------------------------------


def _tiny(tmp: Path, arch: str, task: str, act: str, *, safetensors: bool = True) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    labels = {} if task == "embeddings" else {"id2label": {i: f"L{i}" for i in range(5)}}
    if arch == "bert":
        cfg = transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=40, hidden_act=act, **labels,
        )  # fmt: skip
    else:
        cfg = transformers.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
            max_position_embeddings=40, activation=act, **labels,
        )  # fmt: skip
    model = auto_class(task).from_config(cfg).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0 and biases at 0: perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp / f"{arch}-{task}-{act}"
    model.save_pretrained(out)
    if not safetensors:  # what older transformers wrote: torch.save of the state dict
        torch.save(model.state_dict(), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    (out / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(99)))
    return out


def _random_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [23, 7, 1, 16, 40]
    ids, mask, types = (np.zeros((5, 40), np.int64) for _ in range(3))
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, 99, n)
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1
    return ids, mask, types


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_tiny_random_models_match_transformers(tmp_path: Path, arch: str, task: str) -> None:
    src = _tiny(tmp_path, arch, task, "gelu")
    _check(src, tmp_path / "bundle", *_random_batch())


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_tiny_random_activations_match_transformers(tmp_path: Path, act: str) -> None:
    src = _tiny(tmp_path, "bert", "token-classification", act)
    _check(src, tmp_path / "bundle", *_random_batch(1))


def test_tiny_random_pytorch_bin_matches_transformers(tmp_path: Path) -> None:
    src = _tiny(tmp_path, "distilbert", "sequence-classification", "gelu", safetensors=False)
    assert (src / "pytorch_model.bin").is_file()
    _check(src, tmp_path / "bundle", *_random_batch(2))
