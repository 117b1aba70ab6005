"""Run ``CudaEngine`` with its kernels in Triton's CPU interpreter (tests only).

``engine_forward`` runs the engine itself on tests/fake_libcuda.py and sends each
launch to its Triton function (see its docstring); ``tiny_modernbert`` and
``tiny_deberta`` make a manifest and random weights of those families, and
``fake_buffers`` addresses for plans that are only inspected. Needs ``TRITON_INTERPRET=1`` set before
``zerostart.kernels`` is imported. Importable from every test folder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tiny_models import tiny_manifest
from zerostart.bundle.launch import (
    KernelVariant,
)
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.modernbert_layout import modernbert_shapes
from zerostart.engine.cuda.modernbert_plan import (
    ModernBertBuffers,
)

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
    m = m._replace(
        config=m.config._replace(
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


def fake_buffers() -> ModernBertBuffers:
    """Distinct made-up addresses, for plans that are only inspected, never run."""
    names = [f.name for f in dataclasses.fields(ModernBertBuffers)]
    addr = {name: 0x100000 * (i + 1) for i, name in enumerate(names)}
    addr["rope_global"] = (addr["rope_global"], addr["rope_global"] + 0x800)  # type: ignore[assignment]
    addr["rope_local"] = (addr["rope_local"], addr["rope_local"] + 0x800)  # type: ignore[assignment]
    return ModernBertBuffers(**addr)  # type: ignore[arg-type]


def engine_forward(
    torch: Any, manifest: Manifest, weights: dict[str, np.ndarray], ids: np.ndarray, mask: Any
) -> np.ndarray:
    """``CudaEngine.forward`` itself, its kernels run by Triton's interpreter.

    The engine runs on ``tests/fake_libcuda.py`` (device memory is bytes, copies
    move data) with kernel placeholders from ``write_fake_kernels`` (the variants
    ``aot`` would compile, default block configs), graphs off; every launch the
    engine makes goes, by name and grid, to the Triton function on torch views of
    those bytes. So the staging of inputs, the buffers, the plan and the copy of
    the output back are the engine's own, and only the driver is not.
    """
    import tempfile
    from pathlib import Path

    from fake_libcuda import FakeCuda, write_fake_kernels
    from zerostart.engine.cuda import CudaEngine
    from zerostart.engine.cuda.driver import Driver
    from zerostart.kernels import triton_deberta, triton_kernels, triton_modernbert

    fns = {**triton_kernels.KERNELS, **triton_modernbert.KERNELS, **triton_deberta.KERNELS}
    fake = FakeCuda()
    sizes = {"*fp16": 2, "*fp32": 4, "*i32": 4}

    def view(ptr: int, dtype: str) -> Any:
        buf, off = fake._find(ptr, 1)
        raw = torch.frombuffer(buf, dtype=torch.uint8)[off:]
        raw = raw[: raw.numel() // sizes[dtype] * sizes[dtype]]
        return raw.view(getattr(torch, _DTYPES[dtype]))

    def launch(
        variant: KernelVariant, sizes_: Any, args: Any, stream: int, scratch: int = 0
    ) -> None:
        fn = fns[variant.op]
        call = [
            view(int(args[n]), d) if d.startswith("*") else args[n] for n, d in variant.signature
        ]
        constexprs = {k: x for k, x in variant.params.items() if k in fn.arg_names}
        fn[variant.grid_for(sizes_)](*call, **constexprs)

    with tempfile.TemporaryDirectory() as tmp:
        kernels = write_fake_kernels(manifest, Path(tmp))
        w16 = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
        engine = CudaEngine(
            manifest, w16, kernels_dir=kernels, driver=Driver(fake), capture_graphs=False
        )
        engine.library.launch = launch  # type: ignore[method-assign]
        try:
            out: np.ndarray = engine.forward(ids, mask)
        finally:
            engine.close()
    return out


DEBERTA_CONFIG = {"position_buckets": 16, "max_relative_positions": 64}


def tiny_deberta(
    task: str, *, seed: int = 0, hidden: int = 32, heads: int = 2, max_positions: int = 128
) -> tuple[Manifest, dict[str, np.ndarray]]:
    """A 2-layer DeBERTa-v2 (default d = 16; 16 log buckets: distances past 8 are bucketed) with
    random fp16-exact weights and the bundle's ``rel.index`` (``model.deberta.relative_index``)."""
    from zerostart.bundle.deberta_layout import REL_INDEX, tensor_dtypes, tensor_shapes
    from zerostart.model.deberta import relative_index

    m = tiny_manifest(
        "deberta-v2",
        task,
        hidden=hidden,
        layers=2,
        heads=heads,
        ffn=48,
        max_positions=max_positions,
        device="cuda",
    )
    m = m._replace(
        config=m.config._replace(
            layer_norm_eps=1e-7,
            relative_span=DEBERTA_CONFIG["position_buckets"],
            pooler_act="gelu",
        ),
    )
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    dtypes = tensor_dtypes(m)
    for name, shape in tensor_shapes(m).items():
        if dtypes[name] == "int32":
            config = {**DEBERTA_CONFIG, "max_position_embeddings": m.config.max_position_embeddings}
            weights[name] = relative_index(config, m.config.max_position_embeddings)
            assert name == REL_INDEX and weights[name].shape == shape
            continue
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[0] if len(shape) == 2 else 4
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        weights[name] = a.astype(np.float16).astype(np.float32)
    return m, weights
