"""Run the GPU engine's ModernBERT launch plan in Triton's CPU interpreter (tests only).

``kernel_forward`` builds the plan with ``engine.cuda.modernbert_plan`` over a
fake address space (one torch byte buffer per allocation; an address is a base
plus an offset, as on the device) and launches every step's Triton function
with the variant's constexprs and grid, exactly as the manifest describes the
launch to the engine. Needs ``TRITON_INTERPRET=1`` set before
``zerostart.kernels`` is imported. Importable from every test folder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tiny_models import tiny_manifest
from zerostart.engine.cuda.launch import (
    KernelManifest,
    KernelVariant,
    batch_buckets,
    select_gemm,
    seq_buckets,
)
from zerostart.engine.cuda.modernbert_plan import (
    ModernBertBuffers,
    modernbert_plan,
    output_rows,
    rope_tables,
)
from zerostart.engine.modernbert_layout import modernbert_shapes
from zerostart.model.manifest import Manifest

_ALIGN = 256
_DTYPES = {"*fp16": "float16", "*fp32": "float32", "*i32": "int32"}


def tiny_modernbert(
    task: str,
    *,
    pooling: str = "cls",
    window: int = 8,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 2,
    ffn: int = 48,
    max_positions: int = 256,
    vocab: int = 50,
) -> tuple[Manifest, dict[str, np.ndarray]]:
    """A ModernBERT (default: 3 layers, global, local, local; d = 16) with random fp16-exact
    weights; ``window`` is ``local_window`` (keys per side). tools/gpu_prep_modernbert.py
    makes its larger GPU parity model with this too."""
    m = tiny_manifest(
        "modernbert",
        task,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        max_positions=max_positions,
        device="cuda",
    )
    m = dataclasses.replace(
        m,
        config=dataclasses.replace(
            m.config,
            vocab_size=vocab,
            layer_norm_eps=1e-5,
            rope_theta=160_000.0,
            local_rope_theta=10_000.0,
            local_window=window,
            global_every=3,
            classifier_pooling=pooling,
            classifier_act="gelu",
        ),
    )
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in modernbert_shapes(m).items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[0] if len(shape) == 2 else 1
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        weights[name] = a.astype(np.float16).astype(np.float32)  # what the GPU bundle holds
    return m, weights


def spec_manifest(manifest: Manifest) -> KernelManifest:
    """The kernel manifest ``aot`` would write, without images (nothing compiled)."""
    from zerostart.kernels.variants import GemmConfig, model_specs

    specs = model_specs(manifest, (GemmConfig(16, 16, 16, num_warps=4, num_stages=1),))
    variants = tuple(
        KernelVariant(
            key=s.key,
            op=s.op,
            entry=s.op,
            params={**s.constexprs, **s.params},
            signature=s.signature,
            grid=s.grid,
        )
        for s in specs
    )
    # Interpreted blocks of 16: the attention/rotary/pool tiles too (the AOT ones are larger).
    small = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_T": 16, "BLOCK_H": None}
    out = []
    for v in variants:
        if v.op in ("attention_band", "rotary", "mean_pool"):
            p = {k: (small[k] or x) if k in small else x for k, x in v.params.items()}
            v = dataclasses.replace(v, params=p)
        out.append(v)
    return KernelManifest(
        archs=(),
        ptx_arch="sm_80",
        compiler={},
        batch_buckets=batch_buckets(4),
        seq_buckets=seq_buckets(manifest.max_length),
        variants=tuple(out),
    )


class FakeMemory:
    """Device memory as torch byte buffers; addresses are ints like the driver's."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.blocks: list[tuple[int, Any]] = []
        self.top = 1 << 20

    def alloc(self, nbytes: int) -> int:
        ptr, size = self.top, -(-max(nbytes, 1) // _ALIGN) * _ALIGN
        self.blocks.append((ptr, self.torch.zeros(size, dtype=self.torch.uint8)))
        self.top += size + _ALIGN
        return ptr

    def upload(self, data: Any) -> int:
        raw = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        ptr = self.alloc(raw.nbytes)
        self.blocks[-1][1][: raw.nbytes] = self.torch.from_numpy(raw.copy())
        return ptr

    def view(self, ptr: int, dtype: str) -> Any:
        for base, block in self.blocks:
            if base <= ptr < base + block.numel():
                return block[ptr - base :].view(getattr(self.torch, _DTYPES[dtype]))
        raise AssertionError(f"address {ptr:#x} is in no allocation")


def run_plan(plan: list[Any], mem: FakeMemory) -> None:
    from zerostart.kernels import triton_kernels, triton_modernbert

    fns = {**triton_kernels.KERNELS, **triton_modernbert.KERNELS}
    for step in plan:
        v = step.variant
        fn = fns[v.op]
        args = [
            mem.view(int(step.args[name]), d) if d.startswith("*") else step.args[name]
            for name, d in v.signature
        ]
        constexprs = {k: x for k, x in v.params.items() if k in fn.arg_names}
        fn[v.grid_for(step.sizes)](*args, **constexprs)


def kernel_forward(
    torch: Any, manifest: Manifest, weights: dict[str, np.ndarray], ids: np.ndarray, lens: Any
) -> np.ndarray:
    """The plan's output for right-padded ``ids [B, T]`` (float32, the reference's shapes)."""
    c = manifest.config
    b, t = ids.shape
    n, h = b * t, c.hidden_size
    km = spec_manifest(manifest)
    mem = FakeMemory(torch)
    w = {name: mem.upload(a.astype(np.float16)) for name, a in weights.items()}
    d = h // c.num_heads
    fp16 = 2

    def tables(theta: float) -> tuple[int, int]:
        cos, sin = rope_tables(theta, d, t)
        return mem.upload(cos), mem.upload(sin)

    labels = max(1, len(manifest.labels))
    buf = ModernBertBuffers(
        ids=mem.upload(ids.astype(np.int32).reshape(-1)),
        lens=mem.upload(np.asarray(lens, np.int32)),
        x=mem.alloc(n * h * fp16),
        h=mem.alloc(n * h * fp16),
        ctx=mem.alloc(n * h * fp16),
        tmp=mem.alloc(n * h * fp16),
        qkv=mem.alloc(n * 3 * h * fp16),
        f=mem.alloc(n * c.intermediate_size * fp16),
        pooled=mem.alloc(b * h * fp16),
        pooled2=mem.alloc(b * h * fp16),
        logits=mem.alloc(n * labels * fp16),
        zero_bias=mem.alloc(3 * h * fp16),
        rope_global=tables(c.rope_theta),
        rope_local=tables(c.local_rope_theta),
    )

    def choose(op: str, act: int, res: bool, m: int, nn: int, k: int, lda: int) -> KernelVariant:
        return select_gemm(km, act=act, has_res=res, m=m, n=nn, k=k, lda=lda, ldc=nn, sm_count=1, op=op)  # fmt: skip

    run_plan(modernbert_plan(manifest, km, w, buf, b, t, choose), mem)
    field, rows, width = output_rows(manifest, b, t)
    out = mem.view(getattr(buf, field), "*fp16")[: rows * width].float().numpy()
    shape = (b, width) if manifest.task == "sequence-classification" else (b, t, width)
    result: np.ndarray = out.reshape(shape)
    return result


def fake_buffers() -> ModernBertBuffers:
    """Distinct made-up addresses, for plans that are only inspected, never run."""
    names = [f.name for f in dataclasses.fields(ModernBertBuffers)]
    addr = {name: 0x100000 * (i + 1) for i, name in enumerate(names)}
    addr["rope_global"] = (addr["rope_global"], addr["rope_global"] + 0x800)  # type: ignore[assignment]
    addr["rope_local"] = (addr["rope_local"], addr["rope_local"] + 0x800)  # type: ignore[assignment]
    return ModernBertBuffers(**addr)  # type: ignore[arg-type]
