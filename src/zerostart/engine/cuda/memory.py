"""Device memory: a caching allocator, and pinned host buffers.

``cuMemAlloc`` / ``cuMemFree`` synchronise the device and cost tens of
microseconds, so freed blocks are kept per rounded size and handed out again
(the allocator never returns memory to the driver until ``release_all``).
Sizes round up to ``ALIGN_BYTES`` (256 B, what cuMemAlloc guarantees and
what the kernels' 16-byte vector loads need) and, above 1 MiB, to a whole MiB
so that similar sizes share a bin.

Pinned host buffers (``cuMemAllocHost``) make host<->device copies true DMA,
which is what lets a captured CUDA graph's inputs and outputs be staged
asynchronously.

Runtime module: standard library only (``PinnedBuffer.array`` imports numpy for tests).
"""

from __future__ import annotations

import ctypes
import struct
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from zerostart.engine.cuda.driver import Driver

if TYPE_CHECKING:
    import numpy as np

ALIGN_BYTES = 256
LARGE_BYTES = 1 << 20  # above this, round to whole MiB: fewer distinct bins


def round_size(nbytes: int) -> int:
    """The size a request of ``nbytes`` is served with (pure arithmetic, unit-tested)."""
    n = max(1, int(nbytes))
    step = LARGE_BYTES if n > LARGE_BYTES else ALIGN_BYTES
    return -(-n // step) * step


class CachingAllocator:
    """Device allocations cached by rounded size; ``free`` puts a block back in its bin."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._free: dict[int, list[int]] = defaultdict(list)
        self._sizes: dict[int, int] = {}  # live pointer -> rounded size
        self.bytes_reserved = 0  # everything obtained from the driver

    def alloc(self, nbytes: int) -> int:
        size = round_size(nbytes)
        bin_ = self._free[size]
        ptr = bin_.pop() if bin_ else self._new(size)
        self._sizes[ptr] = size
        return ptr

    def _new(self, size: int) -> int:
        ptr = self._driver.mem_alloc(size)
        self.bytes_reserved += size
        return ptr

    def free(self, ptr: int) -> None:
        size = self._sizes.pop(ptr)
        self._free[size].append(ptr)

    def release_all(self) -> None:
        """Give every block, cached or live, back to the driver (engine shutdown)."""
        for ptr in [*self._sizes, *(p for bin_ in self._free.values() for p in bin_)]:
            self._driver.mem_free(ptr)
        self._sizes.clear()
        self._free.clear()
        self.bytes_reserved = 0


class PinnedBuffer:
    """A page-locked host buffer of ``count`` elements of struct format ``fmt``.

    ``view`` is a memoryview of those elements ("i": int32), or of bytes for a
    format memoryview cannot hold ("e": float16, read with ``unpack``);
    ``array`` the same memory as a numpy array (numpy imported on first use).
    """

    def __init__(self, driver: Driver, fmt: str, count: int) -> None:
        self._driver = driver
        self.format = fmt
        self.count = max(1, count)
        self.nbytes = self.count * struct.calcsize(fmt)
        self.ptr = driver.mem_alloc_host(self.nbytes)
        raw = (ctypes.c_char * self.nbytes).from_address(self.ptr)
        raw_view = memoryview(raw).cast("B")
        self.view: memoryview[Any] = raw_view if fmt == "e" else raw_view.cast(fmt)  # type: ignore[call-overload]
        self._array: np.ndarray | None = None

    def unpack(self, start: int, count: int) -> tuple[Any, ...]:
        """Elements [start, start + count) as Python values (float16 widened to float)."""
        size = struct.calcsize(self.format)
        return struct.unpack_from(f"<{count}{self.format}", self.view, start * size)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            import numpy as np

            self._array = np.frombuffer(self.view, dtype=np.dtype(self.format), count=self.count)
        return self._array

    def close(self) -> None:
        if self.ptr:
            self._driver.mem_free_host(self.ptr)
            self.ptr = 0
