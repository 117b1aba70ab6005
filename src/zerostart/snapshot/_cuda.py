"""GPU memory in a snapshot: the CUDA driver's process checkpoint API, through ctypes.

Theory of operation (the same steps NVIDIA's ``cuda-checkpoint`` utility runs):

    RUNNING --lock--> LOCKED --checkpoint--> CHECKPOINTED   (snapshot: then CRIU dump)
    CHECKPOINTED --restore--> LOCKED --unlock--> RUNNING    (restore: after CRIU restore)

``lock`` waits for in-flight work and blocks new CUDA calls of the target
process; ``checkpoint`` copies its device memory to host memory and releases
the GPU, so the process no longer maps the GPU's device files and CRIU can
dump it like any CPU process; ``restore`` puts the memory back at the same
device addresses. All calls act on another process by PID and need a driver
with the API (r555+; seen working with driver 580 on an H100).

NOT TESTED ON A GPU: written against the driver API's documented signatures
and unit-tested with a fake driver object on a machine without one. Limits:
one process tree's contexts on the GPUs present at checkpoint time; restoring
onto different GPUs (device remapping through ``CUcheckpointRestoreArgs``) is
not implemented; NCCL / multi-process GPU state does not survive.

Status codes become exceptions in exactly one place (``_check``), with the
driver's own error name and string, read by the engine's binding
(``engine/cuda/driver.py``'s ``Driver.check``: one libcuda error translation
for the engine and the checkpointer); this module adds only the checkpoint
API's symbols and its state machine.
"""

from __future__ import annotations

import ctypes
import enum
import time
from collections.abc import Callable
from typing import Any

from zerostart.snapshot._errors import CudaCheckpointError, CudaUnavailableError

LIBCUDA_NAME = "libcuda.so.1"
LOCK_TIMEOUT_MS = 10_000  # how long lock waits for in-flight kernels before failing
CUDA_SUCCESS = 0
_CHECKPOINT_SYMBOLS = (
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
    "cuCheckpointProcessGetState",
)


class ProcessState(enum.IntEnum):
    """CUprocessState."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class _LockArgs(ctypes.Structure):
    """CUcheckpointLockArgs: 64 bytes, timeoutMs first, the rest reserved (zero)."""

    _fields_ = [
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    ]


def _load_libcuda() -> Any:
    try:
        lib = ctypes.CDLL(LIBCUDA_NAME)
    except OSError as exc:
        raise CudaUnavailableError(
            f"{LIBCUDA_NAME} not found: no NVIDIA driver on this machine ({exc})",
            hint="GPU snapshots need the NVIDIA driver; is it installed, or mounted into the container?",
        ) from exc
    missing = [name for name in _CHECKPOINT_SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise CudaUnavailableError(
            f"{LIBCUDA_NAME} has no {', '.join(missing)}: the driver predates the checkpoint API",
            hint="upgrade the NVIDIA driver to r555 or newer",
        )
    for name in (
        "cuCheckpointProcessLock",
        "cuCheckpointProcessCheckpoint",
        "cuCheckpointProcessRestore",
        "cuCheckpointProcessUnlock",
    ):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    lib.cuCheckpointProcessGetState.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.cuCheckpointProcessGetState.restype = ctypes.c_int
    lib.cuInit.argtypes = [ctypes.c_uint]
    lib.cuDriverGetVersion.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


class CudaCheckpointer:
    """Checkpoint and restore the CUDA state of another process by PID.

    ``lib`` is libcuda loaded through ctypes (the default); a unit test passes
    an object with the same functions to test the state handling.
    """

    def __init__(self, lib: Any = None) -> None:
        # The engine's binding turns a status into the driver's name and text (one place for
        # both); imported here: a snapshot of a CPU worker never loads it.
        from zerostart.engine.cuda.driver import Driver

        self._lib = lib if lib is not None else _load_libcuda()
        self._driver = Driver(self._lib)
        self._check("cuInit", self._lib.cuInit(0), pid=0)

    def _check(self, call: str, code: int, *, pid: int) -> None:
        """CUDA_SUCCESS, or CudaCheckpointError with the driver's own error name and string."""
        from zerostart.engine.cuda.driver import CudaError

        try:
            self._driver.check(call, code)
        except CudaError as exc:
            raise CudaCheckpointError(call, code, exc.name, exc.text, pid=pid) from exc

    def driver_version(self) -> str:
        """The driver's CUDA API version, e.g. "12.8" (from cuDriverGetVersion)."""
        v = ctypes.c_int()
        self._check("cuDriverGetVersion", self._lib.cuDriverGetVersion(ctypes.byref(v)), pid=0)
        return f"{v.value // 1000}.{v.value % 1000 // 10}"

    def state(self, pid: int) -> ProcessState:
        out = ctypes.c_int()
        self._check(
            "cuCheckpointProcessGetState",
            self._lib.cuCheckpointProcessGetState(pid, ctypes.byref(out)),
            pid=pid,
        )
        return ProcessState(out.value)

    def _step(
        self, call: str, pid: int, expect: ProcessState, after: ProcessState, args: Any = None
    ) -> float:
        state = self.state(pid)
        if state is not expect:
            raise CudaCheckpointError(
                call,
                -1,
                "UNEXPECTED_STATE",
                f"process is {state.name}, {call} needs {expect.name}",
                pid=pid,
            )
        fn: Callable[[int, Any], int] = getattr(self._lib, call)
        t0 = time.perf_counter()
        self._check(call, fn(pid, ctypes.byref(args) if args is not None else None), pid=pid)
        elapsed = time.perf_counter() - t0
        state = self.state(pid)
        if state is not after:
            raise CudaCheckpointError(
                call,
                -1,
                "UNEXPECTED_STATE",
                f"process is {state.name} after {call}, expected {after.name}",
                pid=pid,
            )
        return elapsed

    def checkpoint(self, pid: int, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> dict[str, float]:
        """RUNNING -> CHECKPOINTED: GPU memory copied to host, GPU released. Seconds per step.

        If the checkpoint step fails the process is unlocked again, so a failed
        snapshot leaves the worker serving.
        """
        lock = _LockArgs(timeoutMs=lock_timeout_ms)
        times = {
            "cuda_lock": self._step(
                "cuCheckpointProcessLock", pid, ProcessState.RUNNING, ProcessState.LOCKED, lock
            )
        }
        try:
            times["cuda_checkpoint"] = self._step(
                "cuCheckpointProcessCheckpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED
            )
        except CudaCheckpointError:
            self._lib.cuCheckpointProcessUnlock(pid, None)
            raise
        return times

    def restore(self, pid: int) -> dict[str, float]:
        """CHECKPOINTED -> RUNNING: GPU memory back at the same addresses, CUDA calls unblocked."""
        return {
            "cuda_restore": self._step(
                "cuCheckpointProcessRestore", pid, ProcessState.CHECKPOINTED, ProcessState.LOCKED
            ),
            "cuda_unlock": self._step(
                "cuCheckpointProcessUnlock", pid, ProcessState.LOCKED, ProcessState.RUNNING
            ),
        }

    def resume(self, pid: int) -> None:
        """Undo a checkpoint of a process that is still alive (after a failed or leave-running dump)."""
        if self.state(pid) is ProcessState.CHECKPOINTED:
            self.restore(pid)
        elif self.state(pid) is ProcessState.LOCKED:
            self._check(
                "cuCheckpointProcessUnlock", self._lib.cuCheckpointProcessUnlock(pid, None), pid=pid
            )
