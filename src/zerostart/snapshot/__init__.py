"""Snapshots: freeze a warmed-up worker (CRIU, plus the CUDA driver's checkpoint API for
GPU memory) and restore it instead of booting it.

The public API is re-exported lazily: ``zerostart.snapshot.marker`` is read by the
worker on its cold-start path and must not pull in subprocess, hashlib or ctypes.
Other packages import these names, never the private modules (the platform finds a
model's snapshot with ``default_store``/``snapshot_dir``/``read_manifest``, names it
with ``host_fingerprint(criu_version())`` and stops a restored worker with
``stop_process``); ``container/snapshot_run.py`` is the one exception, a second
front end over the same internals (tests/unit/test_layering.py lists it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "CorruptSnapshotError",
    "CriuError",
    "CudaCheckpointError",
    "CudaUnavailableError",
    "HostFingerprint",
    "IncompatibleSnapshotError",
    "ReadinessError",
    "RestoreResult",
    "SnapshotError",
    "SnapshotManifest",
    "SnapshotResult",
    "Warmup",
    "check",
    "criu_version",
    "default_store",
    "host_fingerprint",
    "list_snapshots",
    "read_manifest",
    "remove_snapshot",
    "restore",
    "snapshot",
    "snapshot_dir",
    "stop_process",
]

# public name -> private module, or (private module, its name there)
_WHERE: dict[str, str | tuple[str, str]] = {
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
    "read_manifest": "_manifest",
    "Warmup": "_process",
    "stop_process": ("_process", "stop"),
    "HostFingerprint": "_host",
    "host_fingerprint": "_host",
    "criu_version": ("_criu", "version"),
    "default_store": "_store",
    "list_snapshots": "_store",
    "remove_snapshot": "_store",
    "snapshot_dir": "_store",
}

if TYPE_CHECKING:
    from zerostart.snapshot._api import RestoreResult, SnapshotResult, check, restore, snapshot
    from zerostart.snapshot._criu import version as criu_version
    from zerostart.snapshot._errors import (
        CorruptSnapshotError,
        CriuError,
        CudaCheckpointError,
        CudaUnavailableError,
        IncompatibleSnapshotError,
        ReadinessError,
        SnapshotError,
    )
    from zerostart.snapshot._host import HostFingerprint, host_fingerprint
    from zerostart.snapshot._manifest import SnapshotManifest, read_manifest
    from zerostart.snapshot._process import Warmup
    from zerostart.snapshot._process import stop as stop_process
    from zerostart.snapshot._store import (
        default_store,
        list_snapshots,
        remove_snapshot,
        snapshot_dir,
    )


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'zerostart.snapshot' has no attribute {name!r}")
    import importlib

    module, attr = (where, name) if isinstance(where, str) else where
    return getattr(importlib.import_module(f"zerostart.snapshot.{module}"), attr)
