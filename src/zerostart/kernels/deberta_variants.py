"""DeBERTa-v2/v3's attention variants (``variants.model_specs`` adds them for "deberta-v2").

Pure Python, like ``variants``. A DeBERTa layer is BERT's post-LN layer with
the attention replaced, so its GEMMs, LayerNorms and split-K builds are BERT's;
``rel_proj`` and ``attention_rel`` (``zerostart.kernels.triton_deberta``) take
the place of ``attention``; the embedding is BERT's ``embed`` reading a zero
position table (DeBERTa has no absolute positions). The plan is
``CudaEngine._plan``'s; convert still refuses DeBERTa for ``--device cuda``
until a GPU has run it (docs/gpu.md).
"""

from __future__ import annotations

from zerostart.bundle.manifest import Manifest
from zerostart.kernels._specs import ATTENTION_BLOCK_M, ATTENTION_BLOCK_N, KernelSpec

_PTR16 = "*fp16"
REL_PROJ_SIGNATURE = (
    ("qkv_ptr", _PTR16),
    ("posq_ptr", _PTR16),
    ("posk_ptr", _PTR16),
    ("c2p_ptr", "*fp32"),
    ("p2c_ptr", "*fp32"),
    ("T", "i32"),
    ("H", "i32"),
    ("W", "i32"),
    ("lo", "i32"),
)
ATTENTION_REL_SIGNATURE = (
    ("qkv_ptr", _PTR16),
    ("c2p_ptr", "*fp32"),
    ("p2c_ptr", "*fp32"),
    ("idx_ptr", "*i32"),
    ("lens_ptr", "*i32"),
    ("out_ptr", _PTR16),
    ("T", "i32"),
    ("H", "i32"),
    ("W", "i32"),
    ("lo", "i32"),
    ("P", "i32"),
)
REL_BLOCK_M, REL_BLOCK_N = 64, 64


def deberta_attention_specs(manifest: Manifest) -> list[KernelSpec]:
    """The two disentangled-attention kernels of this model's head count and size."""
    c = manifest.config
    head_dim = c.hidden_size // c.num_heads
    heads = {"NUM_HEADS": c.num_heads, "HEAD_DIM": head_dim}
    aligned = ("H",) if c.hidden_size % 16 == 0 else ()
    return [
        KernelSpec(
            key=f"rel_proj.nh{c.num_heads}.d{head_dim}",
            op="rel_proj",
            signature=REL_PROJ_SIGNATURE,
            constexprs={**heads, "BLOCK_M": REL_BLOCK_M, "BLOCK_N": REL_BLOCK_N},
            grid=("cdiv(T, BLOCK_M)", "cdiv(W, BLOCK_N)", "B * NUM_HEADS * 2"),
            num_warps=4,
            num_stages=2,
            aligned_args=aligned,
        ),
        KernelSpec(
            key=f"attention_rel.nh{c.num_heads}.d{head_dim}",
            op="attention_rel",
            signature=ATTENTION_REL_SIGNATURE,
            constexprs={**heads, "BLOCK_M": ATTENTION_BLOCK_M, "BLOCK_N": ATTENTION_BLOCK_N},
            grid=("cdiv(T, BLOCK_M)", "B * NUM_HEADS", "1"),
            num_warps=4,
            num_stages=2,
            aligned_args=aligned,
        ),
    ]
