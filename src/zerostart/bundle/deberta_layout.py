"""The DeBERTa-v2/v3 engine layout: the BERT layout without positions, plus relative attention.

Differences from ``zerostart.bundle.layout`` (whose conventions hold: ``[in, out]``
weights, fused QKV with the query block pre-scaled, here by ``1/sqrt(3 d)``):

* no ``embed.position`` (DeBERTa-v2/v3 has no absolute positions in the input);
  ``embed.token_type`` only when ``type_vocab_size`` > 0;
* ``rel.index``: int32 ``[2 P - 1]`` (P = ``max_position_embeddings``), entry
  ``i - j + P - 1`` = the row of the relative tables that query ``i`` and key
  ``j`` use (log buckets, clamped; ``zerostart.model.deberta.relative_index``);
* per layer, after the QKV matrix: ``attn.pos_q`` and ``attn.pos_k``, float32
  ``[2 span, H]``: the layer's query (pre-scaled) and key projections of the
  normalised relative embeddings, computed at convert time (they depend on
  the weights only); head ``h`` owns columns ``h*d : (h+1)*d`` as in QKV;
* sequence classification: ``head.pooler`` is transformers' ContextPooler dense
  (its activation is ``config.pooler_act``), then ``head.classifier``;
* int8 bundles pack the four matrices of every layer as BERT's do
  (``zerostart.bundle.packing``); the relative tables stay float32.

Runtime module: standard library only.
"""

from __future__ import annotations

from zerostart.bundle.manifest import Manifest
from zerostart.bundle.packing import add_matrix, mark_packed

ARCHITECTURE = "deberta-v2"
REL_INDEX = "rel.index"


def pos_names(i: int) -> tuple[str, str]:
    """(pos_q, pos_k) tensor names of layer ``i``."""
    return f"layer.{i}.attn.pos_q", f"layer.{i}.attn.pos_k"


def tensor_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Every tensor of a DeBERTa bundle, in file (and access) order."""
    c = manifest.config
    h, inter, span = c.hidden_size, c.intermediate_size, c.relative_span
    shapes: dict[str, tuple[int, ...]] = {"embed.word": (c.vocab_size, h)}
    if c.type_vocab_size > 0:
        shapes["embed.token_type"] = (c.type_vocab_size, h)
    shapes["embed.norm.weight"] = (h,)
    shapes["embed.norm.bias"] = (h,)
    shapes[REL_INDEX] = (2 * c.max_position_embeddings - 1,)
    for i in range(c.num_layers):
        p = f"layer.{i}."
        pos_q, pos_k = pos_names(i)
        add_matrix(shapes, p + "attn.qkv", h, 3 * h, manifest.dtype)
        shapes[pos_q] = (2 * span, h)
        shapes[pos_k] = (2 * span, h)
        add_matrix(shapes, p + "attn.out", h, h, manifest.dtype)
        shapes[p + "attn.norm.weight"] = (h,)
        shapes[p + "attn.norm.bias"] = (h,)
        add_matrix(shapes, p + "ffn.up", h, inter, manifest.dtype)
        add_matrix(shapes, p + "ffn.down", inter, h, manifest.dtype)
        shapes[p + "ffn.norm.weight"] = (h,)
        shapes[p + "ffn.norm.bias"] = (h,)
    if manifest.task == "sequence-classification":
        shapes["head.pooler.weight"] = (h, h)
        shapes["head.pooler.bias"] = (h,)
    if manifest.task in ("sequence-classification", "token-classification"):
        shapes["head.classifier.weight"] = (h, len(manifest.labels))
        shapes["head.classifier.bias"] = (len(manifest.labels),)
    return shapes


def tensor_dtypes(manifest: Manifest) -> dict[str, str]:
    """numpy dtype name of every tensor (float32; the index table int32; int8 bundles' packed
    matrices as ``zerostart.bundle.packing`` says)."""
    out = dict.fromkeys(tensor_shapes(manifest), "float32")
    out[REL_INDEX] = "int32"
    mark_packed(out, manifest.config.num_layers, manifest.dtype)
    return out
