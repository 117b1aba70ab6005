"""Whose fault a failed start is (zerostart/faults.py), classified on real exception objects.

Before, the pool matched the slot's exception *class name* against a list
(platform/starter.py ``MODEL_ERRORS``): a CUDA out-of-memory in one slot failed
the start as if the model were broken, while a node with no NVIDIA driver
(``DriverNotFound``) fell through to a cold boot that fails alike.
"""

from __future__ import annotations

import pytest

from zerostart.engine.cuda.driver import CudaError, DriverNotFound
from zerostart.engine.cuda.health import GpuHealthError
from zerostart.errors import (
    BundleError,
    ConvertError,
    EngineError,
    InputError,
    ServeError,
    TokenizerError,
)
from zerostart.faults import FAULTS, fault_of


def cuda(status: int, name: str) -> CudaError:
    return CudaError("cuMemAlloc_v2", status, name, "driver text")


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (BundleError("weights.safetensors", "digest mismatch"), "model"),
        (ConvertError("config.json", "unknown architecture"), "model"),
        (TokenizerError("vocab.txt: no [UNK]"), "model"),
        (EngineError("this engine cannot run DebertaV2"), "model"),
        (cuda(209, "CUDA_ERROR_NO_BINARY_FOR_GPU"), "model"),
        (DriverNotFound("libcuda.so.1 not found"), "node"),
        (cuda(100, "CUDA_ERROR_NO_DEVICE"), "node"),
        (cuda(222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"), "node"),
        (GpuHealthError("canary", "the answer is wrong"), "node"),
        (cuda(2, "CUDA_ERROR_OUT_OF_MEMORY"), "slot"),
        (cuda(719, "CUDA_ERROR_LAUNCH_FAILED"), "slot"),
        (ServeError("port 8080 is in use"), "slot"),
        (InputError("bad assignment"), "slot"),
        (KeyError("bundle"), "slot"),
    ],
)
def test_each_failure_is_the_fault_of_whoever_would_fail_again(
    exc: BaseException, fault: str
) -> None:
    assert fault_of(exc) == fault and fault in FAULTS
