"""zerostart's minimal BLAS (kernels/cpu/zs_blas.c) against numpy's own OpenBLAS.

The library is built the way an image build does (``build_minimal_blas``: names
read from this numpy), then loaded in a child process with ``LD_PRELOAD``: it
has the OpenBLAS's SONAME, so the dynamic linker satisfies numpy's ``NEEDED``
entry with it and the real OpenBLAS is never mapped (checked in /proc/self/maps).
The child computes every BLAS-backed numpy operation below; the parent, with
OpenBLAS, computes the same ones; they must agree within float32 / float64
rounding. Needs gcc and binutils (nm), which CI installs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zerostart.kernels.blas_build import (
    MinimalBlasUnavailable,
    blas_names,
    build_minimal_blas,
    dynamic_symbols,
)

NUMPY_DIR = Path(np.__file__).resolve().parent
LIBS = NUMPY_DIR.parent / "numpy.libs"

# Every BLAS path numpy takes: gemm (all transposes and orders, strided, batched, out= holding
# NaN with beta 0), syrk (a @ a.T), gemv both ways, dot / vdot (incl. negative strides), for
# float32, float64, complex64, complex128.
CASES = r"""
import numpy as np
rng = np.random.default_rng(0)
out = {}
for dt in (np.float32, np.float64, np.complex64, np.complex128):
    def r(*shape):
        x = rng.standard_normal(shape)
        if np.issubdtype(dt, np.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return x.astype(dt)
    a, b, v, w = r(37, 53), r(53, 29), r(53), r(37)
    big = r(70, 130)
    res = {
        "gemm": a @ b,
        "gemm_tn": np.ascontiguousarray(a.T).T @ b,
        "gemm_nt": a @ np.ascontiguousarray(b.T).T,
        "gemm_conj": a.conj() @ b,
        "gemm_f": np.asfortranarray(a) @ np.asfortranarray(b),
        "gemm_strided": a[::2, 1::2] @ b[1::2, ::3],
        "gemm_batched": np.stack([a, a * 2]) @ b,
        "syrk": a @ a.T,
        "syrk_f": np.asfortranarray(a).T @ np.asfortranarray(a),
        "gemv": a @ v,
        "gemv_t": w @ a,
        "gemv_f": np.asfortranarray(a) @ v,
        "dot": np.dot(v, v[::-1]),
        "dot_neg": np.dot(v[::-2], v[::2][: len(v[::-2])]),
        "vdot": np.vdot(v, v),
        "big": big @ big.T,
        "empty_k": r(4, 0) @ r(0, 5),
    }
    o = np.full((37, 29), np.nan, dtype=dt)
    np.matmul(a, b, out=o)
    res["out_nan"] = o
    for k, x in res.items():
        x = np.asarray(x)
        out[f"{np.dtype(dt).name}.{k}"] = np.stack([x.real, x.imag]).astype(np.float64)
np.savez(OUT, **out)
maps = open("/proc/self/maps").read()
print("MAPS", "zs-minimal-marker" in maps, "libgfortran" in maps)
"""


def _numpy_modules() -> list[Path]:
    return sorted(p for p in NUMPY_DIR.rglob("*.so") if "tests" not in p.parts)


@pytest.fixture(scope="module")
def openblas() -> Path:
    for tool in ("gcc", "nm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install_system_deps.sh installs it)")
    found = sorted(LIBS.glob("lib*openblas*.so*"))
    if len(found) != 1:
        pytest.skip(f"this numpy has no single bundled OpenBLAS in {LIBS}: {found}")
    return found[0]


@pytest.fixture(scope="module")
def minimal(openblas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_minimal_blas(openblas, _numpy_modules(), cache=tmp_path_factory.mktemp("c"))
    # a uniquely named copy, so the child's maps show which library was loaded
    marked = built.parent / "zs-minimal-marker" / built.name
    marked.parent.mkdir()
    shutil.copy2(built, marked)
    return marked


def _run_child(minimal: Path, code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LD_PRELOAD": str(minimal)}
    return subprocess.run(
        [sys.executable, "-c", f"OUT = {str(tmp / 'got.npz')!r}\n" + code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_names_match_what_numpy_imports(openblas: Path, minimal: Path) -> None:
    names = blas_names(openblas, _numpy_modules())
    assert names.prefix == "scipy_" and names.suffix == "64_" and names.ilp64  # numpy 2 wheels
    assert f"{names.prefix}cblas_sgemm{names.suffix}" in names.needed
    assert set(names.needed) <= dynamic_symbols(minimal, defined=True)
    assert minimal.stat().st_size < 200_000 < openblas.stat().st_size


def test_every_blas_path_of_numpy_agrees_with_openblas(minimal: Path, tmp_path: Path) -> None:
    proc = _run_child(minimal, CASES, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MAPS True False" in proc.stdout, proc.stdout  # ours mapped; no OpenBLAS deps
    ns: dict[str, object] = {"OUT": str(tmp_path / "want.npz")}
    exec(CASES, ns)  # the same cases here, with numpy's OpenBLAS
    got, want = np.load(tmp_path / "got.npz"), np.load(tmp_path / "want.npz")
    assert sorted(got.files) == sorted(want.files)
    worst: dict[str, float] = {}
    for key in want.files:
        g, w = got[key], want[key]
        assert g.shape == w.shape, key
        scale = max(1.0, float(np.abs(w).max()))
        err = float(np.abs(g - w).max()) / scale
        worst[key] = err
        tol = 1e-5 if key.startswith(("float32", "complex64")) else 1e-12
        assert err <= tol, (key, err)
    assert not np.isnan(got["float32.out_nan"]).any()  # beta = 0 never reads C
    print(json.dumps({k: f"{v:.1e}" for k, v in sorted(worst.items())}))


def test_lapack_aborts_with_a_message_and_norm_still_works(minimal: Path, tmp_path: Path) -> None:
    ok = _run_child(
        minimal,
        "import numpy as np\nprint(np.linalg.norm(np.ones((2, 4), np.float32), axis=-1))\n",
        tmp_path,
    )
    assert ok.returncode == 0 and "[2. 2.]" in ok.stdout, ok.stderr
    bad = _run_child(minimal, "import numpy as np\nnp.linalg.inv(np.eye(3))\n", tmp_path)
    assert bad.returncode != 0
    assert re.search(
        r"LAPACK routine scipy_\w+_64_ \(numpy.linalg\) is not in this image", bad.stderr
    )
    assert "zerostart build --blas openblas" in bad.stderr, bad.stderr


def test_a_library_that_is_not_openblas_is_refused(tmp_path: Path, openblas: Path) -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        pytest.skip("no glibc at the Debian path")
    with pytest.raises(MinimalBlasUnavailable, match="no cblas_sgemm"):
        build_minimal_blas(libc, _numpy_modules(), cache=tmp_path)


def test_which_bundles_get_the_minimal_blas() -> None:
    """auto: GPU bundles and every CPU bundle with native kernels (each build multiplies for
    itself, the portable one too); never the numpy engine (--cpu-arch none)."""

    from tiny_models import tiny_manifest
    from zerostart.bundle.manifest import CpuKernelBuild
    from zerostart.errors import ImageError
    from zerostart.image.blas import wanted

    m = tiny_manifest("bert", "embeddings", hidden=64, layers=1, heads=2, ffn=128, max_positions=64)
    v4 = CpuKernelBuild("kernels/cpu/a.so", ("avx2", "avx512f"))
    v3 = CpuKernelBuild("kernels/cpu/b.so", ("avx2",))
    assert wanted("auto", m, "cuda")[0]
    portable = CpuKernelBuild("kernels/cpu/c.so", ())
    assert wanted("auto", m._replace(cpu_kernels={"x86-64-v4": v4}), "cpu")[0]
    assert wanted("auto", m._replace(cpu_kernels={"x86-64-v4": v4, "x86-64-v3": v3}), "cpu")[0]
    every = {"x86-64": portable, "x86-64-v3": v3, "x86-64-v4": v4}
    assert wanted("auto", m._replace(cpu_kernels=every), "cpu") == (
        True,
        "every CPU kernel build carries its own matrix products",
    )
    assert wanted("auto", m._replace(cpu_kernels={"x86-64": portable}), "cpu")[0]
    assert not wanted("auto", m, "cpu")[0]
    assert "numpy engine" in wanted("auto", m, "cpu")[1]
    assert wanted("minimal", m, "cpu") == (True, "--blas minimal")
    assert wanted("openblas", m, "cuda") == (False, "--blas openblas")
    with pytest.raises(ImageError, match="not one of"):
        wanted("mkl", m, "cpu")


def test_a_cached_library_cut_short_is_built_again(openblas: Path, tmp_path: Path) -> None:
    """A zero-length or truncated file in the cache (a crash before the data reached disk)."""
    built = build_minimal_blas(openblas, _numpy_modules(), cache=tmp_path)
    whole = built.read_bytes()
    for cut in (b"", whole[: len(whole) // 3]):
        built.write_bytes(cut)
        again = build_minimal_blas(openblas, _numpy_modules(), cache=tmp_path)
        assert again == built and again.read_bytes() == whole


def test_an_unwritable_cache_is_a_reason_not_a_crash(openblas: Path, tmp_path: Path) -> None:
    """--blas auto falls back on MinimalBlasUnavailable only; an OSError stopped the build."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(MinimalBlasUnavailable, match=r"cannot write the build cache .*ZEROSTART"):
        build_minimal_blas(openblas, _numpy_modules(), cache=not_a_folder / "cache")
