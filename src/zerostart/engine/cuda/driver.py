"""ctypes bindings to the CUDA driver API (``libcuda.so.1``) and nothing else.

Every GPU library but the driver is absent from a zerostart worker: no cudart,
cuBLAS, nvrtc or framework. The driver is what the NVIDIA container runtime
mounts from the host, so it is the only one we may rely on.

Theory of operation:

* ``Driver(lib)`` wraps a function table. ``Driver.load()`` opens
  ``libcuda.so.1`` on first use (never at import) and says how to fix a missing
  driver; tests pass a fake table to check the error translation without a GPU.
* ``Driver.call(name, *args)`` is the ONE place a ``CUresult`` is checked: a
  non-zero status becomes ``CudaError`` carrying the call, the status code and
  the driver's own ``cuGetErrorName`` / ``cuGetErrorString`` text.
* Handles are plain ints (``c_void_p`` values); wrappers below return them.
* A context is current per *thread*: the driver keeps one context stack for
  each OS thread. ``primary_context`` only retains the device's context;
  ``current(ctx)`` pushes it on the calling thread and pops it afterwards, so
  any thread may call into an engine and finds its own context state as it was.

Versioned symbols: the ``_v2`` entry points are the ones the CUDA 12 headers
map the plain names to (``cuMemAlloc`` -> ``cuMemAlloc_v2`` ...), so we call
those names directly.

Runtime module: standard library only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from zerostart.errors import EngineError

LIBCUDA = "libcuda.so.1"
_NOT_FOUND = f"{LIBCUDA} not found: is the NVIDIA driver mounted into the container?"
_NOT_FOUND_HINT = (
    "run with `--gpus all` (docker) or the NVIDIA container toolkit, "
    "or install the NVIDIA driver on this host"
)

CUDA_SUCCESS = 0
CUDA_ERROR_NOT_READY = 600  # returned by cuEventQuery / cuStreamQuery: not an error

# cuDeviceGetAttribute ids (cuda.h, CUdevice_attribute)
CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97
# cuFuncGetAttribute / cuFuncSetAttribute (CUfunction_attribute)
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1  # static shared memory of a kernel
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
# Stream / capture / event flags
CU_STREAM_NON_BLOCKING = 1
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
CU_EVENT_DEFAULT = 0
# cuModuleLoadDataEx JIT options (CUjit_option)
CU_JIT_INFO_LOG_BUFFER = 3
CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 4
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
JIT_LOG_BYTES = 16 * 1024  # enough for ptxas' error report on one kernel

# Well-known statuses, so callers can branch without string matching.
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_IMAGE = 200
CUDA_ERROR_INVALID_CONTEXT = 201  # no context is current on the calling thread
CUDA_ERROR_NO_BINARY_FOR_GPU = 209
CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222


class CudaError(EngineError):
    """A driver call failed. ``call`` names it, ``status`` is the CUresult, ``name`` its enum name."""

    def __init__(self, call: str, status: int, name: str, text: str, *, hint: str | None = None):
        self.call = call
        self.status = status
        self.name = name
        self.text = text
        super().__init__(f"{call} failed: {name} ({status}): {text}", hint=hint)


class DriverNotFound(EngineError):
    """``libcuda.so.1`` cannot be opened: no NVIDIA driver in this container or host."""


class FunctionTable(Protocol):
    def __getattr__(self, name: str) -> Any: ...


def _hint_for(status: int) -> str | None:
    if status == CUDA_ERROR_NO_DEVICE:
        return "no GPU is visible to this process (check NVIDIA_VISIBLE_DEVICES / --gpus)"
    if status in (CUDA_ERROR_NO_BINARY_FOR_GPU, CUDA_ERROR_INVALID_IMAGE):
        return "the bundle's kernels were compiled for another GPU: re-convert with its --arch"
    if status == CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
        return "the driver is older than the PTX in the bundle: update the NVIDIA driver"
    return None


class Driver:
    """The driver's function table plus the one status check. See the module docstring."""

    def __init__(self, lib: FunctionTable) -> None:
        self._lib = lib

    @classmethod
    def load(cls, path: str = LIBCUDA) -> Driver:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise DriverNotFound(_NOT_FOUND, hint=_NOT_FOUND_HINT) from exc
        return cls(lib)

    def error_text(self, status: int) -> tuple[str, str]:
        """The driver's name and description of ``status`` (fallbacks if it has none)."""
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        if self._lib.cuGetErrorName(status, ctypes.byref(name)) != CUDA_SUCCESS or not name.value:
            return f"CUDA_ERROR_{status}", "unknown CUDA error"
        self._lib.cuGetErrorString(status, ctypes.byref(text))
        return name.value.decode(), (text.value or b"").decode() or "no description"

    def check(self, call: str, status: int) -> None:
        if status != CUDA_SUCCESS:
            name, text = self.error_text(status)
            raise CudaError(call, status, name, text, hint=_hint_for(status))

    def call(self, name: str, *args: Any) -> None:
        """Call ``name`` and raise CudaError on any status but CUDA_SUCCESS."""
        self.check(name, int(getattr(self._lib, name)(*args)))

    def query(self, name: str, *args: Any) -> bool:
        """For cuEventQuery / cuStreamQuery: True when done, False when not ready yet."""
        status = int(getattr(self._lib, name)(*args))
        if status == CUDA_ERROR_NOT_READY:
            return False
        self.check(name, status)
        return True

    # -- typed wrappers: one line each, handles as ints -------------------------
    def init(self) -> None:
        self.call("cuInit", 0)

    def version(self) -> int:
        v = ctypes.c_int()
        self.call("cuDriverGetVersion", ctypes.byref(v))
        return v.value

    def device(self, ordinal: int) -> int:
        d = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(d), ordinal)
        return d.value

    def device_attribute(self, attribute: int, device: int) -> int:
        v = ctypes.c_int()
        self.call("cuDeviceGetAttribute", ctypes.byref(v), attribute, device)
        return v.value

    def device_name(self, device: int) -> str:
        buf = ctypes.create_string_buffer(256)
        self.call("cuDeviceGetName", buf, len(buf), device)
        return buf.value.decode(errors="replace")

    def compute_capability(self, device: int) -> int:
        major = self.device_attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        minor = self.device_attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        return major * 10 + minor

    def primary_context(self, device: int) -> int:
        """Retain the device's primary context (shared with any other user in this process).

        It is not made current: use ``current(ctx)`` on each thread that calls the driver.
        """
        ctx = ctypes.c_void_p()
        self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), device)
        return int(ctx.value or 0)

    def release_primary_context(self, device: int) -> None:
        self.call("cuDevicePrimaryCtxRelease_v2", device)

    def push_context(self, ctx: int) -> None:
        self.call("cuCtxPushCurrent_v2", ctypes.c_void_p(ctx))

    def pop_context(self) -> int:
        ctx = ctypes.c_void_p()
        self.call("cuCtxPopCurrent_v2", ctypes.byref(ctx))
        return int(ctx.value or 0)

    @contextmanager
    def current(self, ctx: int) -> Iterator[None]:
        """Make ``ctx`` current on the calling thread for the block, then restore what was.

        The driver's current context is per OS thread, so a context made
        current on the thread that loaded an engine is not current on the
        thread that serves requests (calls there fail with
        CUDA_ERROR_INVALID_CONTEXT). Push + pop cost about a microsecond.
        """
        self.push_context(ctx)
        try:
            yield
        finally:
            self.pop_context()

    def mem_alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self.call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(nbytes))
        return ptr.value

    def mem_free(self, ptr: int) -> None:
        self.call("cuMemFree_v2", ctypes.c_uint64(ptr))

    def mem_alloc_host(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.call("cuMemAllocHost_v2", ctypes.byref(ptr), ctypes.c_size_t(nbytes))
        return int(ptr.value or 0)

    def mem_free_host(self, ptr: int) -> None:
        self.call("cuMemFreeHost", ctypes.c_void_p(ptr))

    def memcpy_htod(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call(
            "cuMemcpyHtoDAsync_v2",
            ctypes.c_uint64(dst),
            ctypes.c_void_p(src),
            ctypes.c_size_t(nbytes),
            ctypes.c_void_p(stream),
        )

    def memcpy_dtoh(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call(
            "cuMemcpyDtoHAsync_v2",
            ctypes.c_void_p(dst),
            ctypes.c_uint64(src),
            ctypes.c_size_t(nbytes),
            ctypes.c_void_p(stream),
        )

    def memset_d8(self, dst: int, value: int, nbytes: int, stream: int) -> None:
        self.call(
            "cuMemsetD8Async",
            ctypes.c_uint64(dst),
            ctypes.c_ubyte(value),
            ctypes.c_size_t(nbytes),
            ctypes.c_void_p(stream),
        )

    def stream_create(self) -> int:
        s = ctypes.c_void_p()
        self.call("cuStreamCreate", ctypes.byref(s), CU_STREAM_NON_BLOCKING)
        return int(s.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self.call("cuStreamSynchronize", ctypes.c_void_p(stream))

    def event_create(self) -> int:
        e = ctypes.c_void_p()
        self.call("cuEventCreate", ctypes.byref(e), CU_EVENT_DEFAULT)
        return int(e.value or 0)

    def event_record(self, event: int, stream: int) -> None:
        self.call("cuEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def event_synchronize(self, event: int) -> None:
        self.call("cuEventSynchronize", ctypes.c_void_p(event))

    def event_elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self.call(
            "cuEventElapsedTime", ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)
        )
        return float(ms.value)

    def module_load(self, image: bytes) -> int:
        """Load a cubin or NUL-terminated PTX; a JIT failure carries ptxas' log."""
        module = ctypes.c_void_p()
        log = ctypes.create_string_buffer(JIT_LOG_BYTES)
        opts = (ctypes.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        vals = (ctypes.c_void_p * 2)(
            ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(JIT_LOG_BYTES)
        )
        buf = ctypes.create_string_buffer(image, len(image) + 1)  # + NUL for PTX text
        status = int(self._lib.cuModuleLoadDataEx(ctypes.byref(module), buf, 2, opts, vals))
        if status != CUDA_SUCCESS:
            name, text = self.error_text(status)
            jit = log.value.decode(errors="replace").strip()
            raise CudaError(
                "cuModuleLoadDataEx",
                status,
                name,
                f"{text}{': ' + jit if jit else ''}",
                hint=_hint_for(status),
            )
        return int(module.value or 0)

    def module_function(self, module: int, name: str) -> int:
        fn = ctypes.c_void_p()
        self.call("cuModuleGetFunction", ctypes.byref(fn), ctypes.c_void_p(module), name.encode())
        return int(fn.value or 0)

    def func_attribute(self, fn: int, attribute: int) -> int:
        v = ctypes.c_int()
        self.call("cuFuncGetAttribute", ctypes.byref(v), attribute, ctypes.c_void_p(fn))
        return v.value

    def func_set_attribute(self, fn: int, attribute: int, value: int) -> None:
        self.call("cuFuncSetAttribute", ctypes.c_void_p(fn), attribute, value)

    def launch(
        self,
        fn: int,
        grid: Sequence[int],
        block: Sequence[int],
        shared_bytes: int,
        stream: int,
        params: ctypes.Array[ctypes.c_void_p],
    ) -> None:
        self.call(
            "cuLaunchKernel",
            ctypes.c_void_p(fn),
            ctypes.c_uint(grid[0]),
            ctypes.c_uint(grid[1]),
            ctypes.c_uint(grid[2]),
            ctypes.c_uint(block[0]),
            ctypes.c_uint(block[1]),
            ctypes.c_uint(block[2]),
            ctypes.c_uint(shared_bytes),
            ctypes.c_void_p(stream),
            params,
            None,
        )

    def begin_capture(self, stream: int) -> None:
        self.call(
            "cuStreamBeginCapture_v2", ctypes.c_void_p(stream), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        )

    def end_capture(self, stream: int) -> int:
        graph = ctypes.c_void_p()
        self.call("cuStreamEndCapture", ctypes.c_void_p(stream), ctypes.byref(graph))
        return int(graph.value or 0)

    def graph_instantiate(self, graph: int) -> int:
        exe = ctypes.c_void_p()
        self.call(
            "cuGraphInstantiateWithFlags",
            ctypes.byref(exe),
            ctypes.c_void_p(graph),
            ctypes.c_ulonglong(0),
        )
        return int(exe.value or 0)

    def graph_launch(self, exe: int, stream: int) -> None:
        self.call("cuGraphLaunch", ctypes.c_void_p(exe), ctypes.c_void_p(stream))

    def graph_destroy(self, graph: int) -> None:
        self.call("cuGraphDestroy", ctypes.c_void_p(graph))
