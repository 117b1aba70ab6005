"""Where zerostart keeps what it can rebuild: one definition for every part.

``$ZEROSTART_CACHE``, else ``$XDG_CACHE_HOME/zerostart``, else ``~/.cache/zerostart``
(the XDG Base Directory specification's cache home). Under it each part has its
own folder: ``cpu-kernels/`` and ``minimal-blas/`` (kernels/), ``imagefs/``
(chunks, whole-fetched layers, kept image indexes), ``images/`` and the image
builder's strip cache, ``oci/`` (container/). Deleting the whole folder is
always safe: everything in it is fetched or built again on use.

State that is not a cache (snapshots: snapshot/_store.py; live mounts:
imagefs/mount.py ``state_dir``) lives elsewhere on purpose.

Leaf module: standard library only, imported by build and run sides alike.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "ZEROSTART_CACHE"


def cache_base() -> Path:
    """``$ZEROSTART_CACHE``, else ``$XDG_CACHE_HOME/zerostart``, else ``~/.cache/zerostart``."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "zerostart"
