"""Load a bundle's compiled kernels into the current context and launch them.

Image choice per variant (``choose_image``, pure and unit-tested): the cubin
for the device's exact arch; else the PTX, which the driver JIT-compiles (it
is sm_80 PTX, valid on every later GPU); else a clear error naming the GPU's
arch and the archs the bundle was compiled for.

Shared memory: a block may use 48 KiB (static + dynamic) without asking; past
that, up to the device's opt-in limit, only after
``cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)`` raised the function's
dynamic limit (CUDA C Programming Guide, "Shared Memory", compute capability
7.x+). The static part is read from the loaded function
(``CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES``): a kernel launched with exactly 48
KiB of dynamic memory and 1 KiB of static memory needs the opt-in too.

Arguments are packed by the manifest's signature (``pack_args``): pointers and
``i64`` as 8 bytes, ``i32`` as 4, ``fp32`` as a C float, followed by the two
scratch pointers every Triton kernel takes last (global and profile scratch;
null unless the compiler asked for global scratch).

Runtime module: standard library + the driver bindings.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.bundle.launch import PTX_KEY, KernelImage, KernelManifest, KernelVariant
from zerostart.engine.cuda.driver import (
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
    Driver,
)
from zerostart.errors import BundleError, EngineError

DEFAULT_SHARED_LIMIT_BYTES = 48 * 1024  # static + dynamic above this needs the opt-in
_CTYPES: dict[str, Any] = {
    "*fp16": ctypes.c_uint64,
    "*fp32": ctypes.c_uint64,
    "*i32": ctypes.c_uint64,
    "i64": ctypes.c_int64,
    "i32": ctypes.c_int32,
    "fp32": ctypes.c_float,
}


def choose_image(km: KernelManifest, variant: KernelVariant, cc: int) -> tuple[str, KernelImage]:
    """("sm_90" | "ptx", image) to load on a device of compute capability ``cc``."""
    arch = f"sm_{cc}"
    if arch in variant.images:
        return arch, variant.images[arch]
    ptx_cc = int(km.ptx_arch.removeprefix("sm_"))
    if PTX_KEY in variant.images and cc >= ptx_cc:
        return PTX_KEY, variant.images[PTX_KEY]
    raise EngineError(
        f"this GPU is {arch}, and the bundle's kernels were compiled for "
        f"{', '.join(km.archs) or 'no arch'} with {km.ptx_arch} PTX, which does not run on it",
        hint=f"re-run `zerostart convert --device cuda --arch {arch}`",
    )


def dynamic_shared_limit(key: str, static: int, dynamic: int, optin: int) -> int | None:
    """The MAX_DYNAMIC_SHARED_SIZE_BYTES a kernel must be given, or None when 48 KiB suffice.

    ``static`` and ``dynamic`` are the kernel's shared bytes per block, ``optin``
    the device's CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN. Raises
    EngineError when the block cannot fit on this GPU at all.
    """
    if static + dynamic <= DEFAULT_SHARED_LIMIT_BYTES:
        return None
    if static + dynamic > optin:
        raise EngineError(
            f"kernel {key} needs {static + dynamic} bytes of shared memory per block "
            f"({static} static + {dynamic} dynamic); this GPU allows {optin}",
            hint="re-run `zerostart convert --device cuda --arch sm_XY` with this GPU's arch",
        )
    return dynamic


class PackedArgs:
    """A kernel's parameter block: C values kept alive plus the ``void**`` the driver reads."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.pointers = (ctypes.c_void_p * len(values))(
            *(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values)
        )


def pack_args(
    variant: KernelVariant, args: Mapping[str, int | float], scratch: int = 0
) -> PackedArgs:
    """Pack ``args`` (by name) in the order and C types of the variant's signature."""
    names = {n for n, _ in variant.signature}
    extra = set(args) - names
    missing = names - set(args)
    if extra or missing:
        raise EngineError(
            f"kernel {variant.key}: arguments missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    values: list[Any] = [_CTYPES[dtype](args[name]) for name, dtype in variant.signature]
    values += [ctypes.c_uint64(scratch), ctypes.c_uint64(0)]  # global, profile scratch
    return PackedArgs(values)


@dataclass
class Kernel:
    """A loaded variant: the function handle and the launch data of the image chosen."""

    variant: KernelVariant
    image_key: str
    image: KernelImage
    function: int


class KernelLibrary:
    """A bundle's ``kernels/`` for one device: one module per variant, loaded on first use.

    A bundle holds every block config it was compiled with, and a forward pass
    uses a handful: loading only those keeps start-up short (each module load is
    a driver call that parses a cubin, or JIT-compiles PTX).
    """

    def __init__(
        self,
        driver: Driver,
        kernels_dir: Path,
        km: KernelManifest,
        cc: int,
        shared_optin_bytes: int,
    ) -> None:
        self.driver = driver
        self.manifest = km
        self.kernels_dir = Path(kernels_dir)
        self.cc = cc
        self.shared_optin_bytes = shared_optin_bytes
        self.kernels: dict[str, Kernel] = {}
        for v in km.variants:  # every variant has an image for this GPU, or say so now
            choose_image(km, v, cc)

    def fits(self, variant: KernelVariant) -> bool:
        """Whether the variant's image for this GPU can fit its dynamic shared memory at all."""
        _key, image = choose_image(self.manifest, variant, self.cc)
        return image.shared_bytes <= self.shared_optin_bytes

    def load(self, v: KernelVariant) -> Kernel:
        """The variant's loaded function (loads its module the first time)."""
        k = self.kernels.get(v.key)
        if k is not None:
            return k
        key, image = choose_image(self.manifest, v, self.cc)
        path = self.kernels_dir / image.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(path, f"cannot read kernel image: {exc.strerror}") from exc
        module = self.driver.module_load(data)
        fn = self.driver.module_function(module, v.entry)
        static = self.driver.func_attribute(fn, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        limit = dynamic_shared_limit(v.key, static, image.shared_bytes, self.shared_optin_bytes)
        if limit is not None:
            self.driver.func_set_attribute(
                fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit
            )
        k = self.kernels[v.key] = Kernel(v, key, image, fn)
        return k

    def launch(
        self,
        variant: KernelVariant,
        sizes: Mapping[str, int],
        args: Mapping[str, int | float],
        stream: int,
        scratch: int = 0,
    ) -> None:
        k = self.load(variant)
        grid = variant.grid_for(sizes)
        if k.image.global_scratch_bytes and not scratch:
            raise EngineError(f"kernel {variant.key} needs global scratch memory and got none")
        packed = pack_args(variant, args, scratch)
        self.driver.launch(
            k.function, grid, k.image.block, k.image.shared_bytes, stream, packed.pointers
        )
