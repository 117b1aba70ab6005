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
kernels' micro-kernel instead (kernels/cpu/zs_cpu_gemm.c): columns in panels
of 64, ``k`` in groups of 4 (int8) or 2 (bf16), ``[Np/64, Kp/G, 4, 16, G]``;
int8 adds a float32 scale and an int32 column sum per output column.
Everything else (embeddings, norms, biases, task head) stays float32.

Runtime module: standard library only (the engines add numpy).
"""

from __future__ import annotations

from zerostart.bundle import deberta_layout, modernbert_layout
from zerostart.bundle.manifest import Manifest

LAYOUT_VERSION = "1"

# Activations the engines implement, keyed by the Hugging Face ``hidden_act`` name.
# "gelu" is the exact (erf) form; the others are the tanh approximation.
GELU_ERF_ACTS = ("gelu",)
GELU_TANH_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
SUPPORTED_ACTS = (*GELU_ERF_ACTS, *GELU_TANH_ACTS, "relu")


# The matrices stored packed in int8 / bf16 bundles, per layer.
QUANTIZED = ("attn.qkv", "attn.out", "ffn.up", "ffn.down")
GEMM_PANEL = 64  # output columns per panel of packed weights
GEMM_GROUP = {"int8": 4, "bfloat16": 2}  # k per 32-bit lane of vpdpbusd / vdpbf16ps
SCALE_SUFFIX = ".scale"  # int8: float32 [Np], dequantisation factor per output column
COLSUM_SUFFIX = ".colsum"  # int8: int32 [Np], sum over k of the int8 weights


def padded(k: int, n: int, precision: str) -> tuple[int, int]:
    """(K, N) rounded up to the packing's group and panel."""
    g = GEMM_GROUP[precision]
    return -(-k // g) * g, -(-n // GEMM_PANEL) * GEMM_PANEL


def packed_shape(k: int, n: int, precision: str) -> tuple[int, ...]:
    kp, n_pad = padded(k, n, precision)
    g = GEMM_GROUP[precision]
    return (n_pad // GEMM_PANEL, kp // g, GEMM_PANEL // 16, 16, g)


def tensor_dtypes(manifest: Manifest) -> dict[str, str]:
    """numpy dtype name of every tensor of ``tensor_shapes`` (float32 unless packed)."""
    if manifest.architecture == deberta_layout.ARCHITECTURE:
        return deberta_layout.tensor_dtypes(manifest)
    base = "float16" if manifest.dtype == "float16" else "float32"
    out = dict.fromkeys(tensor_shapes(manifest), base)
    if manifest.dtype in GEMM_GROUP:
        packed = "int8" if manifest.dtype == "int8" else "uint16"  # bf16 bits
        for i in range(manifest.config.num_layers):
            for m in QUANTIZED:
                name = layer_prefix(i) + m + ".weight"
                out[name] = packed
                if manifest.dtype == "int8":
                    out[name + COLSUM_SUFFIX] = "int32"
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
        if dtype not in GEMM_GROUP:
            shapes[p + name + ".weight"] = (k, n)
        else:
            shapes[p + name + ".weight"] = packed_shape(k, n, dtype)
            if dtype == "int8":
                n_pad = padded(k, n, dtype)[1]
                shapes[p + name + ".weight" + SCALE_SUFFIX] = (n_pad,)
                shapes[p + name + ".weight" + COLSUM_SUFFIX] = (n_pad,)
        shapes[p + name + ".bias"] = (n,)

    matrix("attn.qkv", h, 3 * h)
    matrix("attn.out", h, h)
    shapes[p + "attn.norm.weight"] = (h,)
    shapes[p + "attn.norm.bias"] = (h,)
    matrix("ffn.up", h, inter)
    matrix("ffn.down", inter, h)
    shapes[p + "ffn.norm.weight"] = (h,)
    shapes[p + "ffn.norm.bias"] = (h,)
