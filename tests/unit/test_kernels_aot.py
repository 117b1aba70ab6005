"""Ahead-of-time compilation of every kernel for sm_80 and sm_90, without a GPU.

Checks what a driver would check on load: each cubin is an NVIDIA ELF for
exactly the named arch with the CUDA 12 ELF ABI, each PTX targets sm_80 with
ISA 8.0, the manifest round-trips and every variant's launch data is sane.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zerostart.bundle.launch import KERNELS_DIR, PTX_KEY, KernelManifest
from zerostart.bundle.manifest import Manifest
from zerostart.errors import ConvertError

pytest.importorskip("triton")

from tiny_models import tiny_manifest
from zerostart.kernels import aot
from zerostart.kernels.variants import GemmConfig, model_specs

ONE_CONFIG = (GemmConfig(64, 64, 32, num_warps=4, num_stages=2),)


def _manifest(task: str = "sequence-classification", arch: str = "bert") -> Manifest:
    return tiny_manifest(
        arch, task, hidden=64, layers=1, heads=2, ffn=128, max_positions=64, device="cuda"
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bundle")
    data = aot.compile_for_bundle(_manifest(), out, ["sm_90", "sm_80"], gemm_configs=ONE_CONFIG)
    return out, data


def test_every_kernel_is_compiled_for_each_arch_and_ptx(compiled: tuple[Path, dict]) -> None:
    out, data = compiled
    km = KernelManifest.load(out / KERNELS_DIR)
    assert km.archs == ("sm_80", "sm_90")
    assert {v.op for v in km.variants} == {
        "gemm",
        "layer_norm",
        "embed",
        "attention",
        "gemm_partial",
        "splitk_layer_norm",
    }
    # GEMM epilogues of a BERT classifier: qkv, out+res, up+gelu, pooler tanh, classifier (N=3: unaligned)
    gemm = {
        (v.params["ACT"], v.params["HAS_RES"], v.params["ALIGNED"])
        for v in km.variants
        if v.op == "gemm"
    }
    assert gemm == {(0, 0, 1), (0, 1, 1), (1, 0, 1), (4, 0, 1), (0, 0, 0)}
    for v in km.variants:
        assert set(v.images) == {"sm_80", "sm_90", PTX_KEY}
        for arch in ("sm_80", "sm_90"):
            blob = (out / KERNELS_DIR / v.images[arch].file).read_bytes()
            aot.check_cubin(blob, int(arch[3:]))
            assert aot.cubin_arch(blob) == int(arch[3:])
            assert v.entry.encode() in blob  # the symbol the runtime asks cuModuleGetFunction for
        ptx = (out / KERNELS_DIR / v.images[PTX_KEY].file).read_text()
        assert ".version 8.0" in ptx and ".target sm_80\n" in ptx
        assert f".entry {v.entry}(" in ptx
    assert data["compiler"]["triton"] and "12." in data["compiler"]["ptxas_sm_lt_100"]
    assert json.loads(km.to_json()) == data


def test_sm90_gemm_uses_hopper_path_and_opts_into_large_shared_memory(
    compiled: tuple[Path, dict],
) -> None:
    out, _ = compiled
    km = KernelManifest.load(out / KERNELS_DIR)
    for v in km.variants:
        for image in v.images.values():
            assert image.block == (32 * image.num_warps, 1, 1)
            assert image.shared_bytes <= 227 * 1024
    big = aot.compile_specs(
        [s for s in model_specs(_manifest(), (GemmConfig(128, 128, 64, 8, 3),)) if s.op == "gemm"][
            :1
        ],
        ["sm_90"],
        out / "big",
    )[0]
    assert big.images["sm_90"].shared_bytes > 48 * 1024  # exercises the cuFuncSetAttribute path


def test_cubin_check_refuses_wrong_arch_and_non_elf(compiled: tuple[Path, dict]) -> None:
    out, _ = compiled
    km = KernelManifest.load(out / KERNELS_DIR)
    blob = (out / KERNELS_DIR / km.variants[0].images["sm_80"].file).read_bytes()
    with pytest.raises(ConvertError, match="not sm_90"):
        aot.check_cubin(blob, 90)
    with pytest.raises(ConvertError, match="not an ELF"):
        aot.check_cubin(b"// ptx text", 80)


def test_arch_parsing_and_dtype_refusals(tmp_path: Path) -> None:
    assert aot.parse_arch("SM_86") == 86
    for bad in ("90", "sm_7x", "compute_90"):
        with pytest.raises(ConvertError, match="not a GPU arch"):
            aot.parse_arch(bad)
    with pytest.raises(ConvertError, match="older than sm_80"):
        aot.parse_arch("sm_75")

    with pytest.raises(ConvertError, match="float16"):
        aot.compile_for_bundle(_manifest()._replace(dtype="float32"), tmp_path, ["sm_90"])


def test_variant_set_follows_the_model() -> None:
    distil_tok = model_specs(_manifest("token-classification", "distilbert"), ONE_CONFIG)
    keys = {s.key for s in distil_tok}
    assert "embed.types0.h64" in keys  # DistilBERT: no token type table
    assert not any(
        s.op == "gemm" and s.constexprs["ACT"] in (3, 4) for s in distil_tok
    )  # no pooler
    distil_cls = model_specs(_manifest("sequence-classification", "distilbert"), ONE_CONFIG)
    assert any(
        s.op == "gemm" and s.constexprs["ACT"] == 3 for s in distil_cls
    )  # ReLU pre_classifier

    odd = _manifest()
    odd = odd._replace(config=odd.config._replace(num_heads=4, hidden_size=48))
    with pytest.raises(ConvertError, match="power of two"):
        model_specs(odd)


def test_wrong_triton_series_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Kernels compiled by another Triton (e.g. a GPU machine's own 3.6) would use other ptxas
    and options: refuse, and say to pin Triton or copy kernels compiled elsewhere."""
    import triton

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    with pytest.raises(ConvertError, match=r"Triton 3\.9\.x, and this is Triton 3\.6\.0") as info:
        aot.compile_for_bundle(_manifest(), tmp_path, ["sm_90"], gemm_configs=ONE_CONFIG)
    assert "copy kernels compiled elsewhere" in (info.value.hint or "")


def test_convert_copies_prebuilt_kernels_for_the_same_shape_only(
    compiled: tuple[Path, dict], tmp_path: Path
) -> None:
    """Kernels depend on the model's shape, not its weights: a folder compiled for the same
    shape is copied into a new bundle; one for another shape is refused by name."""

    from zerostart.model.convert import check_prebuilt_kernels

    out, _ = compiled
    kernels = out / KERNELS_DIR
    m = _manifest()
    check_prebuilt_kernels(m, kernels)  # same shape; any GEMM block config compiled will do
    wider = m._replace(config=m.config._replace(hidden_size=128))
    with pytest.raises(ConvertError, match="compiled for another model shape: missing"):
        check_prebuilt_kernels(wider, kernels)
    longer = m._replace(max_length=32)
    with pytest.raises(ConvertError, match="sequence buckets"):
        check_prebuilt_kernels(longer, kernels)


# -- ModernBERT (kernels/triton_modernbert.py, plan in engine/cuda/modernbert_plan.py) --------
MODERNBERT_OPS = {"gemm", "gemm_geglu", "ln_nobias", "rotary", "attention_band", "mean_pool"}


@pytest.fixture(scope="module")
def modernbert_compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    from interpret_engine import tiny_modernbert

    manifest, _ = tiny_modernbert("sequence-classification", pooling="mean")
    out = tmp_path_factory.mktemp("modernbert")
    aot.compile_for_bundle(manifest, out, ["sm_90", "sm_80"], gemm_configs=ONE_CONFIG)
    return out, manifest


def test_modernbert_kernels_compile_for_each_arch_and_ptx(
    modernbert_compiled: tuple[Path, Manifest],
) -> None:
    """Every ModernBERT kernel (rotary, GeGLU GEMM, bias-free norm, banded attention, mean
    pooling) is compiled ahead of time, without a GPU, for sm_80 and sm_90 plus sm_80 PTX."""
    out, _ = modernbert_compiled
    km = KernelManifest.load(out / KERNELS_DIR)
    assert {v.op for v in km.variants} == MODERNBERT_OPS
    # pre-LN, no bias: no BERT LayerNorm / embed / split-K kernels are built
    assert {v.key for v in km.variants if v.op == "ln_nobias"} == {
        "ln_nobias.g0.h32",
        "ln_nobias.g1.h32",
    }
    for v in km.variants:
        assert set(v.images) == {"sm_80", "sm_90", PTX_KEY}
        for arch in ("sm_80", "sm_90"):
            blob = (out / KERNELS_DIR / v.images[arch].file).read_bytes()
            aot.check_cubin(blob, int(arch[3:]))
            assert v.entry.encode() in blob
        ptx = (out / KERNELS_DIR / v.images[PTX_KEY].file).read_text()
        assert ".version 8.0" in ptx and ".target sm_80\n" in ptx
        assert f".entry {v.entry}(" in ptx


def test_modernbert_plan_finds_every_kernel_in_the_compiled_manifest(
    modernbert_compiled: tuple[Path, Manifest],
) -> None:
    """The engine's launch plan asks only for kernels convert compiled, at every bucket pair,
    and every launch's arguments are exactly the compiled signature's."""
    from interpret_engine import fake_buffers
    from zerostart.bundle.launch import select_gemm
    from zerostart.bundle.modernbert_layout import modernbert_shapes
    from zerostart.engine.cuda.modernbert_plan import modernbert_plan

    out, manifest = modernbert_compiled
    km = KernelManifest.load(out / KERNELS_DIR)
    weights = {name: 0x1000 * (i + 1) for i, name in enumerate(modernbert_shapes(manifest))}

    def choose(op: str, act: int, res: bool, m: int, n: int, k: int, lda: int):  # type: ignore[no-untyped-def]
        return select_gemm(km, act=act, has_res=res, m=m, n=n, k=k, lda=lda, ldc=n, sm_count=132, op=op)  # fmt: skip

    used = set()
    for b in km.batch_buckets:
        for t in km.seq_buckets:
            for step in modernbert_plan(manifest, km, weights, fake_buffers(), b, t, choose):
                assert set(step.args) == {name for name, _ in step.variant.signature}
                assert min(step.variant.grid_for(step.sizes)) >= 1
                used.add(step.variant.op)
    assert used == MODERNBERT_OPS


def test_deberta_attention_kernels_compile_for_each_arch_and_ptx(tmp_path: Path) -> None:
    """DeBERTa: BERT's GEMM / LayerNorm / split-K / embed builds with the disentangled-attention
    kernels (kernels/triton_deberta.py) in place of BERT's attention."""

    m = _manifest("sequence-classification", "deberta-v2")
    m = m._replace(config=m.config._replace(relative_span=16, pooler_act="gelu"))
    specs = model_specs(m, ONE_CONFIG)
    ops = {s.op for s in specs}
    assert {"rel_proj", "attention_rel", "embed"} <= ops and "attention" not in ops
    pooler = {s.constexprs["ACT"] for s in specs if s.op == "gemm"}
    assert not {3, 4} & pooler  # the ContextPooler's GELU, not DistilBERT's ReLU or BERT's tanh
    variants = aot.compile_specs(
        [s for s in specs if s.op in ("rel_proj", "attention_rel")], ["sm_90", "sm_80"], tmp_path
    )
    for v in variants:
        assert set(v.images) == {"sm_80", "sm_90", PTX_KEY}
        for arch in ("sm_80", "sm_90"):
            blob = (tmp_path / v.images[arch].file).read_bytes()
            aot.check_cubin(blob, int(arch[3:]))
            assert v.entry.encode() in blob
        assert f".entry {v.entry}(" in (tmp_path / v.images[PTX_KEY].file).read_text()
