"""Which kernel variants a model needs: one spec per (kernel, constexprs, block config).

Pure Python (no Triton import) so the list can be tested and printed on any
machine. ``aot`` turns every spec into a cubin per arch plus PTX.

GEMM epilogues come from the model's GEMM sites (QKV, attention output, FFN
up/down, pooler, classifier); each gets an "aligned" build (N, K and strides
divisible by 16 elements, which lets the compiler use 16-byte vector loads)
when the site's dims allow it. Block configurations are defaults chosen
without a GPU (a tuning run on a GPU may replace them); the run-time rule
that picks one per shape is ``zerostart.engine.cuda.launch.select_gemm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zerostart.engine.cuda import launch
from zerostart.engine.cuda.launch import ACT_NONE, ACT_RELU, ACT_TANH, gemm_aligned, next_pow2
from zerostart.errors import ConvertError, EngineError
from zerostart.model.manifest import Manifest


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8


# Defaults without a GPU: a small tile for latency-bound shapes (batch 1) and a large
# one for throughput (batch 32 x 128 = 4096 rows); both fit sm_80's 164 KiB of shared memory.
DEFAULT_GEMM_CONFIGS = (
    GemmConfig(64, 64, 64, num_warps=4, num_stages=3),
    GemmConfig(128, 128, 64, num_warps=8, num_stages=3),
)
ATTENTION_BLOCK_M = 64
ATTENTION_BLOCK_N = 64

_PTR16 = "*fp16"
GEMM_SIGNATURE = (
    ("a_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("bias_ptr", _PTR16),
    ("res_ptr", _PTR16),
    ("c_ptr", _PTR16),
    ("M", "i32"),
    ("N", "i32"),
    ("K", "i32"),
    ("lda", "i32"),
    ("ldc", "i32"),
)
LAYER_NORM_SIGNATURE = (
    ("x_ptr", _PTR16),
    ("w_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("y_ptr", _PTR16),
    ("H", "i32"),
    ("eps", "fp32"),
)
EMBED_SIGNATURE = (
    ("ids_ptr", "*i32"),
    ("types_ptr", "*i32"),
    ("word_ptr", _PTR16),
    ("pos_ptr", _PTR16),
    ("type_ptr", _PTR16),
    ("w_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("y_ptr", _PTR16),
    ("T", "i32"),
    ("H", "i32"),
    ("eps", "fp32"),
)
ATTENTION_SIGNATURE = (
    ("qkv_ptr", _PTR16),
    ("lens_ptr", "*i32"),
    ("out_ptr", _PTR16),
    ("T", "i32"),
    ("H", "i32"),
)


@dataclass(frozen=True)
class KernelSpec:
    """Everything ``aot`` needs to compile one variant and describe its launch."""

    key: str
    op: str  # also the Triton function's name in ``triton_kernels``
    signature: tuple[tuple[str, str], ...]
    constexprs: dict[str, int]
    grid: tuple[str, str, str]
    num_warps: int
    num_stages: int = 1
    aligned_args: tuple[str, ...] = ()  # ints promised divisible by 16 (compiler hint)
    params: dict[str, int] = field(default_factory=dict)  # selection keys beyond constexprs


def activation_code(hidden_act: str) -> int:
    try:
        return launch.activation_code(hidden_act)
    except EngineError as exc:
        raise ConvertError("config.json", str(exc)) from exc


def gemm_sites(manifest: Manifest) -> list[tuple[str, int, bool, int, int]]:
    """(site, activation, has_residual, N, K) for every GEMM of the forward pass."""
    c = manifest.config
    h, inter = c.hidden_size, c.intermediate_size
    sites = [
        ("qkv", ACT_NONE, False, 3 * h, h),
        ("attn_out", ACT_NONE, True, h, h),
        ("ffn_up", activation_code(c.hidden_act), False, inter, h),
        ("ffn_down", ACT_NONE, True, h, inter),
    ]
    n_labels = len(manifest.labels)
    if manifest.task == "sequence-classification":
        pre_act = ACT_TANH if manifest.architecture == "bert" else ACT_RELU
        sites.append(("pooler", pre_act, False, h, h))
        sites.append(("classifier", ACT_NONE, False, n_labels, h))
    elif manifest.task == "token-classification":
        sites.append(("classifier", ACT_NONE, False, n_labels, h))
    return sites


def gemm_spec(act: int, has_res: bool, aligned: bool, cfg: GemmConfig) -> KernelSpec:
    key = (
        f"gemm.act{act}.res{int(has_res)}.al{int(aligned)}"
        f".m{cfg.block_m}n{cfg.block_n}k{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}"
    )
    return KernelSpec(
        key=key,
        op="gemm",
        signature=GEMM_SIGNATURE,
        constexprs={
            "ACT": act,
            "HAS_RES": int(has_res),
            "BLOCK_M": cfg.block_m,
            "BLOCK_N": cfg.block_n,
            "BLOCK_K": cfg.block_k,
            "GROUP_M": cfg.group_m,
        },
        grid=("cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)", "1", "1"),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        aligned_args=("N", "K", "lda", "ldc") if aligned else (),
        params={"ALIGNED": int(aligned)},
    )


def _row_warps(block_h: int) -> int:
    # One row per program: 4 warps cover up to 1024 fp16 lanes in 8-element vectors.
    return 4 if block_h <= 1024 else 8


def model_specs(
    manifest: Manifest, gemm_configs: tuple[GemmConfig, ...] = DEFAULT_GEMM_CONFIGS
) -> list[KernelSpec]:
    """Every kernel variant this model's forward pass can launch, deduplicated, in a stable order."""
    c = manifest.config
    h = c.hidden_size
    head_dim = h // c.num_heads
    if head_dim != next_pow2(head_dim) or head_dim < 16:
        raise ConvertError(
            "config.json",
            f"head size {head_dim} is not a power of two >= 16; the GPU attention kernel needs one",
        )
    specs: dict[str, KernelSpec] = {}
    for _site, act, has_res, n, k in gemm_sites(manifest):
        aligned = gemm_aligned(n, k)
        for cfg in gemm_configs:
            spec = gemm_spec(act, has_res, aligned, cfg)
            specs.setdefault(spec.key, spec)
    block_h = next_pow2(h)
    warps = _row_warps(block_h)
    ln = KernelSpec(
        key=f"layer_norm.h{block_h}",
        op="layer_norm",
        signature=LAYER_NORM_SIGNATURE,
        constexprs={"BLOCK_H": block_h},
        grid=("ROWS", "1", "1"),
        num_warps=warps,
        aligned_args=("H",) if h % 16 == 0 else (),
    )
    has_types = int(c.type_vocab_size > 0)
    emb = KernelSpec(
        key=f"embed.types{has_types}.h{block_h}",
        op="embed",
        signature=EMBED_SIGNATURE,
        constexprs={"HAS_TYPES": has_types, "BLOCK_H": block_h},
        grid=("B * T", "1", "1"),
        num_warps=warps,
        aligned_args=("H",) if h % 16 == 0 else (),
    )
    att = KernelSpec(
        key=f"attention.nh{c.num_heads}.d{head_dim}",
        op="attention",
        signature=ATTENTION_SIGNATURE,
        constexprs={
            "NUM_HEADS": c.num_heads,
            "HEAD_DIM": head_dim,
            "BLOCK_M": ATTENTION_BLOCK_M,
            "BLOCK_N": ATTENTION_BLOCK_N,
        },
        grid=("cdiv(T, BLOCK_M)", "B * NUM_HEADS", "1"),
        num_warps=4,
        num_stages=2,
        aligned_args=("H",) if h % 16 == 0 else (),
    )
    for spec in (ln, emb, att):
        specs[spec.key] = spec
    return list(specs.values())
