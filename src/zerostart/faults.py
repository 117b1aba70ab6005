"""Whose fault a failed start is: the model's, the node's, or one process's (a slot).

A warm slot that cannot take a model tells the platform *what kind* of failure
it was, decided here on the slot's side, where the exception object is
(``isinstance``, never its class name), and sent over the control socket as
one word (``serve/slot.py`` -> ``platform/slot.py``):

* ``"model"``: the bundle is bad or unsupported (corrupt weights, a tokenizer
  file, kernels built for another GPU). A cold boot reads the same files and
  fails alike, so the start fails at once with the worker's message.
* ``"node"``: this machine cannot run the model's device at all (no NVIDIA
  driver, no visible GPU, a driver older than the bundle's PTX, a GPU failing
  its health check). A cold boot on this node fails alike: fail at once.
* ``"slot"``: anything else (a CUDA out-of-memory or another driver failure in
  that one process, a malformed assignment, a port in use). Another process
  may well succeed: the start falls through to a cold boot.

The CUDA classes live in ``zerostart.engine.cuda``; a process that never
imported them cannot have raised them, so they are looked up in
``sys.modules`` and this module imports nothing beyond the error root (it is
on the worker's import path).
"""

from __future__ import annotations

import sys
from typing import Literal

from zerostart.errors import BundleError, EngineError, TokenizerError

Fault = Literal["model", "node", "slot"]
FAULTS: tuple[Fault, ...] = ("model", "node", "slot")

# CUresult codes (cuda.h) whose cause is the machine, or the bundle; other codes
# (CUDA_ERROR_OUT_OF_MEMORY = 2, launch failures, ...) are the one process's.
_CUDA_NODE_STATUSES = frozenset(
    {
        3,  # CUDA_ERROR_NOT_INITIALIZED
        34,  # CUDA_ERROR_STUB_LIBRARY: a stub libcuda, no real driver
        100,  # CUDA_ERROR_NO_DEVICE
        101,  # CUDA_ERROR_INVALID_DEVICE
        102,  # CUDA_ERROR_DEVICE_NOT_LICENSED
        222,  # CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the driver is older than the bundle's PTX
    }
)
_CUDA_MODEL_STATUSES = frozenset(
    {
        200,  # CUDA_ERROR_INVALID_IMAGE: the bundle's cubin is damaged
        209,  # CUDA_ERROR_NO_BINARY_FOR_GPU: kernels built for another GPU (re-convert)
        218,  # CUDA_ERROR_INVALID_PTX
    }
)


def fault_of(exc: BaseException) -> Fault:
    """Whose fault ``exc`` is, for a start that raised it; see the module docstring."""
    driver = sys.modules.get("zerostart.engine.cuda.driver")
    if driver is not None:
        if isinstance(exc, driver.DriverNotFound):
            return "node"
        if isinstance(exc, driver.CudaError):
            if exc.status in _CUDA_NODE_STATUSES:
                return "node"
            return "model" if exc.status in _CUDA_MODEL_STATUSES else "slot"
    health = sys.modules.get("zerostart.engine.cuda.health")
    if health is not None and isinstance(exc, health.GpuHealthError):
        return "node"
    if isinstance(exc, (BundleError, TokenizerError, EngineError)):
        return "model"
    return "slot"
