"""Ahead-of-time compiler: Triton kernels -> cubins per GPU arch + PTX, and their manifest.

Build time only (imports Triton); runs on a machine without a GPU, because
Triton compiles for a named target (``GPUTarget("cuda", 90, 32)``) without
asking a driver. Output, inside the bundle::

    kernels/manifest.json          zerostart.bundle.launch.KernelManifest
    kernels/<variant>.sm_90.cubin  one per variant and arch
    kernels/<variant>.ptx          PTX for ``ptx_arch`` (sm_80), JIT-compiled by
                                   the driver on GPUs with no matching cubin

Compatibility choices, and why:

* PTX ISA version 8.0 (CUDA 12.0) everywhere, so the PTX fallback JIT-compiles
  on any CUDA 12+ driver; Triton would otherwise emit the newest version its
  ptxas knows (9.x, which needs a CUDA 13 driver).
* cubins for sm_80..sm_90 are assembled with the CUDA 12.x ``ptxas`` that the
  Triton wheel ships (ELF ABI 7, loadable by CUDA 12 drivers); sm_100+ uses
  the wheel's CUDA 13 ``ptxas``. ``check_cubin`` verifies the arch and ABI of
  every cubin written.
* The PTX is compiled for sm_80 (not sm_90a): arch-specific ("a") PTX cannot be
  JIT-compiled for a later GPU, plain sm_80 PTX can.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zerostart.bundle.launch import (
    KERNELS_DIR,
    KERNELS_MANIFEST_NAME,
    PTX_KEY,
    GemmChoice,
    KernelImage,
    KernelManifest,
    KernelVariant,
    batch_buckets,
    seq_buckets,
)
from zerostart.bundle.manifest import Manifest
from zerostart.errors import ConvertError
from zerostart.kernels.variants import (
    DEFAULT_GEMM_CONFIGS,
    GemmConfig,
    KernelSpec,
    model_choices,
    model_specs,
    packaged_tuning,
    tuned_configs,
    tuning_specs,
)

Progress = Callable[[str, float], None]

PTX_ARCH = "sm_80"
PTX_ISA_VERSION = 80  # PTX ISA 8.0 = CUDA 12.0: what the driver's JIT must understand
MIN_ARCH = 80  # tl.dot in fp16 with our tile shapes, cp.async: Ampere and newer
WARP_SIZE = 32
DEFAULT_MAX_BATCH = 32
ELF_MAGIC = b"\x7fELF"
EM_CUDA = 190  # ELF e_machine of NVIDIA cubins
CUDA12_ELF_ABI = 7  # e_ident[EI_ABIVERSION] of cubins from CUDA 12 ptxas (CUDA 13 writes 8)


TRITON_SERIES = "3.9"  # the compiler whose ptxas layout and options the choices above rely on


def require_triton() -> str:
    """Triton's version; ConvertError when Triton is missing or not the series we compile with."""
    try:
        import triton
    except ImportError as exc:
        raise ConvertError(
            "--arch",
            "compiling GPU kernels needs Triton (build time only; no GPU needed)",
            hint=f"pip install 'triton=={TRITON_SERIES}.*', or copy kernels compiled elsewhere",
        ) from exc
    version = str(triton.__version__)
    if version.split(".")[:2] != TRITON_SERIES.split("."):
        raise ConvertError(
            "--arch",
            f"GPU kernels are compiled with Triton {TRITON_SERIES}.x, and this is Triton {version}",
            hint=f"pip install 'triton=={TRITON_SERIES}.*', or copy kernels compiled elsewhere",
        )
    return version


def parse_arch(arch: str) -> int:
    """ "sm_90" -> 90. Raise ConvertError naming the accepted form otherwise."""
    a = arch.strip().lower()
    if not a.startswith("sm_") or not a[3:].isdigit():
        raise ConvertError("--arch", f"{arch!r} is not a GPU arch like sm_86 or sm_90")
    cap = int(a[3:])
    if cap < MIN_ARCH:
        raise ConvertError("--arch", f"{arch} is older than sm_{MIN_ARCH}, which the kernels need")
    return cap


def _ptxas_for(cap: int) -> str:
    import triton

    nvidia = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return str(nvidia / ("ptxas" if cap < 100 else "ptxas-blackwell"))


def _compile(spec: KernelSpec, cap: int) -> Any:
    """Compile one spec for compute capability ``cap``; returns Triton's CompiledKernel."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # fused multiply-add, as today
    # Triton picks its CUDA 13 ptxas for sm_90; point it at the CUDA 12 one (see module doc).
    os.environ["TRITON_PTXAS_BLACKWELL_PATH"] = _ptxas_for(cap)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from zerostart.kernels import triton_deberta, triton_kernels, triton_modernbert

    fn = {**triton_kernels.KERNELS, **triton_modernbert.KERNELS, **triton_deberta.KERNELS}[spec.op]
    names = [n for n, _ in spec.signature]
    signature: dict[str, str] = dict(spec.signature)
    signature.update({k: "constexpr" for k in spec.constexprs})
    order = fn.arg_names
    if sorted(order) != sorted(signature):
        raise ConvertError(spec.key, f"signature {sorted(signature)} != kernel arguments {order}")
    signature = {k: signature[k] for k in order}
    divisible = [n for n, d in spec.signature if d.startswith("*")] + list(spec.aligned_args)
    attrs = {(order.index(n),): [["tt.divisibility", 16]] for n in divisible if n in names}
    src = ASTSource(fn, signature, constexprs=dict(spec.constexprs), attrs=attrs)
    options = {
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "ptx_version": PTX_ISA_VERSION,
    }
    try:
        return triton.compile(src, target=GPUTarget("cuda", cap, WARP_SIZE), options=options)
    except Exception as exc:  # Triton raises many types; translate where it enters our code
        raise ConvertError(spec.key, f"Triton failed to compile for sm_{cap}: {exc}") from exc


def check_cubin(data: bytes, cap: int) -> None:
    """Refuse a cubin that is not an NVIDIA ELF for exactly sm_<cap>."""
    if data[:4] != ELF_MAGIC or len(data) < 64:
        raise ConvertError(f"sm_{cap}", "compiled cubin is not an ELF file")
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != EM_CUDA:
        raise ConvertError(f"sm_{cap}", f"cubin e_machine {machine} is not EM_CUDA ({EM_CUDA})")
    if cubin_arch(data) != cap:
        raise ConvertError(f"sm_{cap}", f"cubin is for sm_{cubin_arch(data)}, not sm_{cap}")
    if cap < 100 and data[8] != CUDA12_ELF_ABI:
        raise ConvertError(
            f"sm_{cap}",
            f"cubin has ELF ABI {data[8]}, not {CUDA12_ELF_ABI}: a CUDA 12 driver could not load it",
            hint="clear Triton's cache (~/.triton/cache) and convert again",
        )


def cubin_arch(data: bytes) -> int:
    """The SM version in a cubin's ELF header (e_flags; layout depends on the ELF ABI version)."""
    (flags,) = struct.unpack_from("<I", data, 48)
    abi = data[8]
    if abi >= 8:  # CUDA 13 layout: arch in bits 8..15
        return int((flags >> 8) & 0xFF)
    return int(flags & 0xFF)


def _image(kernel: Any, file: str) -> KernelImage:
    md = kernel.metadata
    return KernelImage(
        file=file,
        num_warps=int(md.num_warps),
        shared_bytes=int(md.shared),
        global_scratch_bytes=int(md.global_scratch_size),
    )


def compile_specs(
    specs: Sequence[KernelSpec],
    archs: Sequence[str],
    out_dir: Path,
    progress: Progress | None = None,
) -> list[KernelVariant]:
    """Compile every spec for every arch (cubin) and for ``PTX_ARCH`` (PTX); write the files."""
    report: Progress = progress or (lambda _stage, _fraction: None)
    require_triton()
    caps = sorted({parse_arch(a) for a in archs})
    if not caps:
        raise ConvertError("--arch", "no GPU arch given", hint="e.g. --arch sm_86,sm_90")
    ptx_cap = parse_arch(PTX_ARCH)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = []
    total = len(specs) * (len(caps) + (ptx_cap not in caps))
    done = 0
    for spec in specs:
        images: dict[str, KernelImage] = {}
        entry = ""
        for cap in sorted({*caps, ptx_cap}):
            kernel = _compile(spec, cap)
            entry = str(kernel.metadata.name)
            if cap in caps:
                cubin = bytes(kernel.asm["cubin"])
                check_cubin(cubin, cap)
                name = f"{spec.key}.sm_{cap}.cubin"
                (out_dir / name).write_bytes(cubin)
                images[f"sm_{cap}"] = _image(kernel, name)
            if cap == ptx_cap:
                name = f"{spec.key}.ptx"
                (out_dir / name).write_text(str(kernel.asm["ptx"]), encoding="utf-8")
                images[PTX_KEY] = _image(kernel, name)
            done += 1
            report(f"kernels {spec.key} sm_{cap}", done / total)
        variants.append(
            KernelVariant(
                key=spec.key,
                op=spec.op,
                entry=entry,
                params={**spec.constexprs, **spec.params},
                signature=spec.signature,
                grid=spec.grid,
                images=images,
            )
        )
    return variants


def compiler_versions() -> dict[str, str]:
    import subprocess

    import triton

    def ptxas_version(cap: int) -> str:
        out = subprocess.run(
            [_ptxas_for(cap), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return out.strip().splitlines()[-1]

    return {
        "triton": triton.__version__,
        "ptxas_sm_lt_100": ptxas_version(90),
        "ptxas_sm_ge_100": ptxas_version(100),
        "ptx_isa": f"{PTX_ISA_VERSION // 10}.{PTX_ISA_VERSION % 10}",
    }


def compile_for_bundle(
    manifest: Manifest,
    bundle_dir: str | Path,
    archs: list[str],
    progress: Progress | None = None,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    gemm_configs: tuple[GemmConfig, ...] = DEFAULT_GEMM_CONFIGS,
    tuning: Sequence[GemmChoice] | None = None,
    tuning_candidates: bool = False,
) -> dict[str, Any]:
    """Write ``kernels/`` for this model into ``bundle_dir``; return the kernels manifest as a dict.

    GEMM block configs: ``gemm_configs`` plus those a tuning run measured best for
    this model's (N, K) on one of ``archs`` (``tuning``; default the results shipped
    in ``zerostart/kernels/tuning/``), which also go into the manifest's gemm_table.
    ``tuning_candidates``: also every ``TUNING_GEMM_CONFIGS`` build of the encoder's
    GEMMs, for tools/gpu_tune.py to time on a GPU.

    Called by ``zerostart convert --device cuda --arch ...`` on the bundle's
    temporary folder, before the bundle manifest hashes the files, so the
    kernels are covered by the bundle's digests like every other file.
    """
    if manifest.dtype != "float16":
        raise ConvertError(
            bundle_dir, "GPU kernels need float16 weights", hint="convert with --device cuda"
        )
    out_dir = Path(bundle_dir) / KERNELS_DIR
    arch_names = {f"sm_{parse_arch(a)}" for a in archs}
    choices = model_choices(
        manifest, packaged_tuning(sorted(arch_names)) if tuning is None else tuning
    )
    choices = tuple(c for c in choices if c.arch in arch_names)
    specs = model_specs(manifest, tuned_configs(choices, gemm_configs))
    if tuning_candidates:
        keys = {s.key for s in specs}
        specs += [s for s in tuning_specs(manifest) if s.key not in keys]
    variants = compile_specs(specs, archs, out_dir, progress)
    km = KernelManifest(
        archs=tuple(f"sm_{c}" for c in sorted({parse_arch(a) for a in archs})),
        ptx_arch=PTX_ARCH,
        compiler=compiler_versions(),
        batch_buckets=batch_buckets(max_batch),
        seq_buckets=seq_buckets(manifest.max_length),
        variants=tuple(variants),
        gemm_table=choices,
    )
    km.validate(out_dir / KERNELS_MANIFEST_NAME)
    (out_dir / KERNELS_MANIFEST_NAME).write_text(km.to_json(), encoding="utf-8")
    import json

    data: dict[str, Any] = json.loads(km.to_json())
    return data
