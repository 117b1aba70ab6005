"""``zerostart convert`` for ModernBERT folders: config.json and the weights, in engine layout.

Reads transformers' ``ModernBertConfig`` in both spellings found on the Hub
(``global_attn_every_n_layers`` / ``global_rope_theta`` / ``local_rope_theta``
of the released checkpoints, and transformers 5's ``layer_types`` /
``rope_parameters``) and the weights of ``ModernBertModel`` (embeddings),
``ModernBertForMaskedLM`` (``model.*``; the MLM head is not read),
``ModernBertForSequenceClassification`` and ``ModernBertForTokenClassification``.
The layout written is ``zerostart.bundle.modernbert_layout``'s.

What the engines do not run is refused naming what works: biases in the
attention, the FFN or the norms (no released ModernBERT has them), rotary
scaling (``rope_type`` other than "default"), a ``layer_types`` list that is
not "global every n-th layer", GPU and int8/bf16 bundles (fp32 CPU today).

Build-time module (numpy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.bundle.layout import SUPPORTED_ACTS, layer_prefix
from zerostart.bundle.manifest import Manifest, ModelConfig
from zerostart.bundle.modernbert_layout import modernbert_shapes
from zerostart.errors import ConvertError

MODEL_TYPE = "modernbert"
# transformers' ModernBertConfig defaults (configuration_modernbert.py), which configs on the
# Hub leave out when they equal them.
DEFAULT_GLOBAL_EVERY = 3
DEFAULT_ROPE_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}
DEFAULT_LOCAL_ATTENTION = 128  # tokens in the window, both sides: |i - j| <= 128 // 2
DEFAULT_NORM_EPS = 1e-5
WORKS = "ModernBERT with fp32 CPU bundles, no biases in attention/FFN/norms, default rotary"
_BIASES = ("attention_bias", "mlp_bias", "norm_bias")
_POOLINGS = ("cls", "mean")


def modernbert_config(config: Mapping[str, Any], path: Path) -> ModelConfig:
    """The normalised config of a ModernBERT config.json; ConvertError for variants we do not run.

    Raises KeyError for a missing size (the caller names it).
    """
    for key in _BIASES:
        if config.get(key):
            raise ConvertError(
                path,
                f"{key}=true is not supported",
                hint=f"what converts: {WORKS} (docs/models.md)",
            )
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        raise ConvertError(path, f"head_dim {head_dim} x {heads} heads is not hidden_size {hidden}")
    if (hidden // max(heads, 1)) % 2:
        raise ConvertError(path, f"head size {hidden // heads} is odd: rotary needs pairs")
    pooling = str(config.get("classifier_pooling", "cls"))
    if pooling not in _POOLINGS:
        raise ConvertError(path, f"classifier_pooling {pooling!r} is not one of {_POOLINGS}")
    head_act = str(config.get("classifier_activation", "gelu"))
    if head_act not in SUPPORTED_ACTS:
        raise ConvertError(
            path, f"classifier_activation {head_act!r} is not supported ({SUPPORTED_ACTS})"
        )
    window = int(config.get("local_attention", DEFAULT_LOCAL_ATTENTION))
    if window < 2:
        raise ConvertError(path, f"local_attention {window} leaves no window")
    return ModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=int(config["max_position_embeddings"]),
        type_vocab_size=0,
        layer_norm_eps=float(config.get("norm_eps", DEFAULT_NORM_EPS)),
        hidden_act=str(config.get("hidden_activation", "gelu")),
        pad_token_id=int(config.get("pad_token_id") or 0),
        rope_theta=_theta(config, "full_attention", "global_rope_theta", path),
        local_rope_theta=_theta(config, "sliding_attention", "local_rope_theta", path),
        local_window=window // 2,
        global_every=_global_every(config, layers, path),
        classifier_pooling=pooling,
        classifier_act=head_act,
    )


def _theta(config: Mapping[str, Any], layer_type: str, old_key: str, path: Path) -> float:
    rope = config.get("rope_parameters") or {}
    params = rope.get(layer_type) if isinstance(rope, dict) else None
    scaling = config.get("rope_scaling")
    if scaling or (isinstance(params, dict) and params.get("rope_type", "default") != "default"):
        raise ConvertError(
            path,
            f"rotary scaling ({scaling or params}) is not supported",
            hint=f"what converts: {WORKS}",
        )
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.get(old_key, DEFAULT_ROPE_THETA[layer_type]))


def _global_every(config: Mapping[str, Any], layers: int, path: Path) -> int:
    """n such that layer i is global exactly when i % n == 0 (transformers' default pattern)."""
    types = config.get("layer_types")
    every = int(config.get("global_attn_every_n_layers", DEFAULT_GLOBAL_EVERY))
    if not types:
        return every
    globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
    if len(types) != layers or any(t not in ("full_attention", "sliding_attention") for t in types):
        raise ConvertError(path, f"layer_types {types} is not one type per layer")
    for n in range(1, layers + 1):
        if globals_ == list(range(0, layers, n)):
            return n
    raise ConvertError(
        path,
        f"layer_types {types}: global layers {globals_} are not every n-th layer from 0",
        hint=f"what converts: {WORKS}",
    )


def check_target(device: str, precision: str, path: Path) -> None:
    """ModernBERT bundles are CPU bundles, float32 or int8, today."""
    if device != "cpu" or precision not in ("float32", "int8"):
        raise ConvertError(
            path,
            f"ModernBERT runs on the CPU engines in float32 or int8; --device {device} "
            f"--precision {precision} is not supported yet",
            hint="convert with --device cpu --precision float32 or int8 (docs/models.md)",
        )


def engine_tensors(
    source: Mapping[str, np.ndarray], manifest: Manifest, path: Path, dtype: type[np.floating[Any]]
) -> dict[str, np.ndarray]:
    """Hugging Face tensor names -> the engine layout, every shape checked against the config."""
    c = manifest.config
    h, inter = c.hidden_size, c.intermediate_size

    def get(name: str, shape: tuple[int, ...], *, optional: bool = False) -> np.ndarray | None:
        for n in ("model." + name, name):
            if n in source:
                arr = source[n]
                if arr.shape != shape:
                    raise ConvertError(
                        path,
                        f"tensor {n!r} has shape {list(arr.shape)}, expected {list(shape)} from config.json",
                    )
                return arr
        if optional:
            return None
        raise ConvertError(path, f"missing tensor {name!r}")

    def need(name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = get(name, shape)
        assert arr is not None
        return arr

    def linear(name: str, n_in: int, n_out: int) -> np.ndarray:
        return need(name + ".weight", (n_out, n_in)).T  # torch Linear: [out, in]

    out: dict[str, np.ndarray] = {
        "embed.word": need("embeddings.tok_embeddings.weight", (c.vocab_size, h)),
        "embed.norm.weight": need("embeddings.norm.weight", (h,)),
    }
    scale = np.float64(1.0 / math.sqrt(h // c.num_heads))
    for i in range(c.num_layers):
        p, s = layer_prefix(i), f"layers.{i}."
        if i > 0:
            out[p + "attn.norm.weight"] = need(s + "attn_norm.weight", (h,))
        qkv = linear(s + "attn.Wqkv", h, 3 * h).astype(np.float64)
        qkv[:, :h] *= scale  # rotary is linear: scaling q before it equals scaling the scores
        out[p + "attn.qkv.weight"] = qkv
        out[p + "attn.out.weight"] = linear(s + "attn.Wo", h, h)
        out[p + "ffn.norm.weight"] = need(s + "mlp_norm.weight", (h,))
        out[p + "ffn.wi.weight"] = linear(s + "mlp.Wi", h, 2 * inter)
        out[p + "ffn.wo.weight"] = linear(s + "mlp.Wo", inter, h)
    out["final.norm.weight"] = need("final_norm.weight", (h,))
    if manifest.task != "embeddings":
        n = len(manifest.labels)
        out["head.dense.weight"] = linear("head.dense", h, h)
        bias = get("head.dense.bias", (h,), optional=True)
        out["head.dense.bias"] = np.zeros(h, np.float32) if bias is None else bias
        out["head.norm.weight"] = need("head.norm.weight", (h,))
        out["head.classifier.weight"] = need("classifier.weight", (n, h)).T
        out["head.classifier.bias"] = need("classifier.bias", (n,))
    if manifest.dtype == "int8":  # the four matrices of each layer packed
        from zerostart.model.quantize import reduce_precision

        return reduce_precision(out, manifest)
    return {
        name: np.ascontiguousarray(out[name], dtype=dtype) for name in modernbert_shapes(manifest)
    }
