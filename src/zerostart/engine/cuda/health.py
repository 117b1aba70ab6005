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

Runtime module: standard library + ctypes, no numpy (a GPU slot's health check is on its
start path: issue 19). Host buffers are ``array`` / ``bytearray``; the expected values are
computed in Python floats (see ``_kernel_inputs``) and compared bit for bit.
"""

from __future__ import annotations

import ctypes
import time
from array import array
from collections.abc import Callable
from typing import Any

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
PATTERN_BLOCK_WORDS = 1 << 16  # the address pattern is written block by block (see _pattern)

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


def _kernel_inputs() -> tuple[array[float], array[int]]:
    """The kernel's input ``a[i] = f32(f32(i * f32(0.37)) - 1000)`` and the bits of the
    expected ``f32(2 a[i] + i)``.

    Each step is exact in a Python float (double) and rounded once to float32 by the
    ``array("f")`` store: the product of two float32s has at most 48 significant bits,
    and the sums here (|a| < 2**15, i < 2**16) at most 42, so every result is the
    correctly rounded float32 one, as numpy's float32 arithmetic and the GPU's fma give.
    """
    scale = array("f", [0.37])[0]  # f32(0.37)
    a = array("f", [i * scale for i in range(KERNEL_ELEMS)])
    a = array("f", [x - 1000.0 for x in a])
    want = array("f", [2.0 * x + i for i, x in enumerate(a)])
    bits = array("I")
    bits.frombytes(want.tobytes())
    return a, bits


def _address(buffer: array[Any] | bytearray) -> int:
    """The address of a host buffer, for the driver's copies (valid while it lives)."""
    if isinstance(buffer, array):
        return int(buffer.buffer_info()[0])
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def _kernel_check(drv: Driver, stream: int) -> dict[str, Any]:
    a, want = _kernel_inputs()
    nbytes = len(a) * a.itemsize
    module = drv.module_load(HEALTH_PTX.encode())
    fn = drv.module_function(module, HEALTH_KERNEL)
    d_a, d_out = drv.mem_alloc(nbytes), drv.mem_alloc(nbytes)
    got = array("I", [0x7FC00000]) * KERNEL_ELEMS  # NaN bits
    try:
        drv.memcpy_htod(d_a, _address(a), nbytes, stream)
        drv.memset_d8(d_out, 0xFF, nbytes, stream)  # NaNs: an unwritten element cannot pass
        args = (ctypes.c_uint64(d_a), ctypes.c_uint64(d_out), ctypes.c_uint32(KERNEL_ELEMS))
        params = (ctypes.c_void_p * len(args))(
            *(ctypes.cast(ctypes.pointer(x), ctypes.c_void_p) for x in args)
        )
        grid = (-(-KERNEL_ELEMS // KERNEL_BLOCK), 1, 1)
        drv.launch(fn, grid, (KERNEL_BLOCK, 1, 1), 0, stream, params)
        drv.memcpy_dtoh(_address(got), d_out, nbytes, stream)
        drv.stream_synchronize(stream)
    finally:
        drv.mem_free(d_a)
        drv.mem_free(d_out)
    if got != want:
        bad = [i for i in range(KERNEL_ELEMS) if got[i] != want[i]]
        i = bad[0]
        as_float = array("f", got.tobytes())
        raise GpuHealthError(
            "kernel",
            f"{len(bad)} of {KERNEL_ELEMS} results wrong; first at {i}: got {as_float[i]!r}, "
            f"want {array('f', want.tobytes())[i]!r}",
        )
    return {"elements": KERNEL_ELEMS}


def _pattern(words: int) -> bytearray:
    """``words`` little-endian uint32s, word ``i`` = ``i ^ ADDRESS_XOR``, without numpy.

    XOR works lane by lane, so the buffer is built from bytes operations that run in C:
    block 0 (2**16 words) is made once and copied into every block, and then the only
    lanes that differ between blocks (byte 2 of each word: the block number; byte 3 from
    the 257th block on) are written with one strided assignment each. 64 MiB: ~0.25 s on
    a loaded 2-core AMD EPYC (numpy's ``arange ^ x``: 0.03-0.16 s; its import: ~0.1 s).
    """
    key = ADDRESS_XOR.to_bytes(4, "little")
    blocks = -(-words // PATTERN_BLOCK_WORDS)
    first = bytearray(array("I", range(PATTERN_BLOCK_WORDS)).tobytes())
    for lane in range(4):
        first[lane::4] = first[lane::4].translate(bytes(v ^ key[lane] for v in range(256)))
    out = bytearray(4 * blocks * PATTERN_BLOCK_WORDS)
    for start in range(0, len(out), len(first)):
        out[start : start + len(first)] = first
    size = PATTERN_BLOCK_WORDS
    out[2::4] = b"".join(bytes([(b & 0xFF) ^ key[2]]) * size for b in range(blocks))
    if blocks > 256:  # from word 2**24 on, byte 3 counts blocks too
        out[3::4] = b"".join(bytes([(b >> 8) ^ key[3]]) * size for b in range(blocks))
    del out[4 * words :]
    return out


def _first_bad_word(got: bytearray, want: bytearray) -> tuple[int, int]:
    """(count, first index) of the uint32 words that differ; blocks compared in C first."""
    step = PATTERN_BLOCK_WORDS * 4
    count, first = 0, -1
    for start in range(0, len(want), step):
        if got[start : start + step] == want[start : start + step]:
            continue
        g = array("I", got[start : start + step])
        w = array("I", want[start : start + step])
        bad = [k for k in range(len(w)) if g[k] != w[k]]
        count += len(bad)
        if first < 0:
            first = start // 4 + bad[0]
    return count, first


def _memory_check(drv: Driver, stream: int, nbytes: int) -> dict[str, Any]:
    words = nbytes // 4
    nbytes = words * 4
    host = bytearray(nbytes)
    address = _address(host)
    ptr = drv.mem_alloc(nbytes)
    try:
        for value in FILL_PATTERNS:
            ctypes.memset(address, value ^ 0xFF, nbytes)  # a copy that did not happen fails
            drv.memset_d8(ptr, value, nbytes, stream)
            drv.memcpy_dtoh(address, ptr, nbytes, stream)
            drv.stream_synchronize(stream)
            wrong = nbytes - host.count(value.to_bytes(1, "little"))
            if wrong:
                i = nbytes - len(host.lstrip(value.to_bytes(1, "little")))
                raise GpuHealthError(
                    "memory",
                    f"fill 0x{value:02X}: {wrong} byte(s) read back wrong; first at offset {i}: "
                    f"0x{host[i]:02X}",
                )
        pattern = _pattern(words)
        ctypes.memset(address, 0, nbytes)
        drv.memcpy_htod(ptr, _address(pattern), nbytes, stream)
        drv.memcpy_dtoh(address, ptr, nbytes, stream)
        drv.stream_synchronize(stream)
        if host != pattern:
            count, i = _first_bad_word(host, pattern)
            got = int.from_bytes(host[4 * i : 4 * i + 4], "little")
            raise GpuHealthError(
                "memory",
                f"address pattern: {count} word(s) read back wrong; first at word {i}: "
                f"0x{got:08X}, want 0x{i ^ ADDRESS_XOR:08X}",
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
