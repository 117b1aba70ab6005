"""Launch rules of the GPU engine, without a GPU: grid formulas, variant selection, buckets, schema."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from zerostart.engine.cuda import launch
from zerostart.engine.cuda.launch import KernelImage, KernelManifest, KernelVariant
from zerostart.engine.cuda.module import choose_image, pack_args
from zerostart.errors import BundleError, EngineError


def _gemm(bm: int, bn: int, *, act: int = 0, res: int = 0, aligned: int = 1) -> KernelVariant:
    img = KernelImage(file="x.cubin", num_warps=4, shared_bytes=0)
    return KernelVariant(
        key=f"gemm.{act}.{res}.{aligned}.{bm}x{bn}",
        op="gemm",
        entry="gemm",
        params={"ACT": act, "HAS_RES": res, "ALIGNED": aligned, "BLOCK_M": bm, "BLOCK_N": bn},
        signature=(("a_ptr", "*fp16"), ("M", "i32"), ("eps", "fp32")),
        grid=("cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)", "1", "1"),
        images={"sm_90": img, "ptx": img},
    )


def _km(*variants: KernelVariant) -> KernelManifest:
    return KernelManifest(
        archs=("sm_90",),
        ptx_arch="sm_80",
        compiler={"triton": "x"},
        batch_buckets=(1, 8, 32),
        seq_buckets=(16, 128, 512),
        variants=variants,
    )


def test_grid_formulas() -> None:
    v = _gemm(64, 128)
    assert v.grid_for({"M": 129, "N": 384}) == (3 * 3, 1, 1)
    assert (
        launch.eval_formula("max(B * NUM_HEADS, 1) - min(2, 3) + 7 // 2", {"B": 4, "NUM_HEADS": 12})
        == 49
    )
    with pytest.raises(EngineError, match="needs 'N'"):
        v.grid_for({"M": 1})
    with pytest.raises(EngineError, match="empty grid"):
        v.grid_for({"M": 0, "N": 8})
    for bad in ("__import__('os')", "M ** 2", "M / 2", "M.real", "cdiv(M, b=2)", "'a'"):
        with pytest.raises(BundleError):
            launch.check_formula(bad)


def test_gemm_selection_prefers_filling_tiles_then_parallelism() -> None:
    small, big = _gemm(64, 64), _gemm(128, 128)
    km = _km(small, big, _gemm(64, 64, aligned=0), _gemm(64, 64, act=1))

    def pick(**kw: int) -> KernelVariant:
        base = {"act": 0, "has_res": False, "k": 384, "lda": 384, "ldc": 1152, "sm_count": 132}
        return launch.select_gemm(km, **{**base, **kw})  # type: ignore[arg-type]

    # batch 32 x 128 = 4096 rows, N=1152: 32*9 = 288 big tiles >= 132 SMs -> big tile
    assert pick(m=4096, n=1152) is big
    # batch 1 x 128: neither fills 132 SMs -> the one with more programs
    assert pick(m=128, n=1152) is small
    # N not a multiple of 16 (a 3-label classifier) -> the unaligned build
    assert pick(m=4096, n=3, ldc=3).params["ALIGNED"] == 0
    assert pick(m=4096, n=1152, act=1).params["ACT"] == 1
    with pytest.raises(EngineError, match="no GEMM kernel"):
        pick(m=1, n=16, has_res=True)


def test_buckets() -> None:
    assert launch.seq_buckets(128) == (16, 32, 64, 128)
    assert launch.seq_buckets(200) == (16, 32, 64, 128, 200)
    assert launch.batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert launch.bucket(9, (1, 8, 32)) == 32 and launch.bucket(8, (1, 8, 32)) == 8
    with pytest.raises(EngineError, match="exceeds"):
        launch.bucket(33, (1, 8, 32))
    assert [launch.next_pow2(n) for n in (1, 2, 3, 384, 768, 1024)] == [1, 2, 4, 512, 1024, 1024]


def test_activation_codes_match_cpu_engine_names() -> None:
    from zerostart.engine.layout import SUPPORTED_ACTS

    codes = {a: launch.activation_code(a) for a in SUPPORTED_ACTS}
    assert codes["gelu"] == launch.ACT_GELU_ERF and codes["gelu_new"] == launch.ACT_GELU_TANH
    with pytest.raises(EngineError):
        launch.activation_code("swish")


def test_manifest_round_trip_and_schema_errors(tmp_path: Path) -> None:
    km = _km(_gemm(64, 64), _gemm(128, 128))
    (tmp_path / "manifest.json").write_text(km.to_json())
    assert KernelManifest.load(tmp_path) == km
    data = json.loads(km.to_json())
    for mutate, message in [
        (lambda d: d.update(format_version=2), "not supported"),
        (lambda d: d["variants"][0]["signature"].append(["x", "*bf17"]), "dtype"),
        (lambda d: d["variants"][0]["images"].pop("sm_90"), "no image for"),
        (lambda d: d["variants"][1].update(key=d["variants"][0]["key"]), "twice"),
        (
            lambda d: d["variants"][0]["images"]["ptx"].update(file="../../etc/passwd"),
            "leaves kernels",
        ),
        (lambda d: d.update(seq_buckets=[128, 16]), "increasing"),
        (lambda d: d["variants"][0].update(grid=["M ** 2", "1", "1"]), "not allowed"),
        (lambda d: d.pop("archs"), "malformed"),
    ]:
        bad = json.loads(json.dumps(data))
        mutate(bad)
        with pytest.raises(BundleError, match=message):
            KernelManifest.from_dict(bad)
    with pytest.raises(BundleError, match="no compiled GPU kernels"):
        KernelManifest.load(tmp_path / "missing")


def test_image_choice_exact_cubin_then_ptx_then_clear_error() -> None:
    v = _gemm(64, 64)
    km = _km(v)
    assert choose_image(km, v, 90)[0] == "sm_90"
    assert choose_image(km, v, 100)[0] == "ptx"  # Blackwell: JIT from sm_80 PTX
    assert choose_image(km, v, 86)[0] == "ptx"
    with pytest.raises(EngineError, match=r"sm_75.*sm_90 with sm_80 PTX"):
        choose_image(km, v, 75)
    no_ptx = replace(v, images={"sm_90": v.images["sm_90"]})
    with pytest.raises(EngineError, match="--arch sm_86"):
        choose_image(km, no_ptx, 86)


def test_argument_packing_follows_the_signature() -> None:
    import ctypes

    v = _gemm(64, 64)
    packed = pack_args(v, {"eps": 0.5, "M": 7, "a_ptr": 0x7F0000001000}, scratch=0)
    assert [type(x) for x in packed.values] == [
        ctypes.c_uint64,
        ctypes.c_int32,
        ctypes.c_float,
        ctypes.c_uint64,
        ctypes.c_uint64,
    ]
    assert packed.values[0].value == 0x7F0000001000 and packed.values[1].value == 7
    assert ctypes.cast(packed.pointers[2], ctypes.POINTER(ctypes.c_float)).contents.value == 0.5
    assert len(packed.pointers) == 5  # 3 arguments + Triton's two scratch pointers
    with pytest.raises(EngineError, match=r"missing \['eps'\]"):
        pack_args(v, {"M": 1, "a_ptr": 0})
