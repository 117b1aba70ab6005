"""The engine layout: which tensors a bundle's weights.safetensors holds, and their shapes.

``zerostart convert`` writes exactly these tensors and the engines read exactly
these, so the names and shapes live in one place. The layout is chosen so the
forward pass needs no transposes and no per-head slicing at run time:

* every linear weight is stored ``[in, out]`` so the engine computes ``x @ W``;
* the query, key and value projections are fused into one ``[H, 3H]`` matrix
  (columns ``[0:H]`` query, ``[H:2H]`` key, ``[2H:3H]`` value; within each block
  head ``h`` owns columns ``h*d : (h+1)*d``) and one ``[3H]`` bias;
* the query block (weight and bias) is pre-multiplied by ``1/sqrt(head_dim)``,
  so attention scores come out of ``q @ k^T`` already scaled.

Runtime module: standard library only (the engines add numpy).
"""

from __future__ import annotations

from zerostart.model.manifest import Manifest

LAYOUT_VERSION = "1"

# Activations the engines implement, keyed by the Hugging Face ``hidden_act`` name.
# "gelu" is the exact (erf) form; the others are the tanh approximation.
GELU_ERF_ACTS = ("gelu",)
GELU_TANH_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
SUPPORTED_ACTS = (*GELU_ERF_ACTS, *GELU_TANH_ACTS, "relu")


def layer_prefix(i: int) -> str:
    return f"layer.{i}."


def tensor_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Every tensor of this bundle's engine layout, in file (and access) order.

    The order is the order the forward pass touches the weights, so a lazily
    fetched image reads the file front to back.
    """
    c = manifest.config
    h, inter = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embed.word": (c.vocab_size, h),
        "embed.position": (c.max_position_embeddings, h),
    }
    if c.type_vocab_size > 0:
        shapes["embed.token_type"] = (c.type_vocab_size, h)
    shapes["embed.norm.weight"] = (h,)
    shapes["embed.norm.bias"] = (h,)
    for i in range(c.num_layers):
        p = layer_prefix(i)
        shapes[p + "attn.qkv.weight"] = (h, 3 * h)
        shapes[p + "attn.qkv.bias"] = (3 * h,)
        shapes[p + "attn.out.weight"] = (h, h)
        shapes[p + "attn.out.bias"] = (h,)
        shapes[p + "attn.norm.weight"] = (h,)
        shapes[p + "attn.norm.bias"] = (h,)
        shapes[p + "ffn.up.weight"] = (h, inter)
        shapes[p + "ffn.up.bias"] = (inter,)
        shapes[p + "ffn.down.weight"] = (inter, h)
        shapes[p + "ffn.down.bias"] = (h,)
        shapes[p + "ffn.norm.weight"] = (h,)
        shapes[p + "ffn.norm.bias"] = (h,)
    n = len(manifest.labels)
    if manifest.task == "sequence-classification":
        # BERT: tanh pooler over [CLS]; DistilBERT: pre_classifier + ReLU over [CLS].
        pre = "head.pooler" if manifest.architecture == "bert" else "head.pre_classifier"
        shapes[pre + ".weight"] = (h, h)
        shapes[pre + ".bias"] = (h,)
    if manifest.task in ("sequence-classification", "token-classification"):
        shapes["head.classifier.weight"] = (h, n)
        shapes["head.classifier.bias"] = (n,)
    return shapes
