"""Ahead-of-time build of the CPU kernels: one shared library per target CPU.

Build time only (runs gcc; the compiler never reaches an image). The C sources
in ``zerostart/kernels/cpu/`` are compiled once per ``-march`` the user names
(``zerostart convert --cpu-arch x86-64-v3,x86-64-v4``), the way the GPU path
compiles one cubin per ``sm_XX``. Each build is written into the bundle as
``kernels/cpu/libzs_cpu.<arch>.so`` and recorded in the manifest together with
the CPU features it needs, which are read from the compiler itself
(``gcc -march=ARCH -dM -E``: ``__AVX512F__`` and friends) and spelled the way
Linux spells them in ``/proc/cpuinfo``, so the worker can compare without a
table of its own (``zerostart.engine.native``).

The measured fp32 GEMM plans per CPU (``zerostart/kernels/tuning/cpu_gemm.json``,
written by ``tools/cpu_tune.py``) go into the bundle beside the builds
(``kernels/cpu/gemm_tuning.json``); the worker picks this CPU's row at load
(``zerostart.engine.cpu_tuning``).

Builds are cached under ``$ZEROSTART_CACHE`` (default ``~/.cache/zerostart``)
by the hash of the sources, the compiler's version, the flags and the arch, so
converting many bundles compiles each target once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from zerostart.bundle.manifest import CPU_KERNELS_DIR, CpuKernelBuild
from zerostart.cachedir import cache_base
from zerostart.engine.cpu_tuning import BUNDLE_TABLE, load_table
from zerostart.errors import ConvertError, EngineError

Progress = Callable[[str, float], None]

SOURCES_DIR = Path(__file__).resolve().parent / "cpu"
SOURCES = ("zs_cpu.c", "zs_cpu_gemm.c", "zs_gemm_f32.c", "zs_deberta.c", "zs_modernbert.c")
# included by the sources: part of the build cache's key
HEADERS = ("zs_math.h", "zs_attention_simd.h")
LIB_PREFIX = "libzs_cpu"
TUNING_TABLE = Path(__file__).resolve().parent / "tuning" / "cpu_gemm.json"
# Portable baseline plus AVX2 and AVX-512 (gcc's x86-64 micro-architecture levels).
DEFAULT_ARCHS = ("x86-64", "x86-64-v3", "x86-64-v4")
CC = os.environ.get("CC", "gcc")
# -fopenmp-simd: honour `#pragma omp simd` without linking an OpenMP runtime.
# -fno-math-errno / -fno-trapping-math: let sqrt and selects vectorise; no -ffast-math,
# whose reassociation would change results between builds.
CFLAGS = (
    "-O3",
    "-std=c11",
    "-fPIC",
    "-shared",
    "-fopenmp-simd",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-plt",
    "-s",
    "-Wl,-z,noexecstack",
    "-Wl,--as-needed",
)
COMPILE_TIMEOUT_S = 180  # one file of a few hundred lines: seconds, even on a loaded machine
PROBE_TIMEOUT_S = 30

# gcc's predefined macro -> the flag Linux lists in /proc/cpuinfo. Features every x86-64
# has (SSE2, FXSR, MMX) are left out: there is nothing to check.
MACRO_FLAGS = {
    "__SSE3__": "pni",
    "__SSSE3__": "ssse3",
    "__SSE4_1__": "sse4_1",
    "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt",
    "__CX16__": "cx16",
    "__SAHF__": "lahf_lm",
    "__AVX__": "avx",
    "__AVX2__": "avx2",
    "__FMA__": "fma",
    "__F16C__": "f16c",
    "__BMI__": "bmi1",
    "__BMI2__": "bmi2",
    "__LZCNT__": "abm",
    "__MOVBE__": "movbe",
    "__XSAVE__": "xsave",
    "__AES__": "aes",
    "__PCLMUL__": "pclmulqdq",
    "__SHA__": "sha_ni",
    "__GFNI__": "gfni",
    "__VAES__": "vaes",
    "__VPCLMULQDQ__": "vpclmulqdq",
    "__AVX512F__": "avx512f",
    "__AVX512BW__": "avx512bw",
    "__AVX512CD__": "avx512cd",
    "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl",
    "__AVX512IFMA__": "avx512ifma",
    "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2",
    "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BF16__": "avx512_bf16",
    "__AVX512FP16__": "avx512_fp16",
    "__AVXVNNI__": "avx_vnni",
    "__AMX_TILE__": "amx_tile",
    "__AMX_INT8__": "amx_int8",
    "__AMX_BF16__": "amx_bf16",
}
# What each reduced precision needs from a build (any one of the alternatives), and the
# default targets when --cpu-arch is not given: AVX-512 plus that one extension.
PRECISION_FEATURES = {
    "int8": ("avx512_vnni", "avx2"),
    "bfloat16": ("avx512_bf16",),
}
PRECISION_DEFAULT_ARCHS = {
    "float32": DEFAULT_ARCHS,
    "int8": ("x86-64-v4+avx512vnni", "x86-64-v3"),
    "bfloat16": ("x86-64-v4+avx512bf16",),
}


def lib_name(arch: str) -> str:
    return f"{LIB_PREFIX}.{arch}.so"


def _run(cmd: Sequence[str], timeout: float, what: Path | str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise ConvertError(
            what,
            f"C compiler {cmd[0]!r} not found: the CPU kernels are compiled at convert time",
            hint="install gcc (apt-get install gcc), or convert with --cpu-arch none for the numpy engine",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ConvertError(what, f"{cmd[0]} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-8:]
        raise ConvertError(what, f"{' '.join(cmd[:3])} … failed: " + " | ".join(tail))
    return proc


def arch_flags(arch: str) -> list[str]:
    """``x86-64-v4+avx512vnni`` -> ``["-march=x86-64-v4", "-mavx512vnni"]``.

    A target is a gcc ``-march`` name, optionally followed by ``+ext`` for each extra
    instruction set (gcc's ``-mext`` spelling), for CPUs between the named levels.
    """
    base, *extra = arch.split("+")
    ok = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
    if not ok.match(base) or not all(ok.match(e) for e in extra):
        raise ConvertError(
            arch,
            f"--cpu-arch {arch!r} is not a gcc -march name with optional +extensions",
            hint="e.g. x86-64-v3, x86-64-v4, znver4, x86-64-v4+avx512vnni",
        )
    return [f"-march={base}", *(f"-m{e}" for e in extra)]


def arch_features(arch: str) -> tuple[str, ...]:
    """The /proc/cpuinfo flags code compiled for ``arch`` may use, sorted."""
    cmd = [CC, *arch_flags(arch), "-dM", "-E", "-x", "c", os.devnull]
    proc = _run(cmd, PROBE_TIMEOUT_S, arch)
    macros = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("#define ")}
    return tuple(sorted(flag for macro, flag in MACRO_FLAGS.items() if macro in macros))


def _compiler_id() -> str:
    return _run([CC, "--version"], PROBE_TIMEOUT_S, CC).stdout.splitlines()[0]


def cache_root() -> Path:
    return cache_base() / "cpu-kernels"


def sources_digest() -> hashlib._Hash:
    """sha256 over the kernels' C sources and headers (a build's cache key starts from it;
    benches key converted bundles, which hold compiled kernels, by it)."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update((SOURCES_DIR / name).read_bytes())
    return digest


def build_library(arch: str, *, cache: Path | None = None) -> Path:
    """Compile (or take from the cache) the kernels for ``-march=arch``; returns the .so path."""
    digest = sources_digest()
    digest.update("\0".join([_compiler_id(), arch, *CFLAGS]).encode())
    out_dir = (cache or cache_root()) / digest.hexdigest()[:24]
    out = out_dir / lib_name(arch)
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        sources = [str(SOURCES_DIR / n) for n in SOURCES]
        _run([CC, *arch_flags(arch), *CFLAGS, "-o", tmp, *sources, "-lm"], COMPILE_TIMEOUT_S, arch)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def build_for_bundle(
    bundle_dir: Path, archs: Sequence[str], precision: str, report: Progress
) -> dict[str, CpuKernelBuild]:
    """Write one library per arch into ``bundle_dir/kernels/cpu``, and the GEMM tuning table
    (``TUNING_TABLE``, checked first); return the manifest entries.

    Raises ConvertError when an arch is unknown to the compiler, or when ``precision`` needs
    an instruction (AVX-512 VNNI or AVX2 for int8, AVX-512 BF16 for bfloat16) that one of the
    archs lacks.
    """
    builds: dict[str, CpuKernelBuild] = {}
    out_dir = bundle_dir / CPU_KERNELS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        load_table(TUNING_TABLE)
    except EngineError as exc:
        raise ConvertError(TUNING_TABLE, str(exc)) from exc
    shutil.copyfile(TUNING_TABLE, bundle_dir / BUNDLE_TABLE)
    for n, arch in enumerate(dict.fromkeys(archs)):
        report(f"cpu kernels {arch}", 0.6 + 0.2 * n / max(1, len(archs)))
        features = arch_features(arch)
        need = PRECISION_FEATURES.get(precision, ())
        if need and not set(need) & set(features):
            raise ConvertError(
                arch,
                f"--precision {precision} needs {' or '.join(need)}, which -march={arch} does not have",
                hint="choose --cpu-arch targets with it (e.g. x86-64-v4+avx512vnni+avx512bf16, sapphirerapids), or --precision float32",
            )
        t0 = time.perf_counter()
        lib = build_library(arch)
        shutil.copyfile(lib, out_dir / lib_name(arch))
        builds[arch] = CpuKernelBuild(
            file=f"{CPU_KERNELS_DIR}/{lib_name(arch)}",
            features=features,
            build_s=round(time.perf_counter() - t0, 3),
        )
    return builds
