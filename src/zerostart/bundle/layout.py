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

Reduced-precision CPU bundles (``zerostart convert --precision int8|bfloat16``)
store the four matrices of every layer (``QUANTIZED``) packed for the native
kernels' micro-kernel instead (``zerostart.bundle.packing``, re-exported here).
Everything else (embeddings, norms, biases, task head) stays float32.

Runtime module: standard library only (the engines add numpy).
"""

from __future__ import annotations

from zerostart.bundle import deberta_layout, modernbert_layout
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.packing import COLSUM_SUFFIX as COLSUM_SUFFIX
from zerostart.bundle.packing import GEMM_GROUP as GEMM_GROUP
from zerostart.bundle.packing import GEMM_PANEL as GEMM_PANEL
from zerostart.bundle.packing import QUANTIZED as QUANTIZED
from zerostart.bundle.packing import SCALE_SUFFIX as SCALE_SUFFIX
from zerostart.bundle.packing import add_matrix, mark_packed
from zerostart.bundle.packing import packed_shape as packed_shape
from zerostart.bundle.packing import padded as padded

LAYOUT_VERSION = "1"

# Activations the engines implement, keyed by the Hugging Face ``hidden_act`` name.
# "gelu" is the exact (erf) form; the others are the tanh approximation.
GELU_ERF_ACTS = ("gelu",)
GELU_TANH_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
SUPPORTED_ACTS = (*GELU_ERF_ACTS, *GELU_TANH_ACTS, "relu")


def tensor_dtypes(manifest: Manifest) -> dict[str, str]:
    """numpy dtype name of every tensor of ``tensor_shapes`` (float32 unless packed)."""
    if manifest.architecture == deberta_layout.ARCHITECTURE:
        return deberta_layout.tensor_dtypes(manifest)
    if manifest.architecture == modernbert_layout.ARCHITECTURE:
        return modernbert_layout.modernbert_dtypes(manifest)
    base = "float16" if manifest.dtype == "float16" else "float32"
    out = dict.fromkeys(tensor_shapes(manifest), base)
    mark_packed(out, manifest.config.num_layers, manifest.dtype)
    return out


def layer_prefix(i: int) -> str:
    return f"layer.{i}."


def tensor_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Every tensor of this bundle's engine layout, in file (and access) order.

    The order is the order the forward pass touches the weights, so a lazily
    fetched image reads the file front to back.
    """
    if manifest.architecture == deberta_layout.ARCHITECTURE:
        return deberta_layout.tensor_shapes(manifest)
    if manifest.architecture == modernbert_layout.ARCHITECTURE:  # rotary, GeGLU, no biases
        return modernbert_layout.modernbert_shapes(manifest)
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
        _layer_shapes(shapes, p, h, inter, manifest.dtype)
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


def _layer_shapes(
    shapes: dict[str, tuple[int, ...]], p: str, h: int, inter: int, dtype: str
) -> None:
    def matrix(name: str, k: int, n: int) -> None:
        add_matrix(shapes, p + name, k, n, dtype)

    matrix("attn.qkv", h, 3 * h)
    matrix("attn.out", h, h)
    shapes[p + "attn.norm.weight"] = (h,)
    shapes[p + "attn.norm.bias"] = (h,)
    matrix("ffn.up", h, inter)
    matrix("ffn.down", inter, h)
    shapes[p + "ffn.norm.weight"] = (h,)
    shapes[p + "ffn.norm.bias"] = (h,)
