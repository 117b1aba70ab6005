"""The driver bindings without a GPU: error translation through a fake function table,
the missing-libcuda message, the caching allocator, and the modules the runtime imports."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from typing import Any

import pytest

from zerostart.engine.cuda.driver import CudaError, Driver, DriverNotFound
from zerostart.engine.cuda.memory import ALIGN_BYTES, CachingAllocator, round_size
from zerostart.errors import EngineError

_NAMES = {
    2: (b"CUDA_ERROR_OUT_OF_MEMORY", b"out of memory"),
    209: (
        b"CUDA_ERROR_NO_BINARY_FOR_GPU",
        b"no kernel image is available for execution on the device",
    ),
}


class FakeLib:
    """A stand-in for libcuda: each entry returns a scripted CUresult."""

    def __init__(self, results: dict[str, int]) -> None:
        self.results = results
        self.calls: list[str] = []
        self.next_ptr = 0x10000

    def cuGetErrorName(self, status: int, out: Any) -> int:
        if status not in _NAMES:
            return 1  # CUDA_ERROR_INVALID_VALUE, as the real driver answers for unknown codes
        out._obj.value = _NAMES[status][0]
        return 0

    def cuGetErrorString(self, status: int, out: Any) -> int:
        out._obj.value = _NAMES[status][1]
        return 0

    def cuMemAlloc_v2(self, out: Any, size: Any) -> int:
        self.calls.append("alloc")
        out._obj.value = self.next_ptr
        self.next_ptr += size.value
        return self.results.get("cuMemAlloc_v2", 0)

    def cuMemFree_v2(self, ptr: Any) -> int:
        self.calls.append("free")
        return 0

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.results.get(name, 0)


def test_status_becomes_typed_error_with_driver_text() -> None:
    drv = Driver(FakeLib({"cuInit": 2}))
    with pytest.raises(CudaError) as info:
        drv.init()
    err = info.value
    assert isinstance(err, EngineError)
    assert (err.call, err.status, err.name) == ("cuInit", 2, "CUDA_ERROR_OUT_OF_MEMORY")
    assert str(err) == "cuInit failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"


def test_no_binary_error_says_how_to_fix_it() -> None:
    drv = Driver(FakeLib({"cuModuleLoadDataEx": 209}))
    with pytest.raises(CudaError, match="no kernel image") as info:
        drv.module_load(b"\x7fELF")
    assert "--arch" in (info.value.hint or "")


def test_unknown_status_still_raises() -> None:
    drv = Driver(FakeLib({"cuStreamSynchronize": 12345}))
    with pytest.raises(CudaError, match=r"CUDA_ERROR_12345 \(12345\): unknown CUDA error"):
        drv.stream_synchronize(0)


def test_not_ready_is_not_an_error() -> None:
    assert Driver(FakeLib({"cuEventQuery": 600})).query("cuEventQuery", ctypes.c_void_p(0)) is False
    assert Driver(FakeLib({})).query("cuEventQuery", ctypes.c_void_p(0)) is True


def test_missing_libcuda_message() -> None:
    with pytest.raises(
        DriverNotFound,
        match=r"libcuda\.so\.1 not found: is the NVIDIA driver mounted into the container\?",
    ) as info:
        Driver.load("/nonexistent/libcuda.so.1")
    assert "--gpus" in str(info.value)


def test_caching_allocator_reuses_blocks() -> None:
    lib = FakeLib({})
    alloc = CachingAllocator(Driver(lib))
    assert round_size(1) == ALIGN_BYTES and round_size(257) == 512
    assert round_size((1 << 20) + 1) == 2 << 20
    p = alloc.alloc(1000)
    alloc.free(p)
    assert alloc.alloc(900) == p  # same 1024-byte bin: no second cuMemAlloc
    q = alloc.alloc(1000)
    assert q != p and lib.calls == ["alloc", "alloc"]
    assert alloc.bytes_reserved == 2048
    alloc.release_all()
    assert lib.calls.count("free") == 2 and alloc.bytes_reserved == 0


def test_allocator_surfaces_out_of_memory() -> None:
    alloc = CachingAllocator(Driver(FakeLib({"cuMemAlloc_v2": 2})))
    with pytest.raises(CudaError, match="out of memory"):
        alloc.alloc(1 << 30)


FORBIDDEN = (
    "torch",
    "triton",
    "cupy",
    "transformers",
    "tokenizers",
    "safetensors",
    "onnx",
    "onnxruntime",
    "zerostart.kernels",
    "cuda",
    "pycuda",
)


def test_runtime_imports_only_stdlib() -> None:
    """Importing the GPU engine pulls no framework, compiler, CUDA toolkit or numpy, and opens
    no library."""
    code = (
        "import sys, json; import zerostart.engine.cuda as m; "
        "maps = open('/proc/self/maps').read(); "
        "print(json.dumps({'mods': sorted(sys.modules), 'maps': maps}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    import json

    data = json.loads(out.stdout)
    mods = data["mods"]
    bad = [m for m in mods if m.split(".")[0] in FORBIDDEN or m.startswith("zerostart.kernels")]
    assert not bad, bad
    third_party = {m.split(".")[0] for m in mods} - set(sys.stdlib_module_names) - {"zerostart"}
    assert "numpy" not in {m.split(".")[0] for m in mods}
    assert not {m for m in third_party if not m.startswith("_")}, third_party
    for lib in ("libcuda", "libcudart", "libcublas", "libnvrtc", "libtorch"):
        assert lib not in data["maps"], lib  # libcuda is opened by an engine, never by an import
