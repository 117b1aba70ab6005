"""Snapshots: freeze a warmed-up worker (CRIU, plus the CUDA driver's checkpoint API for
GPU memory) and restore it instead of booting it.

The public API is re-exported lazily: ``zerostart.snapshot.marker`` is read by the
worker on its cold-start path and must not pull in subprocess, hashlib or ctypes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "CorruptSnapshotError",
    "CriuError",
    "CudaCheckpointError",
    "CudaUnavailableError",
    "IncompatibleSnapshotError",
    "ReadinessError",
    "RestoreResult",
    "SnapshotError",
    "SnapshotManifest",
    "SnapshotResult",
    "Warmup",
    "check",
    "default_store",
    "list_snapshots",
    "remove_snapshot",
    "restore",
    "snapshot",
]

_WHERE = {
    "CorruptSnapshotError": "_errors",
    "CriuError": "_errors",
    "CudaCheckpointError": "_errors",
    "CudaUnavailableError": "_errors",
    "IncompatibleSnapshotError": "_errors",
    "ReadinessError": "_errors",
    "SnapshotError": "_errors",
    "RestoreResult": "_api",
    "SnapshotResult": "_api",
    "check": "_api",
    "restore": "_api",
    "snapshot": "_api",
    "SnapshotManifest": "_manifest",
    "Warmup": "_process",
    "default_store": "_store",
    "list_snapshots": "_store",
    "remove_snapshot": "_store",
}

if TYPE_CHECKING:
    from zerostart.snapshot._api import RestoreResult, SnapshotResult, check, restore, snapshot
    from zerostart.snapshot._errors import (
        CorruptSnapshotError,
        CriuError,
        CudaCheckpointError,
        CudaUnavailableError,
        IncompatibleSnapshotError,
        ReadinessError,
        SnapshotError,
    )
    from zerostart.snapshot._manifest import SnapshotManifest
    from zerostart.snapshot._process import Warmup
    from zerostart.snapshot._store import default_store, list_snapshots, remove_snapshot


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.snapshot' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"zerostart.snapshot.{module}"), name)
