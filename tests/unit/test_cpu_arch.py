"""CPU targets: recorded at convert time, checked against this CPU at load time.

The choice logic runs on given flag sets; the refusal runs for real: a bundle
converted for a target whose features this CPU lacks (AMX on this AMD EPYC)
is refused when the worker loads it, naming the missing features.
"""

from __future__ import annotations

import shutil
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.folder import Bundle
from zerostart.bundle.manifest import CpuKernelBuild
from zerostart.engine.cpu import CpuEngine
from zerostart.engine.cpu_native import NativeCpuEngine
from zerostart.engine.native import ARCH_ENV, choose_build, cpu_flags, load_bundle_kernels
from zerostart.errors import ConvertError, EngineError
from zerostart.model.convert import convert

cpu_build = pytest.importorskip("zerostart.kernels.cpu_build")
needs_cc = pytest.mark.skipif(shutil.which(cpu_build.CC) is None, reason="no C compiler")

V3 = ("avx", "avx2", "fma")
V4 = (*V3, "avx512f", "avx512bw")
BUILDS = {
    "x86-64": CpuKernelBuild("kernels/cpu/a.so", ()),
    "x86-64-v3": CpuKernelBuild("kernels/cpu/b.so", V3),
    "x86-64-v4": CpuKernelBuild("kernels/cpu/c.so", V4),
}


def test_the_build_using_most_features_wins() -> None:
    assert choose_build(BUILDS, frozenset(V4) | {"sse4_2"}) == "x86-64-v4"
    assert choose_build(BUILDS, frozenset(V3)) == "x86-64-v3"
    assert choose_build(BUILDS, frozenset()) == "x86-64"


def test_no_runnable_build_names_what_is_missing() -> None:
    only_v4 = {"x86-64-v4": BUILDS["x86-64-v4"]}
    with pytest.raises(EngineError, match=r"x86-64-v4 needs avx512bw, avx512f") as err:
        choose_build(only_v4, frozenset(V3))
    assert "--cpu-arch" in (err.value.hint or "")


def test_a_forced_build_must_exist_and_run() -> None:
    assert choose_build(BUILDS, frozenset(V4), want="x86-64") == "x86-64"
    with pytest.raises(EngineError, match="lacks avx512bw, avx512f"):
        choose_build(BUILDS, frozenset(V3), want="x86-64-v4")
    with pytest.raises(EngineError, match="holds kernels for"):
        choose_build(BUILDS, frozenset(V4), want="znver5")


def test_cpu_flags_come_from_the_first_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()
    assert "sse2" in cpu_flags()  # this machine's own, read for real


def _lacking_target() -> tuple[str, list[str]] | None:
    """A target whose features this CPU lacks (AMX, AVX-512 FP16, ... or AVX-512 itself)."""
    flags = cpu_flags()
    for arch in ("sapphirerapids", "x86-64-v4", "x86-64-v3"):
        missing = sorted(set(cpu_build.arch_features(arch)) - flags)
        if missing:
            return arch, missing
    return None


@needs_cc
def test_bundle_for_a_cpu_this_one_is_not_is_refused_at_load(
    minilm_sst2_dir: Path, tmp_path: Path
) -> None:
    target = _lacking_target()
    if target is None:
        pytest.skip("this CPU has every feature of sapphirerapids: no target to refuse")
    arch, missing = target
    m = convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=[arch])
    assert set(m.cpu_kernels) == {arch}
    assert set(missing) <= set(m.cpu_kernels[arch].features)
    with pytest.raises(EngineError, match="cannot run any kernel build") as err:
        CpuEngine.from_bundle(Bundle.open(tmp_path / "b"))
    assert all(f in err.value.args[0] for f in missing)


@needs_cc
def test_convert_records_each_target_and_its_features(
    minilm_sst2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=["x86-64", "x86-64-v3"])
    assert list(m.cpu_kernels) == ["x86-64", "x86-64-v3"]
    assert m.cpu_kernels["x86-64"].features == ()
    assert {"avx2", "fma", "avx"} <= set(m.cpu_kernels["x86-64-v3"].features)
    assert "avx512f" not in m.cpu_kernels["x86-64-v3"].features
    for build in m.cpu_kernels.values():
        assert build.file in m.files and (tmp_path / "b" / build.file).is_file()
    bundle = Bundle.open(tmp_path / "b", verify="full")
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]])
    mask = np.ones_like(ids)
    numpy_out = CpuEngine(m, bundle.weights).forward(ids, mask)
    monkeypatch.setenv(ARCH_ENV, "x86-64")  # the portable fallback, forced
    engine = CpuEngine.from_bundle(bundle)
    assert engine.kernels is not None and engine.kernels.arch == "x86-64"
    np.testing.assert_allclose(engine.forward(ids, mask), numpy_out, atol=1e-5)


@needs_cc
def test_info_reports_the_build_in_use(minilm_sst2_dir: Path, tmp_path: Path) -> None:
    from zerostart.pipeline import Pipeline

    convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=["x86-64", "x86-64-v3"])
    want = "x86-64-v3" if set(cpu_build.arch_features("x86-64-v3")) <= cpu_flags() else "x86-64"
    assert Pipeline.load(tmp_path / "b").info()["cpu_kernel_build"] == want


@needs_cc
def test_cpu_arch_none_means_the_numpy_engine(minilm_sst2_dir: Path, tmp_path: Path) -> None:
    m = convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=["none"])
    assert m.cpu_kernels == {}
    assert CpuEngine.from_bundle(Bundle.open(tmp_path / "b")).kernels is None


@needs_cc
@pytest.mark.parametrize(
    ("archs", "message"),
    [
        (["x86-64; rm -rf /"], "not a gcc -march name"),
        (["no-such-cpu"], "failed"),
        (["none", "x86-64"], "cannot be combined"),
    ],
)
def test_bad_targets_are_refused_at_convert(
    minilm_sst2_dir: Path, tmp_path: Path, archs: list[str], message: str
) -> None:
    with pytest.raises(ConvertError, match=message):
        convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=archs)
    assert not (tmp_path / "b").exists()


@needs_cc
@pytest.mark.parametrize(
    ("precision", "feature", "arch"),
    [("int8", "avx512_vnni or avx2", "x86-64"), ("bfloat16", "avx512_bf16", "x86-64-v3")],
)
def test_reduced_precision_for_a_target_without_it_is_refused(
    minilm_sst2_dir: Path, tmp_path: Path, precision: str, feature: str, arch: str
) -> None:
    with pytest.raises(ConvertError, match=f"needs {feature}, which -march={arch} does not"):
        convert(minilm_sst2_dir, tmp_path / "b", cpu_archs=[arch], precision=precision)


@needs_cc
def test_a_build_already_loaded_is_not_loaded_again(
    bundle_for_model: Callable[[str], Path], tmp_path: Path
) -> None:
    # A warm slot loads the canary's kernels, then the same build in the model's bundle:
    # the same bytes (the manifest's sha256), so the loaded library serves both.
    first = Bundle.open(bundle_for_model("minilm-sst2"))
    copy = Path(shutil.copytree(first.path, tmp_path / "copy"))
    m = first.manifest
    a = load_bundle_kernels(first.path, m.cpu_kernels, files=m.files)
    b = load_bundle_kernels(copy, m.cpu_kernels, files=m.files)
    assert b._lib is a._lib and b.path.parent.parent.parent == copy
    assert load_bundle_kernels(copy, m.cpu_kernels)._lib is not a._lib  # no digests: loaded
    other = {k: v._replace(sha256="0" * 64) for k, v in m.files.items()}
    assert load_bundle_kernels(copy, m.cpu_kernels, files=other)._lib is not a._lib
    ids = array("q", [101, 2023, 2003, 102])
    engine = NativeCpuEngine.from_bundle(Bundle.open(copy))
    again = NativeCpuEngine.from_bundle(first)
    assert engine.kernels._lib is again.kernels._lib
    assert list(engine.run(ids, None, [4], 4)) == list(again.run(ids, None, [4], 4))
