"""A GPU's active health check, through the driver alone: for a warm slot before it takes work.

Checks, in order (each one's time and result go into the report):

``device``
    ``cuInit``, the device, its name and compute capability, and its primary
    context (retained and made current: the context the slot pre-pays and the
    engine later shares).
``kernel``
    A known-answer kernel: :data:`HEALTH_PTX`, hand-written PTX (ISA 7.0,
    ``sm_50``, so any driver since CUDA 11.0 JIT-compiles it for any newer
    GPU), computes ``out[i] = fma(a[i], 2, i)`` over ``KERNEL_ELEMS`` floats.
    The expected output is computed on the host from the same input: ``2 a``
    is exact in float32, so a correctly rounded fma equals the float64 sum
    rounded once, and the comparison is bit for bit.
``memory``
    A device-memory write/read pattern over ``memory_bytes``: the device
    fills it with 0x00, 0xFF, 0x55, 0xAA (``cuMemsetD8``) and each is read
    back; then the host writes an address-dependent pattern (word ``i`` holds
    ``i XOR 0x5A5A5A5A``, catching address-line faults that a constant fill
    cannot) and reads it back. A smoke test of 64 MiB, not a memtest of the
    whole device.
``ecc``
    ``CU_DEVICE_ATTRIBUTE_ECC_ENABLED`` from libcuda, then, through NVML
    (``libnvidia-ml.so.1``, which ships with the driver: no new dependency)
    when it can be opened, the volatile uncorrected ECC error count (must be
    0) and row remapping (a failed or pending remap fails the check: the GPU
    needs a reset). A GPU or driver without them reports "not supported".
    Xid errors are not read: NVML only reports Xid events raised after a
    process registers for them, which needs a long-lived watcher, not a
    one-off check.

Tested against a fake driver and a fake NVML (tests/unit/test_cuda_health.py):
the call sequence, the argument packing, and that each injected fault (a
wrong kernel answer, a stuck memory bit, an address fault, ECC errors, a
pending row remap) fails with a message naming it. **Not yet run on a GPU**:
the PTX is assembled by ptxas in the tests but never executed.

Runtime module: standard library + numpy + ctypes.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from zerostart.engine.cuda.driver import CudaError, Driver
from zerostart.errors import EngineError

HEALTH_KERNEL = "zs_health"
HEALTH_PTX = r"""
.version 7.0
.target sm_50
.address_size 64

.visible .entry zs_health(
    .param .u64 zs_health_a,
    .param .u64 zs_health_out,
    .param .u32 zs_health_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [zs_health_a];
    ld.param.u64 %rd2, [zs_health_out];
    ld.param.u32 %r1, [zs_health_n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.u32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    ld.global.f32 %f1, [%rd6];
    cvt.rn.f32.u32 %f2, %r5;
    fma.rn.f32 %f3, %f1, 0f40000000, %f2;
    add.s64 %rd7, %rd4, %rd5;
    st.global.f32 [%rd7], %f3;
DONE:
    ret;
}
"""
KERNEL_ELEMS = 1 << 16  # 256 KiB per buffer: enough blocks to touch every SM of a big GPU
KERNEL_BLOCK = 256
DEFAULT_MEMORY_BYTES = 64 << 20  # ~3 ms per pass at PCIe 4 speeds; 5 passes
FILL_PATTERNS = (0x00, 0xFF, 0x55, 0xAA)
ADDRESS_XOR = 0x5A5A5A5A

CU_DEVICE_ATTRIBUTE_ECC_ENABLED = 32  # cuda.h, CUdevice_attribute
# nvml.h
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
LIBNVML = "libnvidia-ml.so.1"


class GpuHealthError(EngineError):
    """A GPU health check failed; ``check`` names which one."""

    def __init__(self, check: str, problem: str) -> None:
        self.check = check
        super().__init__(
            f"GPU health check {check!r} failed: {problem}",
            hint="do not serve from this GPU; drain the node and check it (nvidia-smi -q)",
        )


class Nvml:
    """The few NVML calls the check makes; ``None`` results mean "not supported here"."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        status = int(lib.nvmlInit_v2())
        if status != NVML_SUCCESS:
            raise OSError(f"nvmlInit_v2 returned {status}")

    @classmethod
    def load(cls) -> Nvml | None:
        """NVML if the driver's library is present (``--gpus`` with the utility capability)."""
        try:
            return cls(ctypes.CDLL(LIBNVML))
        except OSError:
            return None

    def handle(self, pci_bus_id: str) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        status = int(
            self._lib.nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id.encode(), ctypes.byref(h))
        )
        if status != NVML_SUCCESS:
            raise OSError(f"nvmlDeviceGetHandleByPciBusId_v2({pci_bus_id}) returned {status}")
        return h

    def uncorrected_ecc_errors(self, handle: ctypes.c_void_p) -> int | None:
        count = ctypes.c_ulonglong()
        status = int(
            self._lib.nvmlDeviceGetTotalEccErrors(
                handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, ctypes.byref(count)
            )
        )
        found: int | None = _supported(status, "nvmlDeviceGetTotalEccErrors", count.value)
        return found

    def remapped_rows(self, handle: ctypes.c_void_p) -> tuple[bool, bool] | None:
        """(pending, failure_occurred) of row remapping (Ampere and newer)."""
        corr, unc, pending, failed = (ctypes.c_uint() for _ in range(4))
        status = int(
            self._lib.nvmlDeviceGetRemappedRows(
                handle,
                ctypes.byref(corr),
                ctypes.byref(unc),
                ctypes.byref(pending),
                ctypes.byref(failed),
            )
        )
        found: tuple[bool, bool] | None = _supported(
            status, "nvmlDeviceGetRemappedRows", (bool(pending.value), bool(failed.value))
        )
        return found

    def shutdown(self) -> None:
        self._lib.nvmlShutdown()


def _supported(status: int, call: str, value: Any) -> Any:
    if status == NVML_ERROR_NOT_SUPPORTED:
        return None
    if status != NVML_SUCCESS:
        raise OSError(f"{call} returned {status}")
    return value


def _timed(report: dict[str, Any], name: str, check: Callable[[], dict[str, Any]]) -> None:
    t0 = time.perf_counter()
    try:
        result = check()
    except GpuHealthError:
        raise
    except CudaError as exc:
        raise GpuHealthError(name, str(exc)) from exc
    result["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    report[name] = result


def run_checks(
    driver: Driver | None = None,
    nvml: Nvml | bool | None = True,
    *,
    ordinal: int = 0,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, Any]:
    """Run every check on GPU ``ordinal``; the report, or GpuHealthError naming the failed check.

    ``driver``: default ``Driver.load()``. ``nvml``: an :class:`Nvml`, ``None``
    to skip it, or True to open the driver's NVML if present.
    """
    drv = driver or Driver.load()
    report: dict[str, Any] = {}
    state: dict[str, int] = {}

    def device() -> dict[str, Any]:
        drv.init()
        state["device"] = dev = drv.device(ordinal)
        # Retaining does not make the context current (driver.primary_context); the
        # checks run on this thread, which keeps it current: the slot pre-pays it.
        drv.push_context(drv.primary_context(dev))
        state["stream"] = drv.stream_create()
        return {"name": drv.device_name(dev), "sm": drv.compute_capability(dev)}

    _timed(report, "device", device)
    stream, dev = state["stream"], state["device"]
    _timed(report, "kernel", lambda: _kernel_check(drv, stream))
    _timed(report, "memory", lambda: _memory_check(drv, stream, memory_bytes))
    nv = Nvml.load() if nvml is True else (nvml or None)
    _timed(report, "ecc", lambda: _ecc_check(drv, dev, nv))
    return report


def _kernel_check(drv: Driver, stream: int) -> dict[str, Any]:
    a = (np.arange(KERNEL_ELEMS, dtype=np.float32) * np.float32(0.37) - np.float32(1000.0)).astype(
        np.float32
    )
    want = (a.astype(np.float64) * 2 + np.arange(KERNEL_ELEMS, dtype=np.float64)).astype(np.float32)
    nbytes = a.nbytes
    module = drv.module_load(HEALTH_PTX.encode())
    fn = drv.module_function(module, HEALTH_KERNEL)
    d_a, d_out = drv.mem_alloc(nbytes), drv.mem_alloc(nbytes)
    got = np.full(KERNEL_ELEMS, np.nan, dtype=np.float32)
    try:
        drv.memcpy_htod(d_a, a.ctypes.data, nbytes, stream)
        drv.memset_d8(d_out, 0xFF, nbytes, stream)  # NaNs: an unwritten element cannot pass
        args = (ctypes.c_uint64(d_a), ctypes.c_uint64(d_out), ctypes.c_uint32(KERNEL_ELEMS))
        params = (ctypes.c_void_p * len(args))(
            *(ctypes.cast(ctypes.pointer(x), ctypes.c_void_p) for x in args)
        )
        grid = (-(-KERNEL_ELEMS // KERNEL_BLOCK), 1, 1)
        drv.launch(fn, grid, (KERNEL_BLOCK, 1, 1), 0, stream, params)
        drv.memcpy_dtoh(got.ctypes.data, d_out, nbytes, stream)
        drv.stream_synchronize(stream)
    finally:
        drv.mem_free(d_a)
        drv.mem_free(d_out)
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    if bad.size:
        i = int(bad[0])
        raise GpuHealthError(
            "kernel",
            f"{bad.size} of {KERNEL_ELEMS} results wrong; first at {i}: got {float(got[i])!r}, want {float(want[i])!r}",
        )
    return {"elements": KERNEL_ELEMS}


def _memory_check(drv: Driver, stream: int, nbytes: int) -> dict[str, Any]:
    words = nbytes // 4
    nbytes = words * 4
    host = np.empty(nbytes, dtype=np.uint8)
    ptr = drv.mem_alloc(nbytes)
    try:
        for value in FILL_PATTERNS:
            host.fill(value ^ 0xFF)  # the opposite: a copy that did not happen cannot pass
            drv.memset_d8(ptr, value, nbytes, stream)
            drv.memcpy_dtoh(host.ctypes.data, ptr, nbytes, stream)
            drv.stream_synchronize(stream)
            bad = np.flatnonzero(host != value)
            if bad.size:
                i = int(bad[0])
                raise GpuHealthError(
                    "memory",
                    f"fill 0x{value:02X}: {bad.size} byte(s) read back wrong; first at offset {i}: "
                    f"0x{int(host[i]):02X}",
                )
        pattern = np.arange(words, dtype=np.uint32) ^ np.uint32(ADDRESS_XOR)
        back = np.zeros(words, dtype=np.uint32)
        drv.memcpy_htod(ptr, pattern.ctypes.data, nbytes, stream)
        drv.memcpy_dtoh(back.ctypes.data, ptr, nbytes, stream)
        drv.stream_synchronize(stream)
        bad = np.flatnonzero(back != pattern)
        if bad.size:
            i = int(bad[0])
            raise GpuHealthError(
                "memory",
                f"address pattern: {bad.size} word(s) read back wrong; first at word {i}: "
                f"0x{int(back[i]):08X}, want 0x{int(pattern[i]):08X}",
            )
    finally:
        drv.mem_free(ptr)
    return {"bytes": nbytes, "patterns": len(FILL_PATTERNS) + 1}


def _ecc_check(drv: Driver, dev: int, nvml: Nvml | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ecc_enabled": bool(drv.device_attribute(CU_DEVICE_ATTRIBUTE_ECC_ENABLED, dev))
    }
    if nvml is None:
        result["nvml"] = "unavailable"
        return result
    buf = ctypes.create_string_buffer(32)
    drv.call("cuDeviceGetPCIBusId", buf, len(buf), dev)
    bus_id = buf.value.decode()
    try:
        handle = nvml.handle(bus_id)
        errors = nvml.uncorrected_ecc_errors(handle)
        rows = nvml.remapped_rows(handle)
    except OSError as exc:
        result["nvml"] = f"error: {exc}"
        return result
    result.update(pci_bus_id=bus_id, uncorrected_ecc_errors=errors, remapped_rows=rows)
    if errors:
        raise GpuHealthError("ecc", f"{errors} uncorrected ECC error(s) since the driver loaded")
    if rows is not None and (rows[0] or rows[1]):
        what = "failed" if rows[1] else "is pending (the GPU needs a reset)"
        raise GpuHealthError("ecc", f"a memory row remap {what}")
    return result
