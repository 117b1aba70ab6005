"""Our fp32 products (kernels/cpu/zs_gemm_f32.c) and their per-CPU plan (engine/cpu_tuning.py).

Every build this CPU runs (the portable x86-64 one always), every register tile
of that build, packed and unpacked panels of W, default and small blockings (so
that k runs in several blocks that add to C and rows in several blocks), on
shapes whose M, N and K are and are not multiples of the tile, split over row
ranges and column ranges as threads split them. The reference is numpy in
float64; the bound is the standard one for a float32 dot product:
|ours - exact| <= 1e-5 * sum_k |a_mk| |w_kn| (a relative error of 1e-5 on the
magnitude the sum carries; elementwise relative error is meaningless where the
sum cancels to ~0).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from zerostart.engine.cpu_gemm import ZS_GEMM_BADTILE, matmul_f32
from zerostart.engine.cpu_tuning import (
    CpuIdentity,
    TuningRow,
    choose_plan,
    cpu_identity,
    default_plan,
    load_table,
    parse_table,
)
from zerostart.engine.native import NativeKernels, addr, cpu_flags
from zerostart.engine.parallel import Workers
from zerostart.errors import EngineError

cpu_build = pytest.importorskip("zerostart.kernels.cpu_build")
if shutil.which(cpu_build.CC) is None:
    pytest.skip(
        f"no C compiler ({cpu_build.CC}): the kernels are built at convert time",
        allow_module_level=True,
    )

REL = 1e-5
# (m, k, n): the encoder's shapes, and ragged ones (none a multiple of any tile's MR or NR).
SHAPES = [
    (1, 1, 1),
    (1, 384, 1152),
    (3, 37, 5),
    (127, 1536, 384),
    (33, 64, 70),
    (9, 3072, 768),
    (17, 1600, 100),
    (131, 97, 61),
]
# (kc, mc, nc): the kernel's defaults, and small blocks (several k blocks, row blocks and
# column blocks; nc = 40 is not a multiple of any tile's width, the kernel rounds it down).
BLOCKINGS = [(0, 0, 0), (64, 13, 40)]


def _runnable_archs() -> list[str]:
    flags = cpu_flags()
    return [a for a in cpu_build.DEFAULT_ARCHS if set(cpu_build.arch_features(a)) <= flags]


@pytest.fixture(scope="module", params=_runnable_archs())
def kernels(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NativeKernels]:
    arch: str = request.param
    lib = cpu_build.build_library(arch, cache=tmp_path_factory.mktemp("cpu-kernels"))
    yield NativeKernels(lib, arch)


def _operands(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    return x, w, x64 @ w64, np.abs(x64) @ np.abs(w64)


def _assert_close(out: np.ndarray, exact: np.ndarray, magnitude: np.ndarray) -> None:
    assert not np.isnan(out).any(), "some elements were never written"
    err = np.abs(out - exact)
    worst = float((err / np.maximum(magnitude, 1e-30)).max())
    assert worst <= REL, f"relative error {worst:.2e} > {REL}"


def test_every_build_has_its_own_fp32_products(kernels: NativeKernels) -> None:
    """ABI 4: fp32 products in every build, the build's own ISA first among its tiles."""
    assert "float32" in kernels.precisions
    isa = {"x86-64": "v4", "x86-64-v3": "avx2", "x86-64-v4": "avx512"}[kernels.arch]
    assert kernels.gemm_f32_tiles[0].startswith(isa + "_")
    assert all(len(t.split("_")[1].split("x")) == 2 for t in kernels.gemm_f32_tiles)


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("pack", [0, 1])
@pytest.mark.parametrize(("kc", "mc", "nc"), BLOCKINGS)
def test_every_tile_against_numpy(
    kernels: NativeKernels, m: int, k: int, n: int, pack: int, kc: int, mc: int, nc: int
) -> None:
    x, w, exact, magnitude = _operands(m, k, n)
    for tile in range(len(kernels.gemm_f32_tiles)):
        by_rows = np.full((m, n), np.nan, np.float32)
        half = m // 2
        for i, j in ((0, half), (half, m)):  # two row ranges, as two threads
            assert not kernels.gemm_f32(
                addr(x), addr(w), addr(by_rows), i, j, 0, n, k, n, tile, kc, mc, nc, pack
            )
        _assert_close(by_rows, exact, magnitude)
        by_cols = np.full((m, n), np.nan, np.float32)
        third = n // 3  # column ranges, one not a multiple of the tile's width
        for i, j in ((0, third), (third, n)):
            assert not kernels.gemm_f32(
                addr(x), addr(w), addr(by_cols), 0, m, i, j, k, n, tile, kc, mc, nc, pack
            )
        _assert_close(by_cols, exact, magnitude)
        # Same k blocks in the same order whatever the split: bit-identical results.
        np.testing.assert_array_equal(by_rows, by_cols)


def test_only_the_asked_range_is_written(kernels: NativeKernels) -> None:
    m, k, n = 29, 50, 41
    x, w, exact, magnitude = _operands(m, k, n)
    out = np.full((m, n), np.nan, np.float32)
    assert not kernels.gemm_f32(addr(x), addr(w), addr(out), 5, 20, 7, 30, k, n, 0, 16, 6, 16, 1)
    _assert_close(out[5:20, 7:30], exact[5:20, 7:30], magnitude[5:20, 7:30])
    out[5:20, 7:30] = np.nan
    assert np.isnan(out).all()


def test_k_zero_gives_zeros_and_a_bad_tile_is_refused(kernels: NativeKernels) -> None:
    x, w = np.ones((4, 1), np.float32), np.ones((1, 6), np.float32)
    out = np.full((4, 6), np.nan, np.float32)
    assert not kernels.gemm_f32(addr(x), addr(w), addr(out), 0, 4, 0, 6, 0, 6, 0, 0, 0, 0, 0)
    assert (out == 0).all()
    bad = len(kernels.gemm_f32_tiles)
    assert (
        kernels.gemm_f32(addr(x), addr(w), addr(out), 0, 4, 0, 6, 1, 6, bad, 0, 0, 0, 0)
        == ZS_GEMM_BADTILE
    )


@pytest.mark.parametrize("col_split_rows", [0, 1 << 30])  # always rows / always columns
def test_matmul_f32_splits_over_threads(kernels: NativeKernels, col_split_rows: int) -> None:
    """The engine's dispatch with 3 threads, rows or columns: same result as one thread."""
    here = cpu_identity()
    row = TuningRow(
        here, kernels.gemm_f32_tiles[0].split("_")[0], kernels.gemm_f32_tiles[-1], 96, 24, 0, False,
        col_split_rows,
    )  # fmt: skip
    tuned = NativeKernels(kernels.path, kernels.arch, tuning=[row], cpu=here)
    assert tuned.gemm_plan.tile == kernels.gemm_f32_tiles[-1]
    assert tuned.gemm_plan.source.startswith("measured on")
    m, k, n = 130, 300, 200
    x, w, exact, magnitude = _operands(m, k, n)
    one = np.full((m, n), np.nan, np.float32)
    three = np.full((m, n), np.nan, np.float32)
    matmul_f32(tuned, Workers(1), addr(x), addr(w), addr(one), m, k, n)
    workers = Workers(3)
    try:
        matmul_f32(tuned, workers, addr(x), addr(w), addr(three), m, k, n)
    finally:
        workers.close()
    _assert_close(three, exact, magnitude)
    np.testing.assert_array_equal(one, three)


# -- choosing the plan -------------------------------------------------------------

ZEN3 = CpuIdentity("AuthenticAMD", 25, 1, "AMD EPYC", 32 * 1024, 512 * 1024, 32 << 20)
ICX = CpuIdentity("GenuineIntel", 6, 106, "Intel Xeon", 48 * 1024, 1280 * 1024, 54 << 20)
AVX2_TILES = ("avx2_6x16", "avx2_4x24", "v4_6x8", "v4_4x12")


def _row(cpu: CpuIdentity, isa: str, tile: str) -> TuningRow:
    return TuningRow(cpu, isa, tile, 384, 96, 0, True, 256)


def test_a_measured_row_is_taken_for_its_cpu_and_isa_only() -> None:
    table = [_row(ICX, "avx2", "avx2_6x16"), _row(ZEN3, "avx512", "avx512_8x48"),
             _row(ZEN3, "avx2", "avx2_4x24")]  # fmt: skip
    plan = choose_plan(table, AVX2_TILES, ZEN3)
    assert (plan.tile, plan.kc, plan.mc, plan.nc, plan.pack, plan.col_split_rows) == (
        "avx2_4x24",
        384,
        96,
        0,
        True,
        256,
    )
    assert plan.source == "measured on AMD EPYC (family 25, model 1)"
    # Another model of the same family is not the CPU that was measured: the rule.
    zen4 = CpuIdentity("AuthenticAMD", 25, 17, "AMD EPYC", 32 * 1024, 1 << 20, 32 << 20)
    assert choose_plan(table, AVX2_TILES, zen4) == default_plan(AVX2_TILES, zen4)
    # A row naming a tile this build lacks is not taken.
    assert choose_plan([_row(ZEN3, "avx2", "avx2_9x9")], AVX2_TILES, ZEN3).source.startswith(
        "default"
    )


def test_the_default_rule_sizes_blocks_from_the_caches() -> None:
    plan = default_plan(AVX2_TILES, ZEN3)
    # half of L2 (256 KiB) holds 128 rows x kc of A: kc 512; and the mc x kc block of A.
    assert (plan.tile, plan.kc, plan.pack) == ("avx2_6x16", 512, True)
    assert plan.mc == 256 * 1024 // (4 * 512) // 6 * 6
    unknown = default_plan(("avx512_8x48",), CpuIdentity())  # nothing readable: 32 KiB / 1 MiB
    assert unknown.kc == 768 and unknown.mc == 512 * 1024 // (4 * 768) // 8 * 8
    small = CpuIdentity(l1d_bytes=32 * 1024, l2_bytes=128 * 1024)
    assert default_plan(AVX2_TILES, small).kc == 128  # the low end of DEFAULT_KC_RANGE
    assert "L1d 32 KiB, L2 1024 KiB" in unknown.source


def test_cpu_identity_reads_cpuinfo_and_sysfs(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8375C\n\nprocessor\t: 1\nvendor_id\t: Other\n"
    )
    cache = tmp_path / "cache"
    for i, (level, kind, size) in enumerate(
        [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "1280K"),
            (3, "Unified", "54M"),
        ]
    ):
        d = cache / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    got = cpu_identity(str(cpuinfo), str(cache))
    assert got == CpuIdentity(
        "GenuineIntel", 6, 106, "Intel(R) Xeon(R) Platinum 8375C", 48 * 1024, 1280 * 1024, 54 << 20
    )
    assert cpu_identity(str(tmp_path / "none"), str(tmp_path / "none")) == CpuIdentity()


def test_this_machine_is_identified() -> None:
    here = cpu_identity()
    if not Path("/sys/devices/system/cpu/cpu0/cache").is_dir():
        pytest.skip("no sysfs cache description on this machine")
    assert here.vendor and here.family >= 0 and here.model >= 0
    assert here.l1d_bytes > 0 and here.l2_bytes > 0


def test_the_shipped_table_parses_and_bad_tables_are_refused(tmp_path: Path) -> None:
    rows = load_table(cpu_build.TUNING_TABLE)
    assert all(r.tile.startswith(r.isa + "_") or r.isa == "avx512" for r in rows)
    assert load_table(tmp_path / "absent.json") == []
    for text, why in [
        ("[1, 2]", "not a CPU GEMM tuning table"),
        ('{"format": 2, "rows": []}', "format 2"),
        ('{"format": 1, "rows": [{"cpu": {}}]}', "not a CPU GEMM tuning table"),
        ("{", "not JSON"),
    ]:
        bad = tmp_path / "t.json"
        bad.write_text(text)
        with pytest.raises(EngineError, match=why):
            load_table(bad)
    with pytest.raises(EngineError, match="ISA_MRxNR"):
        parse_table(
            {"format": 1, "rows": [{"cpu": {"vendor": "v", "family": 1, "model": 1}, "isa": "avx2",
             "tile": "avx2", "kc": 1, "mc": 1, "pack": True, "col_split_rows": 1}]},
            "t",
        )  # fmt: skip


def test_the_engine_multiplies_on_our_kernels_in_every_build(kernels: NativeKernels) -> None:
    """Every encoder product of a forward goes through zs_gemm_f32 (none to numpy's BLAS),
    split over threads, and the result matches the numpy engine (numpy's products)."""
    from tiny_models import tiny_manifest
    from zerostart.bundle.layout import tensor_shapes
    from zerostart.engine.cpu import CpuEngine

    m = tiny_manifest("bert", "embeddings", hidden=40, layers=2, heads=4, ffn=70, max_positions=64)
    rng = np.random.default_rng(1)
    weights = {
        name: (rng.standard_normal(shape) * 0.1).astype(np.float32)
        for name, shape in tensor_shapes(m).items()
    }
    calls = []
    gemm = kernels.gemm_f32

    def counted(*args: int) -> int:
        calls.append(args[3:9])  # m0, m1, n0, n1, k, n
        result: int = gemm(*args)
        return result

    kernels.gemm_f32 = counted
    try:
        ids = rng.integers(1, 50, (3, 37))
        mask = np.ones_like(ids)
        mask[1, 20:] = 0
        ours = CpuEngine(m, weights, kernels=kernels, threads=2).forward(ids, mask)
    finally:
        kernels.gemm_f32 = gemm
    reference = CpuEngine(m, weights).forward(ids, mask)
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=0)
    products = {(k, n) for *_, k, n in calls}
    assert products == {(40, 120), (40, 40), (40, 70), (70, 40)}  # QKV, out, FFN up, down
    assert len(calls) >= 4 * 2 * 2  # 4 products x 2 layers, each split over 2 threads
