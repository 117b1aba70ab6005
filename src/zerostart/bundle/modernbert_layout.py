"""ModernBERT's engine layout: the tensors of a ``modernbert`` bundle, and its layer plan.

ModernBERT (Warner et al. 2024, "Smarter, Better, Faster, Longer"; transformers'
``modeling_modernbert.py``) is a pre-LN encoder without biases: LayerNorms
without a bias, rotary positions instead of a position table, a GeGLU FFN, a
final norm, and attention that is global in every ``global_every``-th layer
(0, 3, 6, ...) and a sliding window elsewhere (query ``i`` sees keys ``j`` with
``|i - j| <= local_window``, 64 for the released models' 128-token window).
Per layer, in this file's (and the forward pass's) order::

    h = x if i == 0 else LN(x; attn.norm)           layer 0 has no attention norm
    q, k, v = h Wqkv   (the query block pre-scaled by 1/sqrt(d) at convert time)
    q, k = rotary(q, k; theta)                        global: rope_theta, local: local_rope_theta
    x = x + attention(q, k, v; window) Wo
    x = x + GeGLU(LN(x; ffn.norm) Wi) Wo_ffn          GeGLU(u | g) = act(u) * g
    ... after the last layer: LN(x; final.norm)

Linear weights are stored ``[in, out]`` (the engine computes ``x @ W``);
``ffn.wi`` keeps transformers' column order, the GeGLU input in columns
``[0, I)`` and its gate in ``[I, 2I)``. The classification head (both tasks):
``LN(act(pooled head.dense + b); head.norm)`` then the classifier; a head
without a dense bias (transformers' default ``classifier_bias=False``) stores
zeros. Everything is float32, except in int8 bundles the four matrices of every
layer (``QUANTIZED``), packed as BERT's are (``zerostart.bundle.packing``).

Runtime module: standard library only; a leaf that ``bundle.layout`` imports.
"""

from __future__ import annotations

from zerostart.bundle.manifest import Manifest
from zerostart.bundle.packing import add_matrix, mark_packed

ARCHITECTURE = "modernbert"
# The matrices an int8 bundle packs (``zerostart.bundle.packing``), per layer; no biases.
QUANTIZED = ("attn.qkv", "attn.out", "ffn.wi", "ffn.wo")


def is_global(manifest: Manifest, layer: int) -> bool:
    """Whether ``layer`` attends to the whole sequence (else: the sliding window)."""
    every = manifest.config.global_every
    return every <= 1 or layer % every == 0


def modernbert_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ModernBERT bundle, in file (and access) order."""
    c = manifest.config
    h, inter = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embed.word": (c.vocab_size, h),
        "embed.norm.weight": (h,),
    }
    for i in range(c.num_layers):
        p = f"layer.{i}."  # layout.layer_prefix's names (this module is a leaf of layout's)
        if i > 0:
            shapes[p + "attn.norm.weight"] = (h,)
        add_matrix(shapes, p + "attn.qkv", h, 3 * h, manifest.dtype, bias=False)
        add_matrix(shapes, p + "attn.out", h, h, manifest.dtype, bias=False)
        shapes[p + "ffn.norm.weight"] = (h,)
        add_matrix(shapes, p + "ffn.wi", h, 2 * inter, manifest.dtype, bias=False)
        add_matrix(shapes, p + "ffn.wo", inter, h, manifest.dtype, bias=False)
    shapes["final.norm.weight"] = (h,)
    if manifest.task != "embeddings":
        n = len(manifest.labels)
        shapes["head.dense.weight"] = (h, h)
        shapes["head.dense.bias"] = (h,)
        shapes["head.norm.weight"] = (h,)
        shapes["head.classifier.weight"] = (h, n)
        shapes["head.classifier.bias"] = (n,)
    return shapes


def modernbert_dtypes(manifest: Manifest) -> dict[str, str]:
    """numpy dtype name of every tensor (float32; an int8 bundle's packed matrices as
    ``zerostart.bundle.packing`` says)."""
    out = dict.fromkeys(modernbert_shapes(manifest), "float32")
    mark_packed(out, manifest.config.num_layers, manifest.dtype, QUANTIZED)
    return out
