"""OCI Distribution client: push, pull, range reads, auth, digests.

Used by the image builder's ``zerostart push``/``pull`` and by the lazy image
filesystem (which reads blobs by range). Layout::

    _distribution.py   protocol rules, free of I/O (URLs, headers, auth challenges)
    _http.py           the HTTP driver (sockets, timeouts, error translation)
    client.py          push / pull of OCI image layouts
    layout.py          reading a local OCI image layout
    errors.py          one error per thing a user has to do differently

Nothing here imports the image builder.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "push": "zerostart.registry.client",
    "pull": "zerostart.registry.client",
    "PushResult": "zerostart.registry.client",
    "PullResult": "zerostart.registry.client",
    "RegistryError": "zerostart.registry.errors",
    "RegistryAuthError": "zerostart.registry.errors",
    "RegistryNotFoundError": "zerostart.registry.errors",
    "RegistryUnreachableError": "zerostart.registry.errors",
    "DigestMismatchError": "zerostart.registry.errors",
    "ImageLayoutError": "zerostart.registry.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.registry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
