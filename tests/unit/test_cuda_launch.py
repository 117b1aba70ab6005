"""Launch rules of the GPU engine, without a GPU: grid formulas, variant selection, buckets, schema."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from zerostart.bundle import launch
from zerostart.bundle.launch import KernelImage, KernelManifest, KernelVariant
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
    from zerostart.bundle.layout import SUPPORTED_ACTS

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


def _cfg_gemm(cfg: str, *, act: int = 0, res: int = 0, bk: int = 64) -> KernelVariant:
    """A GEMM variant keyed like the compiler's (``...al1.<config>``) with BLOCK_K."""
    from zerostart.kernels.variants import GemmConfig

    c = GemmConfig.parse(cfg)
    v = _gemm(c.block_m, c.block_n, act=act, res=res)
    return replace(
        v,
        key=f"gemm.act{act}.res{res}.al1.{cfg}",
        params={**v.params, "BLOCK_K": c.block_k, "EVEN_K": 1},
    )


def test_measured_choice_wins_at_the_nearest_rows_and_falls_back_to_the_rule() -> None:
    small, big, mid = (
        _cfg_gemm("m16n64k128w4s4", bk=128),
        _cfg_gemm("m128n128k64w8s3"),
        _cfg_gemm("m64n64k64w4s3"),
    )
    table = (
        launch.GemmChoice("sm_90", 768, 3072, 128, "m16n64k128w4s4"),
        launch.GemmChoice("sm_90", 768, 3072, 4096, "m64n64k64w4s3"),
        launch.GemmChoice("sm_80", 768, 768, 128, "m16n64k128w4s4"),
    )
    km = replace(_km(small, big, mid), gemm_table=table)

    def pick(m: int, n: int = 768, k: int = 3072, arch: str | None = "sm_90", **kw: object) -> str:
        base = {"act": 0, "has_res": False, "lda": k, "ldc": n, "sm_count": 132}
        v = launch.select_gemm(km, m=m, n=n, k=k, arch=arch, **{**base, **kw})  # type: ignore[arg-type]
        return launch.gemm_config_name(v)

    assert pick(128) == "m16n64k128w4s4"
    assert pick(200) == "m16n64k128w4s4"  # log2 distance: 200 is nearer 128 than 4096
    assert pick(2048) == "m64n64k64w4s3" and pick(16384) == "m64n64k64w4s3"
    # another arch, another (N, K), no arch given: the rule (largest filling tile / most tiles)
    assert pick(128, arch="sm_86") == "m16n64k128w4s4"  # most programs at M=128
    assert pick(16384, arch=None) == "m128n128k64w8s3"
    assert pick(16384, n=2304, k=768) == "m128n128k64w8s3"
    # K not a multiple of a config's BLOCK_K: that aligned build is out of the pool
    assert pick(128, k=3072 + 64) != "m16n64k128w4s4"
    # a config the table names but the bundle lacks: the rule
    km2 = replace(_km(big, mid), gemm_table=table)
    v = launch.select_gemm(
        km2,
        act=0,
        has_res=False,
        m=128,
        n=768,
        k=3072,
        lda=3072,
        ldc=768,
        sm_count=132,
        arch="sm_90",
    )
    assert launch.gemm_config_name(v) == "m64n64k64w4s3"
    # a variant the GPU cannot fit is never picked, even when measured best
    v = launch.select_gemm(
        km, act=0, has_res=False, m=128, n=768, k=3072, lda=3072, ldc=768, sm_count=132,
        arch="sm_90", fits=lambda v: "m16n64" not in v.key,
    )  # fmt: skip
    assert launch.gemm_config_name(v) != "m16n64k128w4s4"
    # the table survives the manifest's JSON round trip; a malformed entry is refused
    data = json.loads(km.to_json())
    assert KernelManifest.from_dict(data) == km
    data["gemm_table"][0]["config"] = "../x"
    with pytest.raises(BundleError, match="gemm_table"):
        KernelManifest.from_dict(data)


def test_tuning_files_are_read_filtered_and_applied(tmp_path: Path) -> None:
    from tiny_models import tiny_manifest
    from zerostart.bundle.manifest import Manifest
    from zerostart.errors import ConvertError
    from zerostart.kernels import variants

    m: Manifest = tiny_manifest(
        "bert", "embeddings", hidden=64, layers=1, heads=2, ffn=128, max_positions=64, device="cuda"
    )
    tuning = tmp_path / "sm_90.json"
    tuning.write_text(
        json.dumps(
            {
                "arch": "sm_90",
                "choices": [
                    {"n": 192, "k": 64, "m": 128, "config": "m16n64k128w4s4"},  # QKV of this model
                    {"n": 64, "k": 128, "m": 16, "config": "m32n32k128w4s4"},  # FFN down
                    {"n": 2304, "k": 768, "m": 128, "config": "m64n64k64w4s3"},  # another model
                ],
            }
        )
    )
    choices = variants.load_tuning(tuning)
    mine = variants.model_choices(m, choices)
    assert [(c.n, c.k) for c in mine] == [(64, 128), (192, 64)]
    names = [c.name for c in variants.tuned_configs(mine)]
    assert names[:2] == [c.name for c in variants.DEFAULT_GEMM_CONFIGS]
    assert set(names[2:]) == {"m16n64k128w4s4", "m32n32k128w4s4"}
    for bad, message in [("{", "not a GEMM tuning file"), ('{"arch": "sm_90"}', "not a GEMM")]:
        tuning.write_text(bad)
        with pytest.raises(ConvertError, match=message):
            variants.load_tuning(tuning)
    with pytest.raises(ConvertError, match="cannot read"):
        variants.load_tuning(tmp_path / "missing.json")
    bad_cfg = {"arch": "sm_90", "choices": [{"n": 1, "k": 1, "m": 1, "config": "big"}]}
    tuning.write_text(json.dumps(bad_cfg))
    with pytest.raises(ConvertError, match="not a GEMM"):
        variants.load_tuning(tuning)
    # applied to a prebuilt folder: only configs the folder holds, for its archs
    km = _km(_cfg_gemm("m16n64k128w4s4", bk=128), _cfg_gemm("m64n64k64w4s3"))
    (tmp_path / "manifest.json").write_text(km.to_json())
    assert variants.apply_tuning(tmp_path, m, mine) == 1  # m32n32... is not in the folder
    assert KernelManifest.load(tmp_path).gemm_table == (mine[1],)


@pytest.mark.parametrize(
    ("choice", "why"),
    [
        ({"n": 192, "k": 64, "m": 0, "config": "m16n64k128w4s4"}, "sizes"),  # log2(0) at run time
        ({"n": -192, "k": 64, "m": 16, "config": "m16n64k128w4s4"}, "sizes"),
        ({"n": 192, "k": 64, "m": 10**40, "config": "m16n64k128w4s4"}, "sizes"),  # not an i32
        ({"n": 192, "k": 64, "m": 1e400, "config": "m16n64k128w4s4"}, "infinity"),
        ({"n": 192, "k": 64, "m": 16, "config": "m0n0k0w0s0"}, "block dims"),
        ({"n": 192, "k": 64, "m": 16, "config": "m100000n64k64w4s4"}, "block dims"),
        ({"n": 192, "k": 64, "m": 16, "config": "m64n64k64w3s3"}, "warps"),
        ({"n": 192, "k": 64, "m": 16, "config": "m64n64k64w4s0"}, "stages"),
    ],
)
def test_tuning_file_with_absurd_numbers_is_refused_at_convert(
    tmp_path: Path, choice: dict[str, object], why: str
) -> None:
    """Each would pass into a bundle (or to Triton) and fail later, far from the file's name."""
    from zerostart.errors import ConvertError
    from zerostart.kernels import variants

    tuning = tmp_path / "sm_90.json"
    tuning.write_text(json.dumps({"arch": "sm_90", "choices": [choice]}))
    with pytest.raises(ConvertError, match=f"not a GEMM tuning file.*{why}"):
        variants.load_tuning(tuning)


def test_shipped_tuning_files_pass_the_checks() -> None:
    from zerostart.kernels import variants

    files = sorted(variants.TUNING_DIR.glob("sm_*.json"))
    assert files and all(variants.load_tuning(p) for p in files)


def test_kernels_manifest_with_out_of_range_gemm_table_is_a_bundle_error() -> None:
    data = json.loads(_km(_cfg_gemm("m16n64k128w4s4", bk=128)).to_json())
    row = {"arch": "sm_90", "n": 192, "k": 64, "config": "m16n64k128w4s4"}
    for m, message in [(float("inf"), "malformed: OverflowError"), (2**31, "gemm_table entry")]:
        data["gemm_table"] = [{**row, "m": m}]
        with pytest.raises(BundleError, match=message):
            KernelManifest.from_dict(data)


def test_splitk_choice_most_programs_then_smaller_tile() -> None:
    def partial(bm: int, bn: int, bk: int, split: int) -> KernelVariant:
        v = _gemm(bm, bn)
        return replace(
            v,
            key=f"gemm_partial.al1.m{bm}n{bn}k{bk}.x{split}",
            op="gemm_partial",
            params={"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
        )

    a4, b4, a2 = partial(16, 64, 128, 4), partial(32, 64, 64, 4), partial(16, 64, 128, 2)
    km = _km(a4, b4, a2)
    pick = launch.select_splitk
    assert pick(km, m=128, n=768, k=3072) is a4  # 8*12*4 programs beat 4*12*4
    # 768 % (4*128) != 0 drops a4; b4 (4*12*4) and a2 (8*12*2) tie at 192: the smaller tile
    assert pick(km, m=128, n=768, k=768) is a2
    assert pick(km, m=128, n=768, k=3072, split_k=2) is a2
    assert pick(km, m=128, n=768, k=3072, fits=lambda v: v is not a2) is a4
    assert pick(km, m=128, n=768, k=3072, fits=lambda v: v is b4) is b4
    assert pick(km, m=128, n=768, k=100) is None
