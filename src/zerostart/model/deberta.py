"""DeBERTa-v2 / v3 folders -> the DeBERTa engine layout (``zerostart.bundle.deberta_layout``).

What DeBERTa-v2/v3 is, as transformers' ``modeling_deberta_v2`` runs it: a
post-LN BERT without absolute positions whose attention adds two terms to
``q.k``, computed on *relative* positions bucketed logarithmically
(``position_buckets``, 256 in v3) and shared by every layer:

    score[i, j] = (q_i . k_j + q_i . posk[r(i, j)] + k_j . posq[r(i, j)]) / sqrt(3 d)

where ``posq``/``posk`` are the layer's query/key projections of the relative
embeddings (``LayerNorm(rel_embeddings)`` when ``norm_rel_ebd`` says
"layer_norm"; the same Q/K matrices when ``share_att_key``) and
``r(i, j) = clamp(bucket(i - j) + span, 0, 2 span - 1)``. The first term is
"content->content", the second "content->position" (c2p), the third
"position->content" (p2c); transformers gathers the p2c term with ``-bucket(j - i)``,
which equals ``bucket(i - j)`` (the bucket function is odd).

Everything that depends only on the weights is done here, once:

* ``posq``/``posk`` of every layer are computed in float64 (``[2 span, H]``
  each), the query side already divided by ``sqrt(3 d)``, like the query
  block of the fused QKV matrix;
* ``r`` for every distance ``i - j`` in ``[-(P-1), P-1]`` (P = the positions
  served) is written as one int32 table, computed in float32 exactly as
  transformers' ``make_log_bucket_position`` does (its float32 ``log`` and
  ``ceil``; the tests compare the table with transformers' own for every distance).

What is refused, naming what works: DeBERTa v1 (``model_type`` "deberta"),
absolute positions in the input (``position_biased_input``), the v2-xlarge
convolution (``conv_kernel_size``), an embedding projection
(``embedding_size`` != hidden), attention types other than c2p + p2c, and a
head size that is not ``hidden / heads``. Build-time module (numpy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.bundle import deberta_layout
from zerostart.bundle.deberta_layout import ARCHITECTURE, REL_INDEX, pos_names
from zerostart.bundle.layout import SUPPORTED_ACTS, layer_prefix
from zerostart.bundle.manifest import Manifest, ModelConfig
from zerostart.bundle.packing import GEMM_GROUP
from zerostart.errors import ConvertError

MODEL_TYPE = "deberta-v2"
PREFIX = "deberta."
_SERVES = (
    "DeBERTa-v2/v3 with relative attention (c2p + p2c), no absolute positions in the input "
    "and no convolution layer (deberta-v3-*, mdeberta-v3, deberta-v2-base NLI models)"
)
ARCH_TASKS = {
    "DebertaV2Model": "embeddings",
    "DebertaV2ForSequenceClassification": "sequence-classification",
    "DebertaV2ForTokenClassification": "token-classification",
}


def _refuse(path: Path, what: str) -> ConvertError:
    return ConvertError(path, f"{what} is not supported", hint=f"zerostart converts {_SERVES}")


def model_config(config: Mapping[str, Any], path: Path) -> ModelConfig:
    """The engine's view of a DeBERTa-v2 config.json; ConvertError for variants we cannot run.

    ``relative_span`` is transformers' ``pos_ebd_size``: ``position_buckets`` when
    positive, else ``max_relative_positions`` (itself ``max_position_embeddings`` when < 1).
    """
    if config.get("model_type") == "deberta":
        raise ConvertError(
            path,
            "DeBERTa v1 (model_type 'deberta') is not supported",
            hint=f"zerostart converts {_SERVES}",
        )
    if not config.get("relative_attention", False):
        raise _refuse(path, "DeBERTa without relative_attention")
    if config.get("position_biased_input", True):
        raise _refuse(path, "position_biased_input=true (absolute positions added to the input)")
    if int(config.get("conv_kernel_size", 0) or 0) > 0:
        raise _refuse(
            path, f"the convolution layer (conv_kernel_size={config['conv_kernel_size']})"
        )
    att = config.get("pos_att_type") or []
    if isinstance(att, str):  # older configs: "p2c|c2p"
        att = [a.strip() for a in att.lower().split("|") if a.strip()]
    if sorted(att) != ["c2p", "p2c"]:
        raise _refuse(path, f"pos_att_type {att} (only ['p2c', 'c2p'])")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    if int(config.get("embedding_size") or hidden) != hidden:
        raise _refuse(path, f"embedding_size {config['embedding_size']} != hidden_size {hidden}")
    if int(config.get("attention_head_size") or hidden // heads) * heads != hidden:
        raise _refuse(path, f"attention_head_size {config['attention_head_size']}")
    if int(config.get("pooler_hidden_size") or hidden) != hidden:
        raise _refuse(path, f"pooler_hidden_size {config['pooler_hidden_size']} != hidden_size")
    pooler_act = str(config.get("pooler_hidden_act", "gelu"))
    if pooler_act not in (*SUPPORTED_ACTS, "tanh"):
        raise _refuse(path, f"pooler_hidden_act {pooler_act!r}")
    norm = [x.strip() for x in str(config.get("norm_rel_ebd", "none")).lower().split("|")]
    if not set(norm) <= {"none", "layer_norm"}:
        raise _refuse(path, f"norm_rel_ebd {config['norm_rel_ebd']!r}")
    positions = int(config["max_position_embeddings"])
    buckets = int(config.get("position_buckets", -1))
    max_rel = int(config.get("max_relative_positions", -1))
    if max_rel < 1:
        max_rel = positions
    if buckets > 0 and max_rel - 1 <= buckets // 2:
        raise _refuse(path, f"max_relative_positions {max_rel} <= position_buckets/2 + 1")
    return ModelConfig(
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=positions,
        type_vocab_size=int(config.get("type_vocab_size", 0)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-7)),
        hidden_act=str(config.get("hidden_act", "gelu")),
        pad_token_id=int(config.get("pad_token_id") or 0),
        relative_span=buckets if buckets > 0 else max_rel,
        pooler_act=pooler_act,
    )


def relative_index(config: Mapping[str, Any], positions: int) -> np.ndarray:
    """int32 [2 P - 1]: entry ``i - j + P - 1`` is ``r(i, j)`` (module docstring), P = ``positions``.

    Follows transformers' ``make_log_bucket_position`` / ``build_relative_position``
    in float32 (``abs / mid``, ``log``, ``ceil``), then the clamp to ``[0, 2 span)``
    of ``disentangled_attention_bias``.
    """
    buckets = int(config.get("position_buckets", -1))
    max_rel = int(config.get("max_relative_positions", -1))
    if max_rel < 1:
        max_rel = int(config["max_position_embeddings"])
    span = buckets if buckets > 0 else max_rel
    rel = np.arange(-(positions - 1), positions, dtype=np.int64)
    if buckets > 0:
        mid = buckets // 2
        sign = np.sign(rel)
        abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
        ratio = abs_pos.astype(np.float32) / np.float32(mid)
        den = np.log(np.float32((max_rel - 1) / mid))
        log_pos = np.ceil(np.log(ratio) / den * np.float32(mid - 1)) + np.float32(mid)
        rel = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)
    return np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)


def engine_tensors(
    source: Mapping[str, np.ndarray], manifest: Manifest, config: Mapping[str, Any], path: Path
) -> dict[str, np.ndarray]:
    """Hugging Face DebertaV2* tensors -> the engine layout (float32; shapes checked)."""
    c = manifest.config
    h, span = c.hidden_size, c.relative_span
    get = _getter(source, path)

    def linear(name: str, n_in: int, n_out: int, *, prefixed: bool = True) -> tuple[Any, Any]:
        w = get(name + ".weight", (n_out, n_in), prefixed=prefixed)
        return w.T.astype(np.float64), get(name + ".bias", (n_out,), prefixed=prefixed)

    out: dict[str, np.ndarray] = {}
    out["embed.word"] = get("embeddings.word_embeddings.weight", (c.vocab_size, h))
    if c.type_vocab_size > 0:
        out["embed.token_type"] = get(
            "embeddings.token_type_embeddings.weight", (c.type_vocab_size, h)
        )
    out["embed.norm.weight"] = get("embeddings.LayerNorm.weight", (h,))
    out["embed.norm.bias"] = get("embeddings.LayerNorm.bias", (h,))
    out[REL_INDEX] = relative_index(config, c.max_position_embeddings)
    rel = get("encoder.rel_embeddings.weight", (2 * span, h)).astype(np.float64)
    norm = [x.strip() for x in str(config.get("norm_rel_ebd", "none")).lower().split("|")]
    if "layer_norm" in norm:
        g = get("encoder.LayerNorm.weight", (h,))
        b = get("encoder.LayerNorm.bias", (h,))
        mean = rel.mean(axis=1, keepdims=True)
        var = ((rel - mean) ** 2).mean(axis=1, keepdims=True)
        rel = (rel - mean) / np.sqrt(var + c.layer_norm_eps) * g + b
    share = bool(config.get("share_att_key", False))
    # transformers divides by torch.sqrt(float32(d) * 3); the same constant, in float64.
    scale = 1.0 / math.sqrt(float(np.float32(h // c.num_heads) * np.float32(3)))
    for i in range(c.num_layers):
        p, s = layer_prefix(i), f"encoder.layer.{i}."
        q, k, v = (linear(s + f"attention.self.{n}_proj", h, h) for n in ("query", "key", "value"))
        pq = q if share else linear(s + "attention.self.pos_query_proj", h, h)
        pk = k if share else linear(s + "attention.self.pos_key_proj", h, h)
        out[p + "attn.qkv.weight"] = np.concatenate([q[0] * scale, k[0], v[0]], axis=1)
        out[p + "attn.qkv.bias"] = np.concatenate([q[1] * scale, k[1], v[1]])
        pos_q, pos_k = pos_names(i)
        out[pos_q] = (rel @ pq[0] + pq[1]) * scale
        out[pos_k] = rel @ pk[0] + pk[1]
        out[p + "attn.out.weight"], out[p + "attn.out.bias"] = linear(
            s + "attention.output.dense", h, h
        )
        out[p + "attn.norm.weight"] = get(s + "attention.output.LayerNorm.weight", (h,))
        out[p + "attn.norm.bias"] = get(s + "attention.output.LayerNorm.bias", (h,))
        up = linear(s + "intermediate.dense", h, c.intermediate_size)
        down = linear(s + "output.dense", c.intermediate_size, h)
        out[p + "ffn.up.weight"], out[p + "ffn.up.bias"] = up
        out[p + "ffn.down.weight"], out[p + "ffn.down.bias"] = down
        out[p + "ffn.norm.weight"] = get(s + "output.LayerNorm.weight", (h,))
        out[p + "ffn.norm.bias"] = get(s + "output.LayerNorm.bias", (h,))
    if manifest.task == "sequence-classification":  # ContextPooler: dense + act on token 0
        out["head.pooler.weight"], out["head.pooler.bias"] = linear(
            "pooler.dense", h, h, prefixed=False
        )
    if manifest.task != "embeddings":
        cls = linear("classifier", h, len(manifest.labels), prefixed=False)
        out["head.classifier.weight"], out["head.classifier.bias"] = cls
    if manifest.dtype in GEMM_GROUP:  # int8: the four matrices of each layer packed
        from zerostart.model.quantize import reduce_precision

        return reduce_precision(out, manifest)
    dtypes = deberta_layout.tensor_dtypes(manifest)
    return {  # file order = the engine's access order
        name: np.ascontiguousarray(out[name], dtype=dtypes[name])
        for name in deberta_layout.tensor_shapes(manifest)
    }


def check_target(device: str, precision: str, path: Path) -> None:
    """Refuse what the DeBERTa engines do not run yet: the GPU, bf16 matrices."""
    if device != "cpu":
        raise ConvertError(
            path,
            "DeBERTa runs on the CPU engine only today",
            hint="convert with --device cpu (the GPU kernels for disentangled attention are not built yet)",
        )
    if precision not in ("float32", "int8"):
        raise ConvertError(
            path,
            f"DeBERTa bundles are float32 or int8 today, not {precision}",
            hint="convert with --precision float32 or --precision int8",
        )


def _getter(source: Mapping[str, np.ndarray], path: Path) -> Callable[..., np.ndarray]:
    def get(name: str, shape: tuple[int, ...], *, prefixed: bool = True) -> np.ndarray:
        names = [PREFIX + name, name] if prefixed else [name]
        for n in names:
            if n in source:
                arr = source[n]
                if arr.shape != shape:
                    raise ConvertError(
                        path,
                        f"tensor {n!r} has shape {list(arr.shape)}, expected {list(shape)} from config.json",
                    )
                return arr
        raise ConvertError(path, f"missing tensor {names[0]!r}")

    return get


__all__ = [
    "ARCHITECTURE",
    "ARCH_TASKS",
    "MODEL_TYPE",
    "check_target",
    "engine_tensors",
    "model_config",
]
