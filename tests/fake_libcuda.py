"""A stand-in for libcuda's function table, for unit tests of our own driver logic.

``Driver(FakeCuda())`` runs the real ``Driver`` wrappers (ctypes marshalling,
status checks) against this table instead of ``libcuda.so.1``. It models the
parts of the driver's behaviour that our engine depends on and that a
recording stub would hide:

* **Contexts are current per OS thread.** Each thread has its own context
  stack (``cuCtxPushCurrent`` / ``cuCtxPopCurrent`` / ``cuCtxSetCurrent``); a
  call that needs a context fails with ``CUDA_ERROR_INVALID_CONTEXT`` (201) on
  a thread where none is current, as the real driver does.
* **Shared memory per block.** A function's static shared memory is set per
  entry name; its dynamic limit starts at 48 KiB minus the static part and
  is raised only by ``cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)``, up
  to the device's opt-in limit minus the static part. A launch asking for
  more dynamic memory than the limit fails with ``CUDA_ERROR_INVALID_VALUE``.
* Device memory is real bytes, so copies move data; kernels compute nothing.
* Stream capture records launches into a graph; a graph launch replays them.

``write_fake_kernels`` writes a kernels/ folder from the model's kernel specs
(no Triton): what ``CudaEngine`` loads, with placeholder cubins.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_NOT_FOUND = 500
DEFAULT_SHARED_BYTES = 48 * 1024
_ERRORS = {
    CUDA_ERROR_INVALID_VALUE: (b"CUDA_ERROR_INVALID_VALUE", b"invalid argument"),
    CUDA_ERROR_INVALID_CONTEXT: (b"CUDA_ERROR_INVALID_CONTEXT", b"invalid device context"),
    CUDA_ERROR_NOT_FOUND: (b"CUDA_ERROR_NOT_FOUND", b"named symbol not found"),
}
# Calls that work without a current context (device queries, context management).
_CONTEXT_FREE = {
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuGraphDestroy",
}


def _int(x: Any) -> int:
    """The integer inside a ctypes scalar (None for a null pointer), or ``x`` itself."""
    v = getattr(x, "value", x)
    return int(v or 0)


@dataclass
class _Function:
    name: str
    static_shared: int
    max_dynamic: int


@dataclass
class Launch:
    function: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    thread: str


@dataclass
class FakeCuda:
    """The function table; attributes named like libcuda's symbols. See the module docstring."""

    compute_capability: int = 90
    sm_count: int = 132
    shared_optin_bytes: int = 227 * 1024  # sm_90's opt-in maximum per block
    static_shared: Mapping[str, int] = field(default_factory=dict)  # entry name -> bytes
    launches: list[Launch] = field(default_factory=list)
    set_attributes: list[tuple[str, int, int]] = field(default_factory=list)
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (call, status, thread)

    def __post_init__(self) -> None:
        self._tls = threading.local()
        self._next = 0x7F0000000000
        self._device_memory: dict[int, bytearray] = {}
        self._host: dict[int, Any] = {}
        self._functions: dict[int, _Function] = {}
        self._graphs: dict[int, list[Launch]] = {}
        self._capturing: dict[int, list[Launch]] = {}
        self.primary_retains = 0
        self._primary = self._handle()

    # -- bookkeeping ---------------------------------------------------------------
    def _handle(self, size: int = 256) -> int:
        self._next += max(256, size)
        return self._next

    def _stack(self) -> list[int]:
        if not hasattr(self._tls, "stack"):
            self._tls.stack = []
        stack: list[int] = self._tls.stack
        return stack

    def current_context(self) -> int:
        """The context current on the calling thread (0 when none)."""
        stack = self._stack()
        return stack[-1] if stack else 0

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("cu"):
            raise AttributeError(name)
        impl = getattr(type(self), "_" + name, None)
        if impl is None:
            raise AttributeError(f"FakeCuda does not implement {name}")

        def call(*args: Any) -> int:
            if name not in _CONTEXT_FREE and not self.current_context():
                status = CUDA_ERROR_INVALID_CONTEXT
            else:
                status = int(impl(self, *args))
            if status:
                self.failures.append((name, status, threading.current_thread().name))
            return status

        return call

    def _find(self, ptr: int, nbytes: int) -> tuple[bytearray, int]:
        for base, buf in self._device_memory.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return buf, ptr - base
        raise AssertionError(f"device range {ptr:#x}+{nbytes} was never allocated")

    # -- errors, init, device ----------------------------------------------------------
    def _cuGetErrorName(self, status: int, out: Any) -> int:
        if status not in _ERRORS:
            return CUDA_ERROR_INVALID_VALUE
        out._obj.value = _ERRORS[status][0]
        return CUDA_SUCCESS

    def _cuGetErrorString(self, status: int, out: Any) -> int:
        out._obj.value = _ERRORS.get(status, (b"", b"unknown error"))[1]
        return CUDA_SUCCESS

    def _cuInit(self, flags: int) -> int:
        return CUDA_SUCCESS

    def _cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = 12080
        return CUDA_SUCCESS

    def _cuDeviceGet(self, out: Any, ordinal: int) -> int:
        out._obj.value = ordinal
        return CUDA_SUCCESS

    def _cuDeviceGetName(self, buf: Any, n: int, device: int) -> int:
        buf.value = b"Fake GPU"
        return CUDA_SUCCESS

    def _cuDeviceGetAttribute(self, out: Any, attribute: int, device: int) -> int:
        values = {
            16: self.sm_count,
            75: self.compute_capability // 10,
            76: self.compute_capability % 10,
            97: self.shared_optin_bytes,
        }
        if attribute not in values:
            return CUDA_ERROR_INVALID_VALUE
        out._obj.value = values[attribute]
        return CUDA_SUCCESS

    # -- contexts: one stack per OS thread -----------------------------------------------
    def _cuDevicePrimaryCtxRetain(self, out: Any, device: int) -> int:
        self.primary_retains += 1
        out._obj.value = self._primary
        return CUDA_SUCCESS

    def _cuDevicePrimaryCtxRelease_v2(self, device: int) -> int:
        if self.primary_retains < 1:
            return CUDA_ERROR_INVALID_CONTEXT
        self.primary_retains -= 1
        return CUDA_SUCCESS

    def _cuCtxPushCurrent_v2(self, ctx: Any) -> int:
        if _int(ctx) != self._primary:
            return CUDA_ERROR_INVALID_CONTEXT
        self._stack().append(_int(ctx))
        return CUDA_SUCCESS

    def _cuCtxPopCurrent_v2(self, out: Any) -> int:
        stack = self._stack()
        if not stack:
            return CUDA_ERROR_INVALID_CONTEXT
        out._obj.value = stack.pop()
        return CUDA_SUCCESS

    def _cuCtxSetCurrent(self, ctx: Any) -> int:
        stack = self._stack()
        if stack:
            stack.pop()
        if _int(ctx):
            stack.append(_int(ctx))
        return CUDA_SUCCESS

    def _cuCtxGetCurrent(self, out: Any) -> int:
        out._obj.value = self.current_context() or None
        return CUDA_SUCCESS

    # -- memory ------------------------------------------------------------------------
    def _cuMemAlloc_v2(self, out: Any, size: Any) -> int:
        ptr = self._handle()
        self._next += -(-_int(size) // 256) * 256  # the whole range: allocations never overlap
        self._device_memory[ptr] = bytearray(_int(size))
        out._obj.value = ptr
        return CUDA_SUCCESS

    def _cuMemFree_v2(self, ptr: Any) -> int:
        return CUDA_SUCCESS if self._device_memory.pop(_int(ptr), None) is not None else 1

    def _cuMemAllocHost_v2(self, out: Any, size: Any) -> int:
        buf = ctypes.create_string_buffer(_int(size))
        self._host[ctypes.addressof(buf)] = buf
        out._obj.value = ctypes.addressof(buf)
        return CUDA_SUCCESS

    def _cuMemFreeHost(self, ptr: Any) -> int:
        return CUDA_SUCCESS if self._host.pop(_int(ptr), None) is not None else 1

    def _cuMemcpyHtoDAsync_v2(self, dst: Any, src: Any, n: Any, stream: Any) -> int:
        buf, off = self._find(_int(dst), _int(n))
        buf[off : off + _int(n)] = ctypes.string_at(_int(src), _int(n))
        return CUDA_SUCCESS

    def _cuMemcpyDtoHAsync_v2(self, dst: Any, src: Any, n: Any, stream: Any) -> int:
        buf, off = self._find(_int(src), _int(n))
        ctypes.memmove(_int(dst), bytes(buf[off : off + _int(n)]), _int(n))
        return CUDA_SUCCESS

    # -- streams, modules, functions, launches, graphs ---------------------------------------
    def _cuStreamCreate(self, out: Any, flags: int) -> int:
        out._obj.value = self._handle()
        return CUDA_SUCCESS

    def _cuStreamSynchronize(self, stream: Any) -> int:
        return CUDA_SUCCESS

    def _cuModuleLoadDataEx(self, out: Any, image: Any, n: int, opts: Any, vals: Any) -> int:
        out._obj.value = self._handle()
        return CUDA_SUCCESS

    def _cuModuleGetFunction(self, out: Any, module: Any, name: bytes) -> int:
        entry = name.decode()
        static = int(self.static_shared.get(entry, 0))
        fn = self._handle()
        self._functions[fn] = _Function(entry, static, DEFAULT_SHARED_BYTES - static)
        out._obj.value = fn
        return CUDA_SUCCESS

    def _cuFuncGetAttribute(self, out: Any, attribute: int, fn: Any) -> int:
        f = self._functions[_int(fn)]
        values = {1: f.static_shared, 8: f.max_dynamic}
        if attribute not in values:
            return CUDA_ERROR_INVALID_VALUE
        out._obj.value = values[attribute]
        return CUDA_SUCCESS

    def _cuFuncSetAttribute(self, fn: Any, attribute: int, value: int) -> int:
        f = self._functions[_int(fn)]
        if attribute != 8 or value > self.shared_optin_bytes - f.static_shared:
            return CUDA_ERROR_INVALID_VALUE
        f.max_dynamic = value
        self.set_attributes.append((f.name, attribute, value))
        return CUDA_SUCCESS

    def _cuLaunchKernel(self, fn: Any, *args: Any) -> int:
        gx, gy, gz, bx, by, bz, shared, stream = (_int(a) for a in args[:8])
        f = self._functions[_int(fn)]
        if shared > f.max_dynamic:  # what the driver refuses: no opt-in for this much
            return CUDA_ERROR_INVALID_VALUE
        launch = Launch(f.name, (gx, gy, gz), (bx, by, bz), shared, threading.current_thread().name)
        if stream in self._capturing:
            self._capturing[stream].append(launch)
        else:
            self.launches.append(launch)
        return CUDA_SUCCESS

    def _cuStreamBeginCapture_v2(self, stream: Any, mode: int) -> int:
        self._capturing[_int(stream)] = []
        return CUDA_SUCCESS

    def _cuStreamEndCapture(self, stream: Any, out: Any) -> int:
        graph = self._handle()
        self._graphs[graph] = self._capturing.pop(_int(stream))
        out._obj.value = graph
        return CUDA_SUCCESS

    def _cuGraphInstantiateWithFlags(self, out: Any, graph: Any, flags: Any) -> int:
        exe = self._handle()
        self._graphs[exe] = list(self._graphs[_int(graph)])
        out._obj.value = exe
        return CUDA_SUCCESS

    def _cuGraphDestroy(self, graph: Any) -> int:
        return CUDA_SUCCESS if self._graphs.pop(_int(graph), None) is not None else 1

    def _cuGraphExecDestroy(self, exe: Any) -> int:
        return CUDA_SUCCESS if self._graphs.pop(_int(exe), None) is not None else 1

    # Events: a fake clock (no work takes time here): every elapsed time is 1 ms.
    def _cuEventCreate(self, out: Any, flags: int) -> int:
        out._obj.value = self._handle()
        return CUDA_SUCCESS

    def _cuEventRecord(self, event: Any, stream: Any) -> int:
        return CUDA_SUCCESS

    def _cuEventSynchronize(self, event: Any) -> int:
        return CUDA_SUCCESS

    def _cuEventElapsedTime(self, out: Any, start: Any, end: Any) -> int:
        out._obj.value = 1.0
        return CUDA_SUCCESS

    def _cuGraphLaunch(self, exe: Any, stream: Any) -> int:
        for launch in self._graphs[_int(exe)]:
            self.launches.append(
                Launch(launch.function, launch.grid, launch.block, launch.shared_bytes, "graph")
            )
        return CUDA_SUCCESS


def gemm_shared_bytes(params: Mapping[str, int], num_stages: int) -> int:
    """Shared bytes of a pipelined fp16 GEMM: A and B tiles per stage (Triton's layout)."""
    tile = params["BLOCK_M"] * params["BLOCK_K"] + params["BLOCK_K"] * params["BLOCK_N"]
    return 2 * tile * num_stages


def write_fake_kernels(manifest: Any, bundle_dir: Path, *, arch: str = "sm_90") -> Path:
    """``bundle_dir/kernels``: the model's kernel variants with placeholder cubins (no Triton).

    Entry names are the op names (Triton names a kernel after its function);
    GEMMs ask for ``gemm_shared_bytes`` of dynamic shared memory, the others none.
    """
    from zerostart.bundle.launch import (
        KERNELS_DIR,
        KERNELS_MANIFEST_NAME,
        PTX_KEY,
        KernelImage,
        KernelManifest,
        KernelVariant,
        batch_buckets,
        seq_buckets,
    )
    from zerostart.kernels.variants import model_specs

    out = Path(bundle_dir) / KERNELS_DIR
    out.mkdir(parents=True, exist_ok=True)
    variants = []
    for spec in model_specs(manifest):
        name, ptx = f"{spec.key}.{arch}.cubin", f"{spec.key}.ptx"
        (out / name).write_bytes(b"\x7fELF" + bytes(60))
        (out / ptx).write_text(".version 8.0\n.target sm_80\n", encoding="utf-8")
        shared = gemm_shared_bytes(spec.constexprs, spec.num_stages) if spec.op == "gemm" else 0
        variants.append(
            KernelVariant(
                key=spec.key,
                op=spec.op,
                entry=spec.op,
                params={**spec.constexprs, **spec.params},
                signature=spec.signature,
                grid=spec.grid,
                images={
                    arch: KernelImage(name, spec.num_warps, shared),
                    PTX_KEY: KernelImage(ptx, spec.num_warps, shared),
                },
            )
        )
    km = KernelManifest(
        archs=(arch,),
        ptx_arch="sm_80",
        compiler={"fake": "tests/fake_libcuda.py"},
        batch_buckets=batch_buckets(8),
        seq_buckets=seq_buckets(manifest.max_length),
        variants=tuple(variants),
    )
    (out / KERNELS_MANIFEST_NAME).write_text(km.to_json(), encoding="utf-8")
    return out
