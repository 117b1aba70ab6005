"""Running images with a real OCI runtime (runc or crun), no daemon.

runtime.py        unpack an OCI layout, write the runtime config, run, stop
gpu.py            NVIDIA device nodes and driver libraries of the host
snapshot_run.py   checkpoint/restore of a warmed container (runc + CRIU)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Container": "zerostart.container.runtime",
    "choose_runtime": "zerostart.container.runtime",
    "read_oci_layout": "zerostart.oci",  # what running an image needs of the layout
    "unpacked_rootfs": "zerostart.container.runtime",
    "run_with_snapshot": "zerostart.container.snapshot_run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.container' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
