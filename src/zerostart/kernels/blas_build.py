"""zerostart's minimal BLAS: numpy's OpenBLAS replaced in an image by ~60 KB of our own.

Build time only (gcc and binutils' ``nm``; neither reaches an image). numpy's
wheels link their extension modules against a bundled OpenBLAS
(``numpy.libs/libscipy_openblas64_-<hash>.so``, 25 MB, plus libgfortran and
libquadmath, 3 MB) with kernels for every x86 CPU. A worker whose matrix
products run elsewhere (the GPU; the AVX-512 CPU kernels, which carry their own
GEMMs) calls numpy's BLAS only for small products in the task heads. For such
an image ``zerostart build`` compiles ``kernels/cpu/zs_blas.c`` into a
library of the same file name and SONAME that defines exactly the symbols
numpy's modules import from OpenBLAS (their CBLAS routines, as plain or
auto-vectorised loops; LAPACK names abort with a message: numpy.linalg's
solvers are not available in such an image).

The names are read from numpy itself: the undefined dynamic symbols of its
extension modules that the OpenBLAS defines (``nm -D``). The CBLAS ones give
the prefix and suffix (``scipy_cblas_sgemm64_``: ``scipy_`` and ``64_``; a
``64`` in the suffix means 64-bit integers, numpy 2's ILP64 build). A numpy
needing a symbol our source does not define is refused
(:class:`MinimalBlasUnavailable`, naming the symbols) rather than left to fail
at its first call.

Builds are cached under ``$ZEROSTART_CACHE/minimal-blas`` by the hash of the
source, the compiler's version and the flags.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zerostart.cachedir import cache_base

SOURCE = Path(__file__).resolve().parent / "cpu" / "zs_blas.c"
CC = os.environ.get("CC", "gcc")
NM = os.environ.get("NM", "nm")
# Portable code with AVX2 / AVX-512 clones chosen at load (target_clones in the source).
CFLAGS = (
    "-O3",
    "-std=gnu11",
    "-march=x86-64",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=fast",
    "-s",
    "-Wl,-z,noexecstack",
    "-Wl,--as-needed",
)
TIMEOUT_S = 180
OPENBLAS_GLOB = "lib*openblas*.so*"  # numpy.libs/libscipy_openblas64_-<hash>.so (numpy 2)


class MinimalBlasUnavailable(Exception):
    """This numpy (or this build machine) cannot take the minimal BLAS; the message says why."""


@dataclass(frozen=True)
class BlasNames:
    prefix: str  # "scipy_"
    suffix: str  # "64_"
    ilp64: bool  # 64-bit BLAS integers
    needed: tuple[str, ...]  # every OpenBLAS symbol numpy's modules import


def _run(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise MinimalBlasUnavailable(f"{cmd[0]} not found (binutils and gcc build it)") from exc
    except subprocess.TimeoutExpired as exc:
        raise MinimalBlasUnavailable(f"{cmd[0]} did not finish within {TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-6:])
        raise MinimalBlasUnavailable(f"{' '.join(cmd[:2])} … failed: {tail}")
    return proc.stdout


def dynamic_symbols(path: str | os.PathLike[str], *, defined: bool) -> set[str]:
    """Dynamic symbols of an ELF object, defined or undefined, without version suffixes."""
    flag = "--defined-only" if defined else "--undefined-only"
    out = _run([NM, "-D", flag, str(path)])
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def blas_names(
    openblas: str | os.PathLike[str], modules: Sequence[str | os.PathLike[str]]
) -> BlasNames:
    """The OpenBLAS symbols ``modules`` (numpy's extension modules) import, and their naming."""
    provided = dynamic_symbols(openblas, defined=True)
    needed: set[str] = set()
    for m in modules:
        needed |= dynamic_symbols(m, defined=False) & provided
    for name in sorted(needed):
        hit = re.fullmatch(r"(.*)cblas_sgemm(.*)", name)
        if hit:
            prefix, suffix = hit.groups()
            return BlasNames(prefix, suffix, "64" in suffix, tuple(sorted(needed)))
    raise MinimalBlasUnavailable(
        f"numpy's modules import no cblas_sgemm from {Path(openblas).name}: "
        "not the OpenBLAS layout this replacement knows"
    )


def cache_root() -> Path:
    return cache_base() / "minimal-blas"


def build_minimal_blas(
    openblas: str | os.PathLike[str],
    modules: Sequence[str | os.PathLike[str]],
    *,
    soname: str | None = None,
    cache: Path | None = None,
) -> Path:
    """Compile (or take from the cache) the replacement for ``openblas``; returns its path.

    ``modules``: numpy's extension modules that link against it. ``soname``: the
    OpenBLAS's SONAME (the image builder reads it with its ELF reader); default its
    file name, which numpy's wheels use as the SONAME. Raises
    MinimalBlasUnavailable when the tools are missing, the naming is unknown, or
    numpy needs a symbol the replacement lacks (named).
    """
    names = blas_names(openblas, modules)
    so = soname or Path(openblas).name
    flags = [
        *CFLAGS,
        f"-DZS_PREFIX={names.prefix}",
        f"-DZS_SUFFIX={names.suffix}",
        f"-DZS_ILP64={int(names.ilp64)}",
        f"-Wl,-soname,{so}",
    ]
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join([_run([CC, "--version"]).splitlines()[0], *flags]).encode())
    out_dir = (cache or cache_root()) / digest.hexdigest()[:24]
    out = out_dir / so
    defined: set[str] | None = None
    if out.is_file():
        try:
            defined = dynamic_symbols(out, defined=True)
        except MinimalBlasUnavailable:  # not an ELF object (cut short on disk): build it again
            defined = None
    if defined is None:
        try:
            _compile(flags, out)
        except OSError as exc:  # the cache folder: read-only, not a folder, full
            raise MinimalBlasUnavailable(
                f"cannot write the build cache {out_dir}: {exc.strerror or exc}"
                " (set ZEROSTART_CACHE to a writable folder)"
            ) from exc
        defined = dynamic_symbols(out, defined=True)
    missing = sorted(set(names.needed) - defined)
    if missing:
        raise MinimalBlasUnavailable(
            f"numpy needs {len(missing)} symbols the minimal BLAS lacks: {', '.join(missing[:8])}"
        )
    return out


def _compile(flags: Sequence[str], out: Path) -> None:
    """Compile SOURCE into ``out`` through a temporary file, so ``out`` is whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _run([CC, *flags, "-o", tmp, str(SOURCE)])
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
