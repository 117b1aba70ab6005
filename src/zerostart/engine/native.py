"""Loading the bundle's native CPU kernels: pick the build this CPU can run, map it with ctypes.

A CPU bundle carries one shared library per target CPU (``kernels/cpu/``, built
at convert time by ``zerostart.kernels.cpu_build``) and the manifest lists, for
each, the CPU features its code may use. At load time we read this CPU's
features and take the runnable build that uses the most of them (AVX-512 over
AVX2 over the portable x86-64 build). If none is runnable the worker refuses
to start, naming the features the CPU lacks, rather than dying of SIGILL on
the first request.

The features come from the kernel's view of the CPU: the ``flags`` line of
``/proc/cpuinfo``, which Linux fills from CPUID and clears for what the OS
has not enabled (AVX-512 state in XCR0, AMX tile permission), so it is what
code may actually execute. ``ZEROSTART_CPU_ARCH`` picks a build by name
instead (e.g. the portable one, to compare); it is refused like any other
when this CPU cannot run it.

Runtime module: standard library only (ctypes); ``addr`` reads a numpy array's
address for the numpy engine without importing numpy.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from zerostart.bundle.manifest import CpuKernelBuild, FileEntry
from zerostart.engine.cpu_tuning import (
    BUNDLE_TABLE,
    CpuIdentity,
    GemmPlan,
    TuningRow,
    choose_plan,
    cpu_identity,
    load_table,
)
from zerostart.errors import EngineError

if TYPE_CHECKING:
    import numpy as np

ABI_VERSION = 5  # must match ZS_ABI_VERSION in kernels/cpu/zs_cpu.c
CPUINFO = "/proc/cpuinfo"
CPUINFO_READ_BYTES = 64 * 1024  # the first CPU's block; the flags line is in it
ARCH_ENV = "ZEROSTART_CPU_ARCH"

# Activation codes of zs_bias_act (kernels/cpu/zs_cpu.c).
ACT_NONE, ACT_GELU_ERF, ACT_GELU_TANH, ACT_RELU, ACT_TANH = 0, 1, 2, 3, 4
# Pooling modes of zs_pool_vector.
POOL_CLS, POOL_MEAN = 0, 1
# Bits of zs_precisions() (kernels/cpu/zs_cpu_gemm.c): the matrix products compiled in
# (float32: our own fp32 GEMM, kernels/cpu/zs_gemm_f32.c, in every build since ABI 4).
PRECISION_BITS = {"int8": 1, "bfloat16": 2, "float32": 4}

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float

# Kernel libraries loaded in this process, by the sha256 their bundle's manifest records:
# a warm slot's canary and the model it is then assigned usually carry the same build of
# the same sources (byte for byte), and loading it again is a dlopen and relocation of
# the copy (~2 ms at assignment). Libraries are never unloaded, as ctypes never does.
_LOADED: dict[str, ctypes.CDLL] = {}


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """This CPU's feature flags as Linux names them ("avx2", "avx512f", "avx512_vnni", ...).

    Empty when they cannot be read (not Linux): then only a build needing nothing runs.
    """
    try:
        with open(cpuinfo, "rb") as f:
            head = f.read(CPUINFO_READ_BYTES).decode("ascii", "replace")
    except OSError:
        return frozenset()
    for line in head.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose_build(
    builds: Mapping[str, CpuKernelBuild], flags: frozenset[str], *, want: str | None = None
) -> str:
    """The arch of the build to load; raise EngineError naming what this CPU lacks.

    ``want``: a build's name (from ``ZEROSTART_CPU_ARCH``); otherwise the runnable
    build using the most features.
    """
    missing = {arch: sorted(set(b.features) - flags) for arch, b in builds.items()}
    if want is not None:
        if want not in builds:
            raise EngineError(
                f"{ARCH_ENV}={want!r} but the bundle holds kernels for {sorted(builds)}",
                hint=f"unset {ARCH_ENV}, or convert with --cpu-arch {want}",
            )
        if missing[want]:
            raise EngineError(
                f"{ARCH_ENV}={want}: this CPU lacks {', '.join(missing[want])}",
                hint=f"unset {ARCH_ENV} to take the best build this CPU runs",
            )
        return want
    runnable = [arch for arch in builds if not missing[arch]]
    if not runnable:
        import platform  # only to name the machine in the error

        lacks = "; ".join(f"{arch} needs {', '.join(m)}" for arch, m in missing.items())
        raise EngineError(
            f"this CPU ({platform.machine()}) cannot run any kernel build in the bundle: {lacks}",
            hint="convert again with a --cpu-arch this CPU has (e.g. --cpu-arch x86-64,x86-64-v3)",
        )
    return max(runnable, key=lambda a: len(builds[a].features))


def addr(a: np.ndarray) -> int:
    """The address of an array's first element (the array must stay alive during the call)."""
    return int(a.__array_interface__["data"][0])


class NativeKernels:
    """The functions of one loaded kernel library, with typed signatures.

    Every call works on a sub-range (rows, or (sequence, head) items) so the
    engine can split one operation over threads: ctypes releases the GIL.
    """

    def __init__(
        self,
        path: Path,
        arch: str,
        *,
        tuning: list[TuningRow] | None = None,
        cpu: CpuIdentity | None = None,
        sha256: str | None = None,
    ) -> None:
        """``tuning``: the CPU GEMM tuning table's rows (none: the default rule for every CPU);
        ``cpu``: the CPU to choose for (default: this one); ``sha256``: the file's digest as
        the bundle's manifest records it: a library of that digest already loaded in this
        process is used instead of loading ``path`` again."""
        lib = _LOADED.get(sha256) if sha256 else None
        if lib is None:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise EngineError(f"cannot load CPU kernels {path}: {exc}") from exc
        if lib.zs_abi_version() != ABI_VERSION:
            raise EngineError(
                f"{path} has kernel ABI {lib.zs_abi_version()}, this zerostart needs {ABI_VERSION}",
                hint="re-run zerostart convert",
            )
        if sha256:
            _LOADED[sha256] = lib
        self.path, self.arch, self._lib = path, arch, lib
        sig = {
            "zs_bias_act": (None, [_P, _P, _I, _I, ctypes.c_int]),
            "zs_bias_residual_layernorm": (None, [_P, _P, _P, _P, _P, _I, _I, _F]),
            "zs_embed_layernorm": (None, [_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _F]),
            "zs_attention": (ctypes.c_int, [_P, _P, _P, _P, _I, _I, _I, _I, _I]),
            "zs_mean_pool": (None, [_P, _P, _P, _I, _I, _I, _I]),
            "zs_pool_vector": (ctypes.c_int, [_P, _I, _I, ctypes.c_int, ctypes.c_int, _I, _P]),
            "zs_softmax_rows": (None, [_P, _P, _I, _I]),
            "zs_copy_rows": (None, [_P, _P, _I, _I, _I]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.precisions = frozenset(
            p for p, bit in PRECISION_BITS.items() if lib.zs_precisions() & bit
        )
        lib.zs_gemm_f32.restype = ctypes.c_int
        lib.zs_gemm_f32.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I]
        self.gemm_f32 = lib.zs_gemm_f32
        lib.zs_gemm_f32_tile_name.restype = ctypes.c_char_p
        lib.zs_gemm_f32_tile_name.argtypes = [_I]
        names: list[str] = []
        while (name := lib.zs_gemm_f32_tile_name(len(names))) is not None:
            names.append(name.decode("ascii"))
        # The fp32 register tiles this build has, in zs_gemm_f32's index order; the first
        # is the build's default ("avx2_6x16": ISA, rows x columns).
        self.gemm_f32_tiles = tuple(names)
        self.gemm_plan: GemmPlan = choose_plan(
            tuning or [], self.gemm_f32_tiles, host_identity() if cpu is None else cpu
        )
        if "int8" in self.precisions:
            lib.zs_quantize_u8.restype = None
            lib.zs_quantize_u8.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I]
            lib.zs_gemm_u8s8.restype = None
            lib.zs_gemm_u8s8.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I]
            self.quantize_u8 = lib.zs_quantize_u8
            self.gemm_u8s8 = lib.zs_gemm_u8s8
            # Bytes per quantised activation: 1 (VNNI, uint8) or 2 (AVX2, the same values
            # as int16); builds from before the AVX2 kernel have no such symbol (VNNI only).
            width = getattr(lib, "zs_int8_a_width", None)
            self.int8_a_width = 1 if width is None else int(width())
        if "bfloat16" in self.precisions:
            lib.zs_to_bf16.restype = None
            lib.zs_to_bf16.argtypes = [_P, _P, _I, _I, _I, _I]
            lib.zs_gemm_bf16.restype = None
            lib.zs_gemm_bf16.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I]
            self.to_bf16 = lib.zs_to_bf16
            self.gemm_bf16 = lib.zs_gemm_bf16
        # DeBERTa-v2/v3 (kernels/cpu/zs_deberta.c); None in builds made before it existed.
        self.disentangled_attention = self.embed_layernorm_nopos = None
        if hasattr(lib, "zs_disentangled_attention"):
            fn = lib.zs_disentangled_attention
            fn.restype, fn.argtypes = ctypes.c_int, [_P, _P, _P, _P, _P, _I, _P, _P, *[_I] * 5]
            self.disentangled_attention = fn
            fn = lib.zs_embed_layernorm_nopos
            fn.restype, fn.argtypes = None, [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _F]
            self.embed_layernorm_nopos = fn
        self.bias_act = lib.zs_bias_act
        self.bias_residual_layernorm = lib.zs_bias_residual_layernorm
        self.embed_layernorm = lib.zs_embed_layernorm
        self.attention = lib.zs_attention
        self.mean_pool = lib.zs_mean_pool
        self.pool_vector = lib.zs_pool_vector
        self.softmax_rows = lib.zs_softmax_rows
        self.copy_rows = lib.zs_copy_rows


@functools.cache
def host_flags() -> frozenset[str]:
    """``cpu_flags()`` of this CPU, read once per process (/proc/cpuinfo, ~0.5 ms)."""
    return cpu_flags()


@functools.cache
def host_identity() -> CpuIdentity:
    """``cpu_identity()`` of this CPU, read once per process (/proc/cpuinfo and sysfs)."""
    return cpu_identity()


def load_bundle_kernels(
    bundle_dir: Path,
    builds: Mapping[str, CpuKernelBuild],
    *,
    flags: frozenset[str] | None = None,
    files: Mapping[str, FileEntry] | None = None,
) -> NativeKernels:
    """Choose and load the bundle's best runnable build (see the module docstring), with its
    fp32 GEMM plan from the bundle's tuning table (``zerostart.engine.cpu_tuning``).

    ``files``: the manifest's file entries; with them, a build whose digest this process
    has loaded already (a warm slot's canary) is not loaded again."""
    arch = choose_build(
        builds, host_flags() if flags is None else flags, want=os.environ.get(ARCH_ENV) or None
    )
    tuning = load_table(bundle_dir / BUNDLE_TABLE)
    name = builds[arch].file
    entry = files.get(name) if files is not None else None
    return NativeKernels(
        bundle_dir / name, arch, tuning=tuning, sha256=entry.sha256 if entry else None
    )
