"""Tiny ModernBERT folders with random weights, built offline by transformers from a config.

Importable from every test folder (pytest puts tests/ on sys.path for its conftest).
transformers builds ModernBERT offline given explicit pad/bos/eos/cls/sep ids in a
small vocabulary. Every parameter is perturbed: the default init leaves norms at 1
and would hide a missing norm weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VOCAB = 99
SPECIAL_IDS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "cls_token_id": 1,
    "sep_token_id": 2,
}
HUB_SPELLING = {  # what answerdotai/ModernBERT-base's config.json says instead of 5.x's keys
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
}


def build(
    out: Path,
    task: str,
    *,
    labels: int = 5,
    seed: int = 0,
    hub_spelling: bool = False,
    save_bin: bool = False,
    masked_lm: bool = False,
    noise: float = 0.05,
    **config: Any,
) -> Path:
    """Write a ModernBERT folder for ``task`` into ``out`` and return it.

    ``config`` overrides the tiny shape (hidden 32, 4 heads, 4 layers: global, local,
    local, global; FFN 37; an 8-token window so short texts already cross it).
    ``hub_spelling`` rewrites config.json with the released checkpoints' keys;
    ``save_bin`` writes pytorch_model.bin instead of safetensors; ``masked_lm`` saves a
    ModernBertForMaskedLM (the released checkpoints' architecture) whatever the task;
    ``noise``: the standard deviation added to every parameter.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from engine_reference import auto_class

    torch.manual_seed(seed)
    shape: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 2048,
        "local_attention": 8,
        **SPECIAL_IDS,
        **config,
    }
    if task != "embeddings" and not masked_lm:
        shape["id2label"] = {i: f"L{i}" for i in range(labels)}
    cfg = transformers.ModernBertConfig(**shape)
    cls = transformers.ModernBertForMaskedLM if masked_lm else auto_class(task)
    model = cls.from_config(cfg).eval() if not masked_lm else cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    model.save_pretrained(out)
    if save_bin:
        (out / "model.safetensors").unlink()
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    if hub_spelling:
        data = json.loads((out / "config.json").read_text())
        for key in ("layer_types", "rope_parameters"):
            data.pop(key, None)
        data.update(HUB_SPELLING)
        (out / "config.json").write_text(json.dumps(data, indent=2))
    (out / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(VOCAB)))
    return out


def edit_config(folder: Path, **changes: Any) -> None:
    """Change keys of a folder's config.json (None removes the key)."""
    data = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data, indent=2))
