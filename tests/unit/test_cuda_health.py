"""The GPU health check without a GPU: a fake driver whose "device memory" is host memory.

The fake runs the health kernel's arithmetic in numpy from the launch's own
parameter block, so argument packing, grid coverage, copies and comparisons
are all exercised; faults are injected into it one at a time (a wrong kernel
result, a stuck memory bit, two aliased addresses, a driver error, ECC errors,
a pending row remap). The PTX itself is assembled with ptxas when one is
installed (Triton ships it); running it needs a GPU (tests/gpu).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.engine.cuda.driver import Driver
from zerostart.engine.cuda.health import (
    ADDRESS_XOR,
    HEALTH_KERNEL,
    HEALTH_PTX,
    KERNEL_ELEMS,
    GpuHealthError,
    Nvml,
    run_checks,
)

MEMORY_BYTES = 1 << 20  # the fake's device memory is host memory: keep it small


class FakeGpu:
    """libcuda's function table over host memory, with switchable faults."""

    def __init__(self, **faults: Any) -> None:
        self.faults = faults
        self.buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.calls: list[str] = []
        self.launches: list[tuple[int, ...]] = []

    # -- device, context, stream ---------------------------------------------------------
    def cuInit(self, flags: int) -> int:
        self.calls.append("cuInit")
        return 0

    def cuDeviceGet(self, out: Any, ordinal: int) -> int:
        out._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf: Any, size: int, dev: int) -> int:
        buf.value = b"Fake H200"
        return 0

    def cuDeviceGetAttribute(self, out: Any, attribute: int, dev: int) -> int:
        out._obj.value = {75: 9, 76: 0, 32: 1}.get(attribute, 0)
        return 0

    def cuDevicePrimaryCtxRetain(self, out: Any, dev: int) -> int:
        self.calls.append("ctx")
        out._obj.value = 0xC0
        return 0

    # As the real driver: retaining the primary context does not make it current,
    # and a stream needs a current context (CUDA_ERROR_INVALID_CONTEXT, 201, without:
    # what the first run on an H200 answered before the health check pushed it).
    current: int = 0

    def cuCtxPushCurrent_v2(self, ctx: Any) -> int:
        assert ctx.value == 0xC0
        self.current = ctx.value
        return 0

    def cuCtxSetCurrent(self, ctx: Any) -> int:
        self.current = ctx.value or 0
        return 0

    def cuStreamCreate(self, out: Any, flags: int) -> int:
        if not self.current:
            return 201
        out._obj.value = 0x5
        return 0

    def cuDeviceGetPCIBusId(self, buf: Any, size: int, dev: int) -> int:
        buf.value = b"0000:01:00.0"
        return 0

    def cuGetErrorName(self, status: int, out: Any) -> int:
        out._obj.value = {218: b"CUDA_ERROR_INVALID_PTX"}.get(status, b"CUDA_ERROR_UNKNOWN")
        return 0

    def cuGetErrorString(self, status: int, out: Any) -> int:
        out._obj.value = b"a PTX JIT compilation failed"
        return 0

    # -- memory ------------------------------------------------------------------------------
    def cuMemAlloc_v2(self, out: Any, size: Any) -> int:
        buf = ctypes.create_string_buffer(size.value)
        addr = ctypes.addressof(buf)
        self.buffers[addr] = buf
        out._obj.value = addr
        return 0

    def cuMemFree_v2(self, ptr: Any) -> int:
        del self.buffers[ptr.value]
        return 0

    def _view(self, addr: int, n: int) -> np.ndarray:
        return np.frombuffer((ctypes.c_char * n).from_address(addr), dtype=np.uint8)

    def cuMemsetD8Async(self, dst: Any, value: Any, n: Any, stream: Any) -> int:
        ctypes.memset(dst.value, value.value, n.value)
        return 0

    def cuMemcpyHtoDAsync_v2(self, dst: Any, src: Any, n: Any, stream: Any) -> int:
        ctypes.memmove(dst.value, src.value, n.value)
        alias = self.faults.get("alias_words")  # an address line fault: word j also writes k
        if alias and n.value > 4 * max(alias):
            words = np.frombuffer((ctypes.c_char * n.value).from_address(dst.value), np.uint32)
            words[alias[1]] = words[alias[0]]
        return 0

    def cuMemcpyDtoHAsync_v2(self, dst: Any, src: Any, n: Any, stream: Any) -> int:
        ctypes.memmove(dst.value, src.value, n.value)
        stuck = self.faults.get("stuck_bit")  # (offset, bit) reads as 0
        if stuck and n.value > stuck[0]:
            self._view(dst.value, n.value)[stuck[0]] &= ~np.uint8(1 << stuck[1])
        return 0

    def cuStreamSynchronize(self, stream: Any) -> int:
        return 0

    # -- modules and launches -----------------------------------------------------------------
    def cuModuleLoadDataEx(self, out: Any, image: Any, n: int, opts: Any, vals: Any) -> int:
        if self.faults.get("jit_error"):
            return 218
        assert f".entry {HEALTH_KERNEL}(" in image.value.decode()
        out._obj.value = 0xA0
        return 0

    def cuModuleGetFunction(self, out: Any, module: Any, name: bytes) -> int:
        assert name == HEALTH_KERNEL.encode()
        out._obj.value = 0xF0
        return 0

    def cuLaunchKernel(self, fn: Any, gx: Any, gy: Any, gz: Any, bx: Any, by: Any, bz: Any,
                       shared: Any, stream: Any, params: Any, extra: Any) -> int:  # fmt: skip
        self.launches.append((gx.value, gy.value, gz.value, bx.value, by.value, bz.value))
        a_ptr = ctypes.cast(params[0], ctypes.POINTER(ctypes.c_uint64))[0]
        out_ptr = ctypes.cast(params[1], ctypes.POINTER(ctypes.c_uint64))[0]
        n = ctypes.cast(params[2], ctypes.POINTER(ctypes.c_uint32))[0]
        threads = min(n, gx.value * bx.value)  # what the launched threads cover
        a = np.frombuffer((ctypes.c_float * n).from_address(a_ptr), np.float32)
        out = np.frombuffer((ctypes.c_float * n).from_address(out_ptr), np.float32)
        i = np.arange(threads, dtype=np.float64)
        out[:threads] = (a[:threads].astype(np.float64) * 2 + i).astype(np.float32)
        if self.faults.get("wrong_result"):
            out[123] = np.nextafter(out[123], np.float32(np.inf))  # one ulp off
        return 0

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the fake driver has no {name}")


class FakeNvml:
    def __init__(self, ecc: int | None = 0, rows: tuple[int, int] | None = (0, 0)) -> None:
        self.ecc, self.rows = ecc, rows

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus: bytes, out: Any) -> int:
        assert bus == b"0000:01:00.0"
        out._obj.value = 0x1
        return 0

    def nvmlDeviceGetTotalEccErrors(self, h: Any, kind: int, counter: int, out: Any) -> int:
        assert (kind, counter) == (1, 0)  # uncorrected, volatile
        if self.ecc is None:
            return 3
        out._obj.value = self.ecc
        return 0

    def nvmlDeviceGetRemappedRows(self, h: Any, c: Any, u: Any, pending: Any, failed: Any) -> int:
        if self.rows is None:
            return 3
        pending._obj.value, failed._obj.value = self.rows
        return 0


def check(gpu: FakeGpu, nvml: FakeNvml | None = None) -> dict[str, Any]:
    return run_checks(Driver(gpu), Nvml(nvml) if nvml else None, memory_bytes=MEMORY_BYTES)


def test_a_healthy_gpu_passes_every_check() -> None:
    gpu = FakeGpu()
    report = check(gpu, FakeNvml())
    assert list(report) == ["device", "kernel", "memory", "ecc"]
    assert report["device"]["name"] == "Fake H200" and report["device"]["sm"] == 90
    assert report["kernel"]["elements"] == KERNEL_ELEMS
    assert report["memory"]["bytes"] == MEMORY_BYTES
    assert report["ecc"] == {
        "ecc_enabled": True,
        "pci_bus_id": "0000:01:00.0",
        "uncorrected_ecc_errors": 0,
        "remapped_rows": (False, False),
        "ms": report["ecc"]["ms"],
    }
    assert gpu.calls[:2] == ["cuInit", "ctx"]  # the slot pays for the context
    gx, _, _, bx, _, _ = gpu.launches[0]
    assert gx * bx >= KERNEL_ELEMS  # the grid covers every element
    assert not gpu.buffers  # every device buffer freed


def test_without_nvml_the_ecc_check_says_so() -> None:
    report = check(FakeGpu(), None)
    assert report["ecc"]["nvml"] == "unavailable" and report["ecc"]["ecc_enabled"] is True
    report = check(FakeGpu(), FakeNvml(ecc=None, rows=None))
    assert report["ecc"]["uncorrected_ecc_errors"] is None  # not supported on this GPU


@pytest.mark.parametrize(
    ("faults", "nvml", "check_name", "message"),
    [
        ({"wrong_result": True}, FakeNvml(), "kernel", "1 of 65536 results wrong; first at 123"),
        (
            {"stuck_bit": (300_001, 4)},
            FakeNvml(),
            "memory",
            "fill 0xFF: 1 byte(s) read back wrong; first at offset 300001",
        ),
        (
            {"alias_words": (3, 70000)},
            FakeNvml(),
            "memory",
            "address pattern: 1 word(s) read back wrong; first at word 70000",
        ),
        ({"jit_error": True}, FakeNvml(), "kernel", "CUDA_ERROR_INVALID_PTX"),
        ({}, FakeNvml(ecc=2), "ecc", "2 uncorrected ECC error(s)"),
        ({}, FakeNvml(rows=(1, 0)), "ecc", "remap is pending"),
        ({}, FakeNvml(rows=(0, 1)), "ecc", "remap failed"),
    ],
)
def test_each_fault_fails_its_check(
    faults: dict[str, Any], nvml: FakeNvml, check_name: str, message: str
) -> None:
    gpu = FakeGpu(**faults)
    with pytest.raises(GpuHealthError, match=re.escape(message)) as info:
        check(gpu, nvml)
    assert info.value.check == check_name
    assert "do not serve from this GPU" in str(info.value)
    assert not gpu.buffers  # freed on the failure path too


def test_address_pattern_is_what_the_docstring_says() -> None:
    words = np.arange(4, dtype=np.uint32) ^ np.uint32(ADDRESS_XOR)
    assert words.tolist() == [0x5A5A5A5A, 0x5A5A5A5B, 0x5A5A5A58, 0x5A5A5A59]


def _ptxas() -> str | None:
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path.exists() else None


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_health_ptx_assembles(tmp_path: Path, arch: str) -> None:
    ptxas = _ptxas()
    if ptxas is None:
        pytest.skip("no ptxas (install the cuda extra: Triton ships one)")
    src = tmp_path / "health.ptx"
    src.write_text(HEALTH_PTX)
    done = subprocess.run(
        [ptxas, f"-arch={arch}", str(src), "-o", str(tmp_path / "health.cubin")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_host_side_values_are_numpy_float32_arithmetic() -> None:
    # The check computes its input, expected answers and address pattern without numpy;
    # here they are held against numpy's float32 / uint32 arithmetic, bit for bit.
    from zerostart.engine.cuda.health import _kernel_inputs, _pattern

    a, want_bits = _kernel_inputs()
    ref_a = (
        np.arange(KERNEL_ELEMS, dtype=np.float32) * np.float32(0.37) - np.float32(1000.0)
    ).astype(np.float32)
    ref_want = (ref_a.astype(np.float64) * 2 + np.arange(KERNEL_ELEMS)).astype(np.float32)
    assert (
        np.frombuffer(a, dtype=np.float32).view(np.uint32).tolist()
        == ref_a.view(np.uint32).tolist()
    )
    assert np.frombuffer(want_bits, dtype=np.uint32).tolist() == ref_want.view(np.uint32).tolist()
    words = 3 * (1 << 16) + 123  # a partial last block
    ref = np.arange(words, dtype=np.uint32) ^ np.uint32(ADDRESS_XOR)
    assert np.frombuffer(_pattern(words), dtype="<u4").tolist() == ref.tolist()


def test_the_health_check_imports_no_numpy() -> None:
    import os
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    code = "import sys, zerostart.engine.cuda.health; print('numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    ).stdout
    assert out.strip() == "False"
