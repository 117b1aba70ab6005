"""What the engine parity tests (CPU in tests/unit, GPU in tests/gpu) compare against.

Importable from every test folder: pytest puts tests/ on sys.path for its conftest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def auto_class(task: str) -> Any:
    transformers = pytest.importorskip("transformers")
    return {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "embeddings": transformers.AutoModel,
    }[task]


def encode_padded(
    src: Path, sentences: Sequence[tuple[str, str]], *, pairs: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sentences through the model's own tokenizer.json, right-padded to the longest."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = tok.encode_batch(list(sentences) if pairs else [a for a, _ in sentences])
    t = max(len(e.ids) for e in encs)
    ids, mask, types = (np.zeros((len(encs), t), np.int64) for _ in range(3))
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
    return ids, mask, types


def transformers_reference(
    src: Path, task: str, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
) -> np.ndarray:
    """transformers on torch, fp32, eager attention: logits, or last_hidden_state for embeddings."""
    torch = pytest.importorskip("torch")
    model = (
        auto_class(task)
        .from_pretrained(src, attn_implementation="eager", dtype=torch.float32)
        .eval()
    )
    kwargs = {"token_type_ids": torch.from_numpy(types)} if types is not None else {}
    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kwargs
        )
    return (out.last_hidden_state if task == "embeddings" else out.logits).float().numpy()
