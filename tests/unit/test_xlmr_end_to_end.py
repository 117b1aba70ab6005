"""An XLM-RoBERTa classifier with the real XLM-R tokenizer: text in, scores out, as transformers.

The encoder is tiny with random weights (transformers builds it from a config;
the RoBERTa family's numerics are tests/unit/test_roberta_family.py's
subject), the tokenizer files are multilingual-e5-small's real XLM-R ones
(250,002 pieces). The reference tokenises with `tokenizers` on the same
tokenizer.json (as TEI does) and runs transformers fp32; ours converts the
folder and answers ``/predict`` from raw text. Padding matters here: XLM-R
counts positions from ``<pad>`` + 1, so a batch mixes lengths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.model.convert import convert
from zerostart.pipeline import Pipeline

pytestmark = pytest.mark.parity

SCORE_TOLERANCE = 1e-4
TEXTS = [
    "Paris is the capital of France.",
    "Москва — столица России, 東京は日本の首都です。",
    "नमस्ते दुनिया e\u0301 👍🏽 مرحبا",
    "x",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def test_xlmr_classifier_from_text_matches_transformers(
    tmp_path: Path, model_dir: Callable[[str], Path]
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    e5 = model_dir("e5-small")
    torch.manual_seed(0)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=250002, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, id2label={0: "no", 1: "yes", 2: "maybe"},
    )  # fmt: skip
    model = transformers.XLMRobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0 and biases at 0: perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    src = tmp_path / "xlmr"
    model.save_pretrained(src)
    for name in TOKENIZER_FILES:
        shutil.copy(e5 / name, src / name)
    manifest = convert(src, tmp_path / "bundle", cpu_archs=("none",))
    pipe = Pipeline.load(tmp_path / "bundle", verify="full")
    assert pipe.tokenizer.pad_id == 1  # XLM-R's <pad>, which the positions count from
    # No CPU kernels were asked for, yet the tokenizer's C loops are in the bundle (and so in
    # the image's model layer), listed and hashed like any bundle file, and in use.
    if shutil.which(os.environ.get("CC", "gcc")) is not None:
        assert "tokenizer.so" in manifest.files and not manifest.cpu_kernels
        assert pipe.tokenizer.model.native is not None  # type: ignore[union-attr]

    job = pipe.prepare("predict", {"inputs": [[t] for t in TEXTS], "raw_scores": True})
    ours: Any = job.finish(pipe.execute(job.encodings))

    ref = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    ref.enable_padding(pad_id=1, pad_token="<pad>")
    encs = ref.encode_batch(TEXTS)
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([e.ids for e in encs]),
            attention_mask=torch.tensor([e.attention_mask for e in encs]),
        ).logits.numpy()
    for row, text in zip(ours, TEXTS, strict=True):
        got = {r["label"]: r["score"] for r in row}
        want = logits[TEXTS.index(text)]
        assert np.abs(np.array([got[label] for label in ("no", "yes", "maybe")]) - want).max() <= (
            SCORE_TOLERANCE
        ), text
