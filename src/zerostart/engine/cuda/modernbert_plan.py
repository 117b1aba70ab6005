"""ModernBERT's forward pass as a GPU launch plan: which kernel runs when, on which buffers.

The plan is data (``Launch``: a compiled variant, its problem sizes, its
arguments by name), made from device addresses alone, so the same function
serves ``CudaEngine`` (addresses from the driver's allocator; captured into a
CUDA graph) and the unit tests, which run the plan's kernels in Triton's CPU
interpreter over tensors standing in for device memory
(tests/unit/test_kernels_interpret_engine.py). Per layer, in
``zerostart.bundle.modernbert_layout``'s order::

    h   = x (layer 0) | ln_nobias(x; attn.norm)
    qkv = gemm(h, attn.qkv, zero bias)              query block pre-scaled at convert
    rotary(qkv; cos/sin of this layer's theta)      in place on q and k
    ctx = attention_band(qkv; window)               global layers: window = T
    x   = gemm(ctx, attn.out, zero bias) + x        residual epilogue, in place
    h   = ln_nobias(x; ffn.norm)
    f   = gemm_geglu(h, ffn.wi)                     act(h Wi[:, :I]) * h Wi[:, I:]
    x   = gemm(f, ffn.wo, zero bias) + x
    ... then out = ln_nobias(x; final.norm) and the task head:
    embeddings: out; token classification: gemm(ln_nobias(act(out Wd + bd)), Wc) + bc;
    sequence classification: the same on the [CLS] row (strided A) or on mean_pool(out).

Rotary tables (``rope_tables``) are computed here in float32 arithmetic as
transformers does (``inv_freq = 1 / theta^(2i/d)``, ``angle = position x
inv_freq``, one rounding per step), with ``cos``/``sin`` correctly rounded.

Runtime module: standard library only.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from zerostart.bundle.launch import KernelManifest, KernelVariant, activation_code
from zerostart.bundle.layout import layer_prefix
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.modernbert_layout import is_global

# (op, act, has_res, m, n, k, lda) -> the chosen GEMM-like variant (the engine's select_gemm)
GemmChooser = Callable[[str, int, bool, int, int, int, int], KernelVariant]


@dataclass(frozen=True)
class Launch:
    variant: KernelVariant
    sizes: dict[str, int]
    args: dict[str, int | float]


@dataclass(frozen=True)
class ModernBertBuffers:
    """Device addresses the plan reads and writes (sized for the largest bucket pair).

    ``inputs``: int32 token ids ``[B*T]`` then (at ``lens``) lengths ``[B]``;
    ``x``, ``h``, ``ctx``, ``tmp``: fp16 ``[B*T, H]``; ``qkv``: ``[B*T, 3H]``;
    ``f``: ``[B*T, I]``; ``pooled``, ``pooled2``: ``[B, H]``; ``logits``:
    ``[B*T, labels]``; ``zero_bias``: fp16 zeros of ``max(3H, labels)``;
    ``rope_global`` / ``rope_local``: (cos, sin) float32 ``[T_max, d/2]`` each.
    """

    ids: int
    lens: int
    x: int
    h: int
    ctx: int
    tmp: int
    qkv: int
    f: int
    pooled: int
    pooled2: int
    logits: int
    zero_bias: int
    rope_global: tuple[int, int]
    rope_local: tuple[int, int]


def rope_tables(theta: float, head_dim: int, positions: int) -> tuple[array[float], array[float]]:
    """(cos, sin) float32 ``[positions, head_dim/2]`` flat, in transformers' float32 steps."""
    half = head_dim // 2
    f32 = array("f", [0.0])

    def r(x: float) -> float:  # round to float32
        f32[0] = x
        return f32[0]

    inv = [r(1.0 / r(r(theta) ** r(r(2 * i) / head_dim))) for i in range(half)]
    angles = array("f", [p * f for p in range(positions) for f in inv])  # exact fp32 products
    return array("f", map(math.cos, angles)), array("f", map(math.sin, angles))


def output_rows(manifest: Manifest, b: int, t: int) -> tuple[str, int, int]:
    """(buffer field, rows, width) of the forward's output at bucket (b, t)."""
    c = manifest.config
    if manifest.task == "embeddings":
        return "h", b * t, c.hidden_size
    if manifest.task == "token-classification":
        return "logits", b * t, len(manifest.labels)
    return "logits", b, len(manifest.labels)


def modernbert_plan(
    manifest: Manifest,
    kernels: KernelManifest,
    weights: Mapping[str, int],
    buf: ModernBertBuffers,
    b: int,
    t: int,
    choose: GemmChooser,
) -> list[Launch]:
    """Every launch of one ModernBERT forward pass at bucket (b, t), in order.

    ``weights``: device address of every tensor of ``modernbert_shapes``;
    ``choose``: the GEMM block-config rule (``launch.select_gemm`` in the engine).
    Raises EngineError (from ``kernels.find``/``choose``) for a kernel the bundle lacks.
    """
    c = manifest.config
    n, h, inter = b * t, c.hidden_size, c.intermediate_size
    eps = float(c.layer_norm_eps)
    w = weights
    ln = kernels.find("ln_nobias", GATHER=0)
    rot = kernels.find("rotary")
    att = kernels.find("attention_band")

    def norm(x: int, weight: str, y: int, rows: int) -> Launch:
        args: dict[str, int | float] = {
            "x_ptr": x,
            "ids_ptr": buf.ids,
            "w_ptr": w[weight],
            "y_ptr": y,
            "H": h,
            "eps": eps,
        }
        return Launch(ln, {"ROWS": rows}, args)

    def gemm(
        a: int, weight: str, c_ptr: int, m: int, *, act: int = 0, res: int = 0, lda: int = 0
    ) -> Launch:
        k, nn = _shape(manifest, weight)
        lda = lda or k
        bias = weight[: -len(".weight")] + ".bias"
        args: dict[str, int | float] = {
            "a_ptr": a,
            "b_ptr": w[weight],
            "bias_ptr": w.get(bias, buf.zero_bias),
            "res_ptr": res or c_ptr,
            "c_ptr": c_ptr,
            "M": m,
            "N": nn,
            "K": k,
            "lda": lda,
            "ldc": nn,
        }
        return Launch(choose("gemm", act, bool(res), m, nn, k, lda), {"M": m, "N": nn}, args)

    plan = [
        Launch(
            kernels.find("ln_nobias", GATHER=1),
            {"ROWS": n},
            {
                "x_ptr": w["embed.word"],
                "ids_ptr": buf.ids,
                "w_ptr": w["embed.norm.weight"],
                "y_ptr": buf.x,
                "H": h,
                "eps": eps,
            },
        )
    ]
    act = activation_code(c.hidden_act)
    for i in range(c.num_layers):
        p = layer_prefix(i)
        glob = is_global(manifest, i)
        src = buf.x
        if i > 0:
            plan.append(norm(buf.x, p + "attn.norm.weight", buf.h, n))
            src = buf.h
        cos, sin = buf.rope_global if glob else buf.rope_local
        window = t if glob else c.local_window
        geglu = choose("gemm_geglu", act, False, n, inter, h, h)
        plan += [
            gemm(src, p + "attn.qkv.weight", buf.qkv, n),
            Launch(
                rot,
                {"B": b, "T": t},
                {"qkv_ptr": buf.qkv, "cos_ptr": cos, "sin_ptr": sin, "T": t, "H": h},
            ),
            Launch(
                att,
                {"B": b, "T": t},
                {
                    "qkv_ptr": buf.qkv,
                    "lens_ptr": buf.lens,
                    "out_ptr": buf.ctx,
                    "T": t,
                    "H": h,
                    "window": window,
                },
            ),
            gemm(buf.ctx, p + "attn.out.weight", buf.x, n, res=buf.x),
            norm(buf.x, p + "ffn.norm.weight", buf.h, n),
            Launch(
                geglu,
                {"M": n, "N": inter},
                {
                    "a_ptr": buf.h,
                    "b_ptr": w[p + "ffn.wi.weight"],
                    "c_ptr": buf.f,
                    "M": n,
                    "N": inter,
                    "K": h,
                    "lda": h,
                },
            ),
            gemm(buf.f, p + "ffn.wo.weight", buf.x, n, res=buf.x),
        ]
    plan.append(norm(buf.x, "final.norm.weight", buf.h, n))
    if manifest.task == "embeddings":
        return plan
    head_act = activation_code(c.classifier_act)
    if manifest.task == "token-classification":
        plan += [
            gemm(buf.h, "head.dense.weight", buf.ctx, n, act=head_act),
            norm(buf.ctx, "head.norm.weight", buf.tmp, n),
            gemm(buf.tmp, "head.classifier.weight", buf.logits, n),
        ]
        return plan
    if c.classifier_pooling == "mean":
        pool = kernels.find("mean_pool")
        plan.append(
            Launch(
                pool,
                {"B": b, "H": h},
                {"x_ptr": buf.h, "lens_ptr": buf.lens, "y_ptr": buf.pooled, "T": t, "H": h},
            )
        )
        plan.append(gemm(buf.pooled, "head.dense.weight", buf.pooled2, b, act=head_act))
    else:  # [CLS] rows read in place: row i of A is token 0 of sequence i (stride T*H)
        plan.append(gemm(buf.h, "head.dense.weight", buf.pooled2, b, act=head_act, lda=t * h))
    plan += [
        norm(buf.pooled2, "head.norm.weight", buf.pooled, b),
        gemm(buf.pooled, "head.classifier.weight", buf.logits, b),
    ]
    return plan


def _shape(manifest: Manifest, weight: str) -> tuple[int, int]:
    from zerostart.bundle.modernbert_layout import modernbert_shapes

    k, n = modernbert_shapes(manifest)[weight]
    return k, n
