"""The CUDA checkpoint sequencing and error translation, against a fake driver.

The fake stands in for libcuda's five checkpoint calls and keeps the per-PID
state machine the driver documents; what is tested is our logic (order of
calls, state checks, unlock after a failed checkpoint, error messages), not
the driver. The real driver path is untested here: this machine has no GPU.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from zerostart.snapshot._cuda import CudaCheckpointer, ProcessState, _load_libcuda
from zerostart.snapshot._errors import CudaCheckpointError, CudaUnavailableError

CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_SUPPORTED = 801


class FakeDriver:
    """libcuda's checkpoint API as a state machine; ``fail`` makes one call return an error."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.states: dict[int, ProcessState] = {}
        self.calls: list[str] = []
        self.fail = fail or {}
        self.lock_timeout_ms: int | None = None

    def _go(self, call: str, pid: int, expect: ProcessState, to: ProcessState) -> int:
        self.calls.append(call)
        if call in self.fail:
            return self.fail[call]
        if self.states.get(pid, ProcessState.RUNNING) is not expect:
            return CUDA_ERROR_INVALID_VALUE
        self.states[pid] = to
        return 0

    def cuInit(self, flags: int) -> int:
        return 0

    def cuDriverGetVersion(self, ref: Any) -> int:
        ref._obj.value = 12080
        return 0

    def cuGetErrorName(self, code: int, ref: Any) -> int:
        ref._obj.value = {1: b"CUDA_ERROR_INVALID_VALUE", 801: b"CUDA_ERROR_NOT_SUPPORTED"}[code]
        return 0

    def cuGetErrorString(self, code: int, ref: Any) -> int:
        ref._obj.value = {1: b"invalid argument", 801: b"operation not supported"}[code]
        return 0

    def cuCheckpointProcessGetState(self, pid: int, ref: Any) -> int:
        ref._obj.value = int(self.states.get(pid, ProcessState.RUNNING))
        return 0

    def cuCheckpointProcessLock(self, pid: int, args: Any) -> int:
        self.lock_timeout_ms = args._obj.timeoutMs
        return self._go("lock", pid, ProcessState.RUNNING, ProcessState.LOCKED)

    def cuCheckpointProcessCheckpoint(self, pid: int, args: Any) -> int:
        return self._go("checkpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED)

    def cuCheckpointProcessRestore(self, pid: int, args: Any) -> int:
        return self._go("restore", pid, ProcessState.CHECKPOINTED, ProcessState.LOCKED)

    def cuCheckpointProcessUnlock(self, pid: int, args: Any) -> int:
        return self._go("unlock", pid, ProcessState.LOCKED, ProcessState.RUNNING)


def test_checkpoint_then_restore_walks_the_state_machine() -> None:
    drv = FakeDriver()
    ckpt = CudaCheckpointer(drv)
    assert ckpt.driver_version() == "12.8"
    times = ckpt.checkpoint(7, lock_timeout_ms=1234)
    assert set(times) == {"cuda_lock", "cuda_checkpoint"}
    assert drv.lock_timeout_ms == 1234
    assert ckpt.state(7) is ProcessState.CHECKPOINTED
    assert set(ckpt.restore(7)) == {"cuda_restore", "cuda_unlock"}
    assert ckpt.state(7) is ProcessState.RUNNING
    assert drv.calls == ["lock", "checkpoint", "restore", "unlock"]


def test_failed_checkpoint_unlocks_and_names_the_driver_error() -> None:
    drv = FakeDriver(fail={"checkpoint": CUDA_ERROR_NOT_SUPPORTED})
    with pytest.raises(CudaCheckpointError) as info:
        CudaCheckpointer(drv).checkpoint(7)
    assert str(info.value) == (
        "cuCheckpointProcessCheckpoint(pid 7) failed: CUDA_ERROR_NOT_SUPPORTED (801): operation not supported"
    )
    assert drv.calls == ["lock", "checkpoint", "unlock"]
    assert drv.states[7] is ProcessState.RUNNING


def test_restore_of_a_process_that_is_not_checkpointed_is_refused_before_calling() -> None:
    drv = FakeDriver()
    with pytest.raises(
        CudaCheckpointError,
        match="process is RUNNING, cuCheckpointProcessRestore needs CHECKPOINTED",
    ):
        CudaCheckpointer(drv).restore(7)
    assert drv.calls == []


def test_resume_undoes_a_checkpoint_of_a_live_process() -> None:
    drv = FakeDriver()
    ckpt = CudaCheckpointer(drv)
    ckpt.checkpoint(7)
    ckpt.resume(7)
    assert ckpt.state(7) is ProcessState.RUNNING


def test_lock_args_layout_matches_the_driver_struct() -> None:
    from zerostart.snapshot._cuda import _LockArgs

    assert (
        ctypes.sizeof(_LockArgs) == 64
    )  # CUcheckpointLockArgs: uint timeoutMs, uint reserved0, u64 reserved1[7]


def test_no_libcuda_is_a_typed_error_with_a_fix() -> None:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        pass
    else:
        pytest.skip("libcuda.so.1 is present on this machine")
    with pytest.raises(CudaUnavailableError) as info:
        _load_libcuda()
    assert "libcuda.so.1 not found" in str(info.value)
    assert info.value.hint is not None and "NVIDIA driver" in info.value.hint
