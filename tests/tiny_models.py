"""Manifests of tiny BERT / DistilBERT models for unit tests that need no real weights.

Importable from every test folder: pytest puts tests/ on sys.path for its conftest.
"""

from __future__ import annotations

from zerostart.bundle.manifest import Manifest, ModelConfig, TokenizerSettings

TINY_LABELS = ("a", "b", "c")


def tiny_manifest(
    arch: str,
    task: str,
    *,
    hidden: int,
    layers: int,
    heads: int,
    ffn: int,
    max_positions: int,
    act: str = "gelu",
    device: str = "cpu",
    dtype: str | None = None,
) -> Manifest:
    """A manifest as `zerostart convert` would write it; dtype follows the device unless given."""
    return Manifest(
        architecture=arch,
        task=task,
        config=ModelConfig(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            intermediate_size=ffn,
            vocab_size=50,
            max_position_embeddings=max_positions,
            type_vocab_size=2 if arch == "bert" else 0,
            layer_norm_eps=1e-12,
            hidden_act=act,
        ),
        tokenizer=TokenizerSettings(),
        max_length=max_positions,
        dtype=dtype or ("float16" if device == "cuda" else "float32"),
        device=device,
        labels=() if task == "embeddings" else TINY_LABELS,
    )
