"""The pieces of a kernel variant's description that every family's spec list shares.

``variants`` (BERT / DistilBERT) and ``modernbert_variants`` both build on these;
a leaf, so neither imports the other. Pure Python, no Triton.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from zerostart.bundle import launch
from zerostart.errors import ConvertError, EngineError


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    @property
    def name(self) -> str:
        """The block-config part of a GEMM variant's key (``launch.gemm_config_name``)."""
        return f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"

    @classmethod
    def parse(cls, name: str) -> GemmConfig:
        """The inverse of ``name``; ValueError on anything else."""
        m = re.fullmatch(r"m(\d+)n(\d+)k(\d+)w(\d+)s(\d+)", name)
        if not m:
            raise ValueError(f"not a GEMM block config: {name!r}")
        bm, bn, bk, w, st = (int(x) for x in m.groups())
        return cls(bm, bn, bk, num_warps=w, num_stages=st)


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


def gemm_spec(act: int, has_res: bool, aligned: bool, cfg: GemmConfig) -> KernelSpec:
    key = f"gemm.act{act}.res{int(has_res)}.al{int(aligned)}.{cfg.name}"
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
            # aligned builds also drop the K mask: chosen only when K % BLOCK_K == 0
            "EVEN_K": int(aligned),
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
