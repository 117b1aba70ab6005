"""Which kernel variants a model needs: one spec per (kernel, constexprs, block config).

Pure Python (no Triton import) so the list can be tested and printed on any
machine. ``aot`` turns every spec into a cubin per arch plus PTX.

GEMM epilogues come from the model's GEMM sites (QKV, attention output, FFN
up/down, pooler, classifier); each gets an "aligned" build (N, K and strides
divisible by 16 elements, which lets the compiler use 16-byte vector loads)
when the site's dims allow it. Block configurations are defaults chosen
without a GPU (a tuning run on a GPU may replace them); the run-time rule
that picks one per shape is ``zerostart.bundle.launch.select_gemm``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from zerostart.bundle import launch
from zerostart.bundle.launch import (
    ACT_NONE,
    ACT_RELU,
    ACT_TANH,
    GemmChoice,
    gemm_aligned,
    next_pow2,
)
from zerostart.bundle.manifest import Manifest
from zerostart.errors import ConvertError
from zerostart.kernels._specs import _PTR16, _row_warps
from zerostart.kernels._specs import (  # re-exported: other modules import them from here
    ATTENTION_BLOCK_M as ATTENTION_BLOCK_M,
)
from zerostart.kernels._specs import (
    ATTENTION_BLOCK_N as ATTENTION_BLOCK_N,
)
from zerostart.kernels._specs import (
    DEFAULT_GEMM_CONFIGS as DEFAULT_GEMM_CONFIGS,
)
from zerostart.kernels._specs import (
    GemmConfig as GemmConfig,
)
from zerostart.kernels._specs import (
    KernelSpec as KernelSpec,
)
from zerostart.kernels._specs import (
    activation_code as activation_code,
)
from zerostart.kernels._specs import (
    gemm_spec as gemm_spec,
)

# What a tuning run on a GPU (tools/gpu_tune.py) chooses among: small tiles for batch 1
# (M = 16..512 rows: parallelism over N and a short K loop matter most), large ones for
# batch 32. tl.dot needs every block dim >= 16; all fit the 99 KiB of shared memory
# sm_86 / sm_89 offer per block (a config that does not fit is skipped for that arch).
TUNING_GEMM_CONFIGS = (
    GemmConfig(16, 64, 128, num_warps=4, num_stages=4),
    GemmConfig(16, 128, 128, num_warps=4, num_stages=3),
    GemmConfig(32, 32, 128, num_warps=4, num_stages=4),
    GemmConfig(32, 64, 64, num_warps=4, num_stages=4),
    GemmConfig(32, 64, 128, num_warps=4, num_stages=3),
    GemmConfig(32, 128, 64, num_warps=4, num_stages=4),
    GemmConfig(64, 32, 64, num_warps=4, num_stages=4),
    GemmConfig(64, 64, 64, num_warps=4, num_stages=3),
    GemmConfig(64, 64, 128, num_warps=4, num_stages=3),
    GemmConfig(64, 128, 64, num_warps=4, num_stages=4),
    GemmConfig(64, 256, 64, num_warps=8, num_stages=3),
    GemmConfig(128, 64, 64, num_warps=4, num_stages=4),
    GemmConfig(128, 128, 64, num_warps=8, num_stages=3),
    GemmConfig(128, 128, 64, num_warps=4, num_stages=4),
    GemmConfig(128, 256, 64, num_warps=8, num_stages=3),
    GemmConfig(256, 128, 64, num_warps=8, num_stages=3),
)
# Split-K for the residual GEMMs (attention output, FFN down) of few rows: the K slices
# are summed by the LayerNorm that follows (``splitk_layer_norm``), so splitting costs no
# launch. Selected by ``zerostart.engine.cuda.engine`` for M <= SPLITK_MAX_ROWS.
SPLITK_CONFIGS = (
    GemmConfig(16, 64, 128, num_warps=4, num_stages=4),
    GemmConfig(32, 64, 64, num_warps=4, num_stages=4),
)
SPLITK_FACTORS = (2, 4)
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
GEMM_PARTIAL_SIGNATURE = (
    ("a_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("w_ptr", "*fp32"),
    ("M", "i32"),
    ("N", "i32"),
    ("K", "i32"),
    ("lda", "i32"),
)
SPLITK_LAYER_NORM_SIGNATURE = (
    ("w_ptr", "*fp32"),
    ("bias_ptr", _PTR16),
    ("res_ptr", _PTR16),
    ("g_ptr", _PTR16),
    ("b_ptr", _PTR16),
    ("y_ptr", _PTR16),
    ("M", "i32"),
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


def gemm_sites(manifest: Manifest) -> list[tuple[str, int, bool, int, int]]:
    """(site, activation, has_residual, N, K) for every GEMM of the forward pass."""
    if manifest.architecture == "modernbert":
        from zerostart.kernels.modernbert_variants import modernbert_gemm_sites

        return modernbert_gemm_sites(manifest)
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
        if manifest.architecture == "deberta-v2":  # ContextPooler: its own activation
            pre_act = ACT_TANH if c.pooler_act == "tanh" else activation_code(c.pooler_act)
        sites.append(("pooler", pre_act, False, h, h))
        sites.append(("classifier", ACT_NONE, False, n_labels, h))
    elif manifest.task == "token-classification":
        sites.append(("classifier", ACT_NONE, False, n_labels, h))
    return sites


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
    if manifest.architecture == "modernbert":
        from zerostart.kernels.modernbert_variants import modernbert_specs

        return modernbert_specs(manifest, gemm_configs)
    specs: dict[str, KernelSpec] = {}
    for _site, act, has_res, n, k in gemm_sites(manifest):
        for cfg in gemm_configs:
            aligned = gemm_aligned(n, k) and k % cfg.block_k == 0
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
    if manifest.architecture == "deberta-v2":  # disentangled attention in place of BERT's
        from zerostart.kernels.deberta_variants import deberta_attention_specs

        del specs[att.key]  # (the embedding is BERT's, on a zero position table)
        for spec in deberta_attention_specs(manifest):
            specs[spec.key] = spec
    for spec in splitk_specs(manifest, block_h, warps):
        specs[spec.key] = spec
    return list(specs.values())


def splitk_specs(manifest: Manifest, block_h: int, warps: int) -> list[KernelSpec]:
    """Split-K partial GEMMs for the residual sites their K allows, and their LayerNorms."""
    sites = [
        (n, k) for site, _a, _r, n, k in gemm_sites(manifest) if site in ("attn_out", "ffn_down")
    ]
    h = manifest.config.hidden_size
    out: list[KernelSpec] = []
    used: set[int] = set()
    for cfg in SPLITK_CONFIGS:
        for split in SPLITK_FACTORS:
            if not any(gemm_aligned(n, k) and k % (split * cfg.block_k) == 0 for n, k in sites):
                continue
            used.add(split)
            out.append(
                KernelSpec(
                    key=f"gemm_partial.al1.{cfg.name}.x{split}",
                    op="gemm_partial",
                    signature=GEMM_PARTIAL_SIGNATURE,
                    constexprs={
                        "BLOCK_M": cfg.block_m,
                        "BLOCK_N": cfg.block_n,
                        "BLOCK_K": cfg.block_k,
                        "GROUP_M": cfg.group_m,
                        "SPLIT_K": split,
                    },
                    grid=("cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)", "SPLIT_K", "1"),
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    aligned_args=("N", "K", "lda"),
                )
            )
    for split in sorted(used):
        out.append(
            KernelSpec(
                key=f"splitk_layer_norm.h{block_h}.x{split}",
                op="splitk_layer_norm",
                signature=SPLITK_LAYER_NORM_SIGNATURE,
                constexprs={"SPLIT_K": split, "BLOCK_H": block_h},
                grid=("ROWS", "1", "1"),
                num_warps=warps,
                aligned_args=("H",) if h % 16 == 0 else (),
            )
        )
    return out


def tuning_specs(manifest: Manifest) -> list[KernelSpec]:
    """Every ``TUNING_GEMM_CONFIGS`` build of the model's encoder GEMM sites (what a tuning run times).

    The encoder's four sites (QKV, attention output, FFN up and down) with their
    epilogues, aligned builds only (where N and K allow); the heads run on a few
    rows and keep the defaults.
    """
    specs: dict[str, KernelSpec] = {}
    for site, act, has_res, n, k in gemm_sites(manifest):
        if site not in ("qkv", "attn_out", "ffn_up", "ffn_down"):
            continue
        for cfg in TUNING_GEMM_CONFIGS:
            if gemm_aligned(n, k) and k % cfg.block_k == 0:
                spec = gemm_spec(act, has_res, True, cfg)
                specs.setdefault(spec.key, spec)
    return list(specs.values())


# -- measured GEMM choices (tools/gpu_tune.py) --------------------------------------
TUNING_DIR = Path(__file__).resolve().parent / "tuning"


def load_tuning(path: str | Path) -> list[GemmChoice]:
    """The choices of one ``tools/gpu_tune.py`` result file (``{"arch", "choices": [...]}``).

    Raises ConvertError naming the file when it is not such a file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        arch = str(data["arch"])
        out = [
            GemmChoice(arch=arch, n=int(c["n"]), k=int(c["k"]), m=int(c["m"]), config=c["config"])
            for c in data["choices"]
        ]
        for c in out:
            _check_choice(c)
    except OSError as exc:
        raise ConvertError(path, f"cannot read the GEMM tuning file: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ConvertError(
            path,
            f"not a GEMM tuning file ({exc!r})",
            hint="write it with `python tools/gpu_tune.py` on the GPU",
        ) from exc
    return out


# A measured config is compiled as it is named: tl.dot needs every block dim a power of
# two >= 16; 1024 is past any tile that fits a GPU's shared memory with fp16 operands.
_BLOCK_DIMS = tuple(1 << i for i in range(4, 11))
_WARPS = (1, 2, 4, 8, 16, 32)


def _check_choice(c: GemmChoice) -> None:
    """ValueError unless ``c`` names a problem the kernels take (i32 sizes) and a compilable config."""
    if not all(1 <= x <= launch.I32_MAX for x in (c.n, c.k, c.m)):
        raise ValueError(f"sizes of {c} must be 1..{launch.I32_MAX}")
    cfg = GemmConfig.parse(c.config)
    if (
        {cfg.block_m, cfg.block_n, cfg.block_k} - set(_BLOCK_DIMS)
        or cfg.num_warps not in _WARPS
        or not 1 <= cfg.num_stages <= 8
    ):
        raise ValueError(
            f"{c.config!r}: block dims must be one of {_BLOCK_DIMS}, warps one of {_WARPS},"
            " stages 1..8"
        )


def packaged_tuning(archs: Sequence[str]) -> list[GemmChoice]:
    """The tuning results shipped with zerostart (``kernels/tuning/<arch>.json``) for ``archs``."""
    out: list[GemmChoice] = []
    for arch in sorted(set(archs)):
        path = TUNING_DIR / f"{arch}.json"
        if path.is_file():
            out += load_tuning(path)
    return out


def model_choices(manifest: Manifest, choices: Sequence[GemmChoice]) -> tuple[GemmChoice, ...]:
    """The choices that apply to this model's GEMM sites (same N and K), deduplicated."""
    sites = {(n, k) for _s, _a, _r, n, k in gemm_sites(manifest)}
    seen: dict[tuple[str, int, int, int], GemmChoice] = {}
    for c in choices:
        if (c.n, c.k) in sites:
            seen[(c.arch, c.n, c.k, c.m)] = c
    return tuple(seen[k] for k in sorted(seen))


def tuned_configs(
    choices: Sequence[GemmChoice], base: tuple[GemmConfig, ...] = DEFAULT_GEMM_CONFIGS
) -> tuple[GemmConfig, ...]:
    """``base`` plus every config the choices name, in a stable order."""
    out = list(base)
    for name in sorted({c.config for c in choices}):
        cfg = GemmConfig.parse(name)
        if cfg not in out:
            out.append(cfg)
    return tuple(out)


def apply_tuning(kernels_dir: Path, manifest: Manifest, choices: Sequence[GemmChoice]) -> int:
    """Write the choices that fit a prebuilt ``kernels/`` folder into its manifest's gemm_table.

    A choice fits when it is for one of the folder's archs, one of this model's
    (N, K) sites, and a block config the folder holds. Returns how many were kept.
    """
    km = launch.KernelManifest.load(kernels_dir)
    have = {launch.gemm_config_name(v) for v in km.variants if v.op == "gemm"}
    table = tuple(
        c for c in model_choices(manifest, choices) if c.config in have and c.arch in km.archs
    )
    km = replace(km, gemm_table=table)
    (Path(kernels_dir) / launch.KERNELS_MANIFEST_NAME).write_text(km.to_json(), encoding="utf-8")
    return len(table)
