"""Which kernel variants a ModernBERT bundle needs (``variants.model_specs`` for ModernBERT).

Pure Python, like ``variants``. The GEMM sites have no bias (the engine
passes a zero vector) and no LayerNorm epilogue (ModernBERT is pre-LN, so
BERT's split-K + LayerNorm fusion does not apply); the FFN's first product is
``gemm_geglu``, built for the same block configs as the GEMMs. The other
kernels are ``zerostart.kernels.triton_modernbert``'s.
"""

from __future__ import annotations

from zerostart.bundle.launch import ACT_NONE, gemm_aligned, next_pow2
from zerostart.bundle.manifest import Manifest
from zerostart.kernels._specs import (
    ATTENTION_BLOCK_M,
    ATTENTION_BLOCK_N,
    DEFAULT_GEMM_CONFIGS,
    GemmConfig,
    KernelSpec,
    _row_warps,
    activation_code,
    gemm_spec,
)

_PTR16 = "*fp16"
LN_NOBIAS_SIGNATURE = (
    ("x_ptr", _PTR16),
    ("ids_ptr", "*i32"),
    ("w_ptr", _PTR16),
    ("y_ptr", _PTR16),
    ("H", "i32"),
    ("eps", "fp32"),
)
ROTARY_SIGNATURE = (
    ("qkv_ptr", _PTR16),
    ("cos_ptr", "*fp32"),
    ("sin_ptr", "*fp32"),
    ("T", "i32"),
    ("H", "i32"),
)
GEGLU_SIGNATURE = (
    ("a_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("c_ptr", _PTR16),
    ("M", "i32"),
    ("N", "i32"),
    ("K", "i32"),
    ("lda", "i32"),
)
ATTENTION_BAND_SIGNATURE = (
    ("qkv_ptr", _PTR16),
    ("lens_ptr", "*i32"),
    ("out_ptr", _PTR16),
    ("T", "i32"),
    ("H", "i32"),
    ("window", "i32"),
)
MEAN_POOL_SIGNATURE = (
    ("x_ptr", _PTR16),
    ("lens_ptr", "*i32"),
    ("y_ptr", _PTR16),
    ("T", "i32"),
    ("H", "i32"),
)
ROTARY_BLOCK_T = 32  # token rows per rotary program
POOL_BLOCK_T, POOL_BLOCK_H = 32, 128


def modernbert_gemm_sites(manifest: Manifest) -> list[tuple[str, int, bool, int, int]]:
    """(site, activation, has_residual, N, K) of every GEMM-like product of the forward pass.

    "ffn_geglu" is the fused FFN input (``gemm_geglu``, N = intermediate size).
    """
    c = manifest.config
    h, inter = c.hidden_size, c.intermediate_size
    sites = [
        ("qkv", ACT_NONE, False, 3 * h, h),
        ("attn_out", ACT_NONE, True, h, h),
        ("ffn_geglu", activation_code(c.hidden_act), False, inter, h),
        ("ffn_down", ACT_NONE, True, h, inter),
    ]
    if manifest.task != "embeddings":
        sites.append(("head_dense", activation_code(c.classifier_act), False, h, h))
        sites.append(("classifier", ACT_NONE, False, len(manifest.labels), h))
    return sites


def geglu_spec(act: int, aligned: bool, cfg: GemmConfig) -> KernelSpec:
    base = gemm_spec(act, False, aligned, cfg)
    constexprs = {k: x for k, x in base.constexprs.items() if k != "HAS_RES"}
    return KernelSpec(
        key="gemm_geglu" + base.key[len("gemm") :],
        op="gemm_geglu",
        signature=GEGLU_SIGNATURE,
        constexprs=constexprs,
        grid=base.grid,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        aligned_args=("N", "K", "lda") if aligned else (),
        params={"ALIGNED": int(aligned), "HAS_RES": 0},  # HAS_RES: select_gemm's filter
    )


def modernbert_specs(
    manifest: Manifest, gemm_configs: tuple[GemmConfig, ...] = DEFAULT_GEMM_CONFIGS
) -> list[KernelSpec]:
    """Every kernel variant a ModernBERT forward pass can launch, deduplicated, stable order."""
    c = manifest.config
    h = c.hidden_size
    head_dim = h // c.num_heads
    specs: dict[str, KernelSpec] = {}
    for site, act, has_res, n, k in modernbert_gemm_sites(manifest):
        for cfg in gemm_configs:
            # the geglu kernel's gate half starts N columns in: N too must keep alignment
            aligned = gemm_aligned(n, k) and k % cfg.block_k == 0
            spec = geglu_spec(act, aligned, cfg) if site == "ffn_geglu" else None
            spec = spec or gemm_spec(act, has_res, aligned, cfg)
            specs.setdefault(spec.key, spec)
    block_h = next_pow2(h)
    warps = _row_warps(block_h)
    h_aligned = ("H",) if h % 16 == 0 else ()
    for gather in (1, 0):
        specs[f"ln_nobias.g{gather}.h{block_h}"] = KernelSpec(
            key=f"ln_nobias.g{gather}.h{block_h}",
            op="ln_nobias",
            signature=LN_NOBIAS_SIGNATURE,
            constexprs={"GATHER": gather, "BLOCK_H": block_h},
            grid=("ROWS", "1", "1"),
            num_warps=warps,
            aligned_args=h_aligned,
        )
    heads = {"NUM_HEADS": c.num_heads, "HEAD_DIM": head_dim}
    rot = KernelSpec(
        key=f"rotary.nh{c.num_heads}.d{head_dim}",
        op="rotary",
        signature=ROTARY_SIGNATURE,
        constexprs={**heads, "BLOCK_T": ROTARY_BLOCK_T},
        grid=("cdiv(T, BLOCK_T)", "B * NUM_HEADS", "1"),
        num_warps=4,
        aligned_args=h_aligned,
    )
    att = KernelSpec(
        key=f"attention_band.nh{c.num_heads}.d{head_dim}",
        op="attention_band",
        signature=ATTENTION_BAND_SIGNATURE,
        constexprs={**heads, "BLOCK_M": ATTENTION_BLOCK_M, "BLOCK_N": ATTENTION_BLOCK_N},
        grid=("cdiv(T, BLOCK_M)", "B * NUM_HEADS", "1"),
        num_warps=4,
        num_stages=2,
        aligned_args=h_aligned,
    )
    for spec in (rot, att):
        specs[spec.key] = spec
    if manifest.task == "sequence-classification" and c.classifier_pooling == "mean":
        specs["mean_pool"] = KernelSpec(
            key="mean_pool",
            op="mean_pool",
            signature=MEAN_POOL_SIGNATURE,
            constexprs={"BLOCK_T": POOL_BLOCK_T, "BLOCK_H": POOL_BLOCK_H},
            grid=("B", "cdiv(H, BLOCK_H)", "1"),
            num_warps=4,
            aligned_args=h_aligned,
        )
    return list(specs.values())
