"""The image builder: daemonless OCI images of a bundle (trace, closure, deterministic layers).

    zerostart build BUNDLE -o DIR   trace.py → closure.py (elf.py) → layers.py → oci.py
    zerostart inspect DIR           inspect.py

Names are re-exported lazily so that importing one submodule (the registry
client, say) does not import the builder. Running images is
``zerostart.container``; moving them to and from registries is ``zerostart.registry``.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "BuildOptions": "zerostart.image.build",
    "BuildResult": "zerostart.image.build",
    "build_image": "zerostart.image.build",
    "inspect_image": "zerostart.image.inspect",
    "format_report": "zerostart.image.inspect",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.image' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
