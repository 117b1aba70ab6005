"""RoBERTa, XLM-RoBERTa and CamemBERT folders converted and run by the BERT engines.

These are post-LN BERTs whose positions start at ``padding_idx + 1`` (a 514-row
table for 512 tokens), with one token type, LayerNorm eps 1e-5 and, for
sequence classification, RobertaClassificationHead (dense + tanh on ``<s>``,
then ``out_proj``: BERT's pooler and classifier under other names). Random
weights from configs built by transformers in the test; the reference is
transformers fp32 eager on the same ids (tokenizers are tested on their own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine_reference import auto_class, transformers_reference
from zerostart.bundle.folder import Bundle
from zerostart.engine.cpu import CpuEngine
from zerostart.engine.cpu_native import NativeCpuEngine
from zerostart.engine.native import NativeKernels, cpu_flags
from zerostart.errors import ConvertError
from zerostart.model.convert import convert

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
VOCAB = 99
PAD = 1  # RoBERTa's <pad>


def _tiny(tmp: Path, model_type: str, task: str, *, positions: int = 42) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    labels = {} if task == "embeddings" else {"id2label": {i: f"L{i}" for i in range(5)}}
    config_class = {
        "roberta": transformers.RobertaConfig,
        "xlm-roberta": transformers.XLMRobertaConfig,
        "camembert": transformers.CamembertConfig,
    }[model_type]
    cfg = config_class(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=positions, type_vocab_size=1,
        pad_token_id=PAD, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, **labels,
    )  # fmt: skip
    model = auto_class(task).from_config(cfg).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0 and biases at 0: perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp / f"{model_type}-{task}"
    model.save_pretrained(out)
    (out / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(VOCAB)))
    return out


def _batch(seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [seq, max(1, seq // 3), 1, max(1, seq - 5)]
    ids = np.full((len(lengths), seq), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(PAD + 1, VOCAB, n)  # no literal <pad> inside a text
        mask[i, :n] = 1
    return ids, mask


class _Serving:
    """``NativeCpuEngine.run`` behind ``forward``, shaped like ``CpuEngine.forward``."""

    def __init__(self, m: Any, bundle: Bundle, kernels: NativeKernels) -> None:
        self.task = m.task
        self.engine = NativeCpuEngine(m, bundle.weights, kernels)

    def forward(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        b, t = ids.shape
        lengths = [int(n) for n in mask.sum(axis=1)]
        out = self.engine.run(ids.reshape(-1).tolist(), types.reshape(-1).tolist(), lengths, t)
        flat = np.frombuffer(out, np.float32)
        return (
            flat.reshape(b, -1)
            if self.task == "sequence-classification"
            else flat.reshape(b, t, -1)
        )


def _check(src: Path, dst: Path, ids: np.ndarray, mask: np.ndarray) -> None:
    convert(src, dst)
    bundle = Bundle.open(dst, verify="full")
    m = bundle.manifest
    want = transformers_reference(src, m.task, ids, mask, None)
    engines = [CpuEngine(m, bundle.weights)]
    flags = cpu_flags()
    for arch, build in m.cpu_kernels.items():
        if set(build.features) <= flags:
            kernels = NativeKernels(dst / build.file, arch)
            engines.append(CpuEngine(m, bundle.weights, kernels=kernels))
            engines.append(_Serving(m, bundle, kernels))  # the worker's numpy-free engine
    keep = mask.astype(bool)
    for engine in engines:
        got = engine.forward(ids, mask, np.zeros_like(ids))
        if m.task != "sequence-classification":
            got_k, want_k = got[keep], want[keep]
        else:
            got_k, want_k = got, want
        diff = float(np.abs(got_k - want_k).max())
        assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"
        if m.task != "embeddings":
            np.testing.assert_array_equal(got_k.argmax(-1), want_k.argmax(-1))


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert"])
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_roberta_family_matches_transformers(tmp_path: Path, model_type: str, task: str) -> None:
    src = _tiny(tmp_path, model_type, task)
    _check(src, tmp_path / "bundle", *_batch(40))


def test_every_position_of_the_table_is_used_in_transformers_order(tmp_path: Path) -> None:
    """A sequence as long as the model allows reads the table's last row (514 -> 512 rule)."""
    src = _tiny(tmp_path, "xlm-roberta", "embeddings", positions=42)
    m = convert(src, tmp_path / "bundle")
    assert m.config.max_position_embeddings == 40  # 42 rows minus padding_idx + 1
    assert m.max_length == 40
    assert m.source["model_type"] == "xlm-roberta"
    _check(src, tmp_path / "bundle2", *_batch(40, seed=3))


def test_unsupported_families_name_the_plan(tmp_path: Path) -> None:
    src = _tiny(tmp_path, "roberta", "embeddings")
    cfg = (
        (src / "config.json")
        .read_text()
        .replace('"model_type": "roberta"', '"model_type": "nomic_bert"')
    )
    (src / "config.json").write_text(cfg)
    with pytest.raises(ConvertError, match=r"nomic_bert.*not supported yet") as err:
        convert(src, tmp_path / "bundle")
    assert "docs/models.md" in str(err.value.hint)
