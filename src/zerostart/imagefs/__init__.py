"""Lazy image filesystem: mount an image straight from its registry, fetch bytes on first read.

Layout::

    mount.py     LazyMount: start the daemon, wait for the mount, stop and clean up; stats
    _daemon.py   the daemon process (``python -m zerostart.imagefs``): index, mount, serve
    _layers.py   each layer's footer + TOC by range reads (eStargz), or the layer whole
    _index.py    layer entries, chunk extents, inodes (the types)
    _layerwrite.py / _layerindex.py  one layer's index as a compact binary file: written / mapped, checked
    _indexcache.py  those files kept per layer digest: a later mount maps them, no TOC fetched
    _tree.py     the layers merged as an overlay (whiteouts, opaque dirs), a name at a time on lookup
    _fetch.py    chunk reads: cache, range fetch, verification, retries, prefetch
    _cache.py    content-addressed chunk cache: memory LRU over a bounded disk tier
    _fuse.py     the FUSE operations (pyfuse3)
    _zran.py     plain gzip layers read by spans through their zTOC (SOCI-style index)
    zindex.py    ``zerostart index``: build the zTOCs of an image, push them as a referrer

Why pyfuse3 (on libfuse3): it is the binding the libfuse project itself
maintains, it speaks the current kernel protocol through libfuse 3 (fusermount3,
``max_read``/``keep_cache``, readdirplus), and it is asynchronous (trio), so
metadata requests are answered while reads wait on the network in worker
threads. fusepy and its fork mfusepy wrap libfuse 2's high-level path API
through ctypes: a path string and a lock per call, one request at a time
unless the whole file system is made thread-safe by hand, and libfuse 2 is
legacy on current distributions. llfuse is pyfuse3's libfuse 2 predecessor,
in maintenance mode.

The eStargz format itself (footer, TOC, chunk verification) lives in
:mod:`zerostart.estargz`; range reads in :mod:`zerostart.registry.ranges`.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "LazyMount": "zerostart.imagefs.mount",
    "ImagefsError": "zerostart.imagefs.mount",
    "live_stats": "zerostart.imagefs.mount",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.imagefs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
