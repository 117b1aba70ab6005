"""Where zerostart keeps what it can rebuild, and what it cannot: one definition for every part.

``$ZEROSTART_CACHE``, else ``$XDG_CACHE_HOME/zerostart``, else ``~/.cache/zerostart``
(the XDG Base Directory specification's cache home). Under it each part has its
own folder: ``cpu-kernels/`` and ``minimal-blas/`` (kernels/), ``imagefs/``
(chunks, whole-fetched layers, kept image indexes), ``images/`` and the image
builder's strip cache, ``oci/`` (container/). Deleting the whole folder is
always safe: everything in it is fetched or built again on use.

State that is not a cache lives under :func:`state_base`: ``$XDG_STATE_HOME/zerostart``,
else ``~/.local/state/zerostart`` (the XDG state home: kept across runs, not
rebuilt on demand): a user's snapshots (``snapshots/``, snapshot/_store.py) and
the gateway's worker key (``worker.key``, cli/platform.py). Root's snapshots
are system state (``/var/lib/zerostart/snapshots``); live mounts publish under
``/run`` (imagefs/mount.py ``state_dir``).

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


def state_base() -> Path:
    """``$XDG_STATE_HOME/zerostart``, else ``~/.local/state/zerostart`` (XDG Base Directory spec)."""
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "zerostart"
