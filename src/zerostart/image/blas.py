"""Which BLAS an image carries: numpy's OpenBLAS, or zerostart's minimal BLAS in its place.

``zerostart build --blas auto|minimal|openblas`` (default auto). The
minimal BLAS (``zerostart.kernels.blas_build``: numpy's CBLAS routines as
plain loops, ~60 KB) replaces the 25 MB OpenBLAS and the libgfortran and
libquadmath only it needs, when numpy never does heavy linear algebra in the
worker:

* a GPU bundle (every product runs on the GPU);
* a CPU bundle with native kernel builds: every build carries its own fp32
  products (kernels/cpu/zs_gemm_f32.c, portable, AVX2 and AVX-512 alike, since
  kernel ABI 4), so numpy is left only the task head's few small products;
  a bundle without them (``--cpu-arch none``: the numpy engine) multiplies in
  numpy's BLAS and keeps OpenBLAS.

``auto`` falls back to OpenBLAS, with the reason in the build result, when the
replacement cannot be built here (no gcc / nm, a numpy it does not know);
``minimal`` makes that an error.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, replace
from pathlib import Path

from zerostart.bundle.manifest import Manifest
from zerostart.errors import ImageError
from zerostart.image.closure import Closure
from zerostart.image.elf import read_elf
from zerostart.kernels.blas_build import (
    OPENBLAS_GLOB,
    MinimalBlasUnavailable,
    build_minimal_blas,
)

BLAS_CHOICES = ("auto", "minimal", "openblas")


@dataclass(frozen=True)
class BlasDecision:
    blas: str  # "minimal" | "openblas" | "none" (the worker never loaded numpy: no BLAS at all)
    reason: str
    replaced: tuple[str, ...] = ()  # image paths taken out or replaced
    saved_bytes: int = 0
    warning: str = ""  # what forcing the minimal BLAS costs this bundle, if anything


def wanted(option: str, manifest: Manifest, device: str) -> tuple[bool, str]:
    """Whether ``option`` asks for the minimal BLAS for this bundle, and why."""
    if option not in BLAS_CHOICES:
        raise ImageError(f"--blas {option!r} is not one of {BLAS_CHOICES}")
    if option == "openblas":
        return False, "--blas openblas"
    if option == "minimal":
        return True, "--blas minimal"
    if device == "cuda":
        return True, "a GPU worker multiplies no matrices in numpy"
    if manifest.cpu_kernels:
        return True, "every CPU kernel build carries its own matrix products"
    return False, "the numpy engine multiplies with numpy's BLAS"


def apply(closure: Closure, option: str, manifest: Manifest, device: str) -> BlasDecision:
    """Swap numpy's OpenBLAS for the minimal BLAS in ``closure`` when wanted; say what was done."""
    want, why = wanted(option, manifest, device)
    if not want:
        return BlasDecision("openblas", why)
    openblas = [
        f
        for f in closure.files.values()
        if f.source and "numpy.libs" in f.dest and fnmatch.fnmatch(Path(f.dest).name, OPENBLAS_GLOB)
    ]
    if not openblas and not any("/numpy/" in f.dest for f in closure.files.values()):
        # The worker's trace never touched numpy (its engine computes every product
        # itself, docs/cpu.md): there is no BLAS to replace, and none goes in.
        return BlasDecision("none", f"{why}; the worker imports no numpy, so no BLAS is needed")
    if len(openblas) != 1:
        return _fallback(option, f"{len(openblas)} OpenBLAS libraries in numpy.libs, expected 1")
    target = openblas[0]
    assert target.source is not None
    modules = [
        f.source
        for f in closure.files.values()
        if f.source and "/numpy/" in f.dest and f.dest.endswith(".so")
    ]
    info = read_elf(target.source)
    try:
        built = build_minimal_blas(
            target.source, modules, soname=info.soname if info is not None else None
        )
    except MinimalBlasUnavailable as exc:
        return _fallback(option, str(exc))
    saved = os.path.getsize(target.source) - built.stat().st_size
    closure.files[target.dest] = replace(
        target,
        source=str(built),
        reason=f"zerostart's minimal BLAS in place of numpy's OpenBLAS: {why}",
        strip_debug=False,
    )
    dropped = _drop_unneeded(closure, os.path.dirname(target.dest))
    saved += sum(size for _, size in dropped)
    warning = ""
    auto_wants, auto_why = wanted("auto", manifest, device)
    if not auto_wants:  # forced on a bundle that multiplies in numpy
        warning = (
            f"{auto_why}: those products run on the minimal BLAS's plain loops, several "
            "times slower than OpenBLAS (convert with native kernels, the default --cpu-arch, "
            "or build with --blas auto)"
        )
    return BlasDecision("minimal", why, (target.dest, *(d for d, _ in dropped)), saved, warning)


def _fallback(option: str, reason: str) -> BlasDecision:
    if option == "minimal":
        raise ImageError(
            f"cannot use the minimal BLAS: {reason}", hint="build with --blas openblas"
        )
    return BlasDecision("openblas", f"minimal BLAS not possible here: {reason}")


def _drop_unneeded(closure: Closure, libs_dir: str) -> list[tuple[str, int]]:
    """Remove files of ``libs_dir`` that no remaining ELF object needs; (image path, bytes)."""
    needs: dict[str, frozenset[str]] = {}  # image path -> DT_NEEDED names, each file read once
    for d, f in closure.files.items():
        if f.source and (d.endswith(".so") or ".so." in d):
            info = read_elf(f.source)
            if info is not None:
                needs[d] = frozenset(info.needed)
    removed: list[tuple[str, int]] = []
    while True:
        needed = set().union(*(n for d, n in needs.items() if d in closure.files))
        gone = [
            d
            for d, f in closure.files.items()
            if os.path.dirname(d) == libs_dir
            and f.source
            and Path(d).name not in needed
            and not fnmatch.fnmatch(Path(d).name, OPENBLAS_GLOB)
        ]
        if not gone:
            return removed
        for d in gone:
            f = closure.files.pop(d)
            assert f.source is not None
            closure.excluded[f.source] = "needed only by numpy's OpenBLAS (minimal BLAS instead)"
            removed.append((d, os.path.getsize(f.source)))
