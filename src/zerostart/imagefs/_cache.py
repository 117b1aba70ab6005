"""The content-addressed chunk cache: memory (LRU, bounded) over local disk (bounded, evicting).

Keys are chunk digests (``sha256:<hex>`` of the *uncompressed* chunk, the
``chunkDigest`` of the eStargz TOC), so a chunk that two layers or two images
share is fetched and stored once, whichever image asked first.

Both tiers hold only verified bytes: a chunk enters the cache after its
digest was checked against the TOC, and a chunk found on disk from before this
mount is hashed again the first time it is read (local disks rot too, and a
cache directory may be shared); after that it is trusted for the life of the
mount, and :meth:`ChunkCache.read` serves a kernel read (128 KiB) of it with
one ``pread`` instead of loading the whole 4 MiB chunk. A chunk that fails
the check is deleted and reported as a miss, so the reader fetches it from the
registry again.

The disk tier never fails a read: when the disk is full (``ENOSPC``/
``EDQUOT``) it evicts half of its own bytes and tries once more, and if that
also fails it skips storing the chunk (counted in ``disk_write_failures``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# 256 MiB of memory: the working set a BERT-sized worker reads at start (tens of
# MB) several times over, and small next to what a node gives a container.
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024
# 4 GiB of disk: a few images' read sets; eviction keeps it there.
DEFAULT_DISK_BYTES = 4 * 1024 * 1024 * 1024


_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def _split(digest: str) -> tuple[str, str]:
    algo, _, hexd = digest.partition(":")
    if _HEX_LENGTHS.get(algo) != len(hexd) or not all(c in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not a sha256/384/512 digest: {digest!r}")
    return algo, hexd


def digest_of(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:" + hashlib.new(algo, data).hexdigest()


class ChunkCache:
    """Verified chunks by digest; thread-safe. ``disk_dir=None`` keeps memory only."""

    def __init__(
        self,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_dir: Path | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
    ) -> None:
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes
        self.disk_dir = disk_dir
        self._lock = threading.Lock()
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._mem_used = 0
        self._disk: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._trusted: set[str] = set()  # on disk and verified during this mount
        self._disk_used = 0
        self.counters = {
            "memory_hits": 0,
            "disk_hits": 0,
            "misses": 0,
            "disk_evictions": 0,
            "memory_evictions": 0,
            "disk_write_failures": 0,
            "disk_corrupt": 0,
        }
        if disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self._scan()

    # -- bookkeeping ------------------------------------------------------------

    def _path(self, digest: str) -> Path:
        assert self.disk_dir is not None
        algo, hexd = _split(digest)
        return self.disk_dir / algo / hexd[:2] / hexd

    def _scan(self) -> None:
        """Adopt chunks a previous mount left, least recently used first (by atime)."""
        assert self.disk_dir is not None
        found = []
        for sub in self.disk_dir.glob("*/??"):
            if not sub.is_dir() or sub.parent.name not in _HEX_LENGTHS:
                continue
            for f in sub.iterdir():
                if f.name.startswith("."):
                    f.unlink(missing_ok=True)  # a write cut off by a crash
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                found.append((st.st_atime, f"{sub.parent.name}:{f.name}", st.st_size))
        for _, digest, size in sorted(found):
            self._disk[digest] = size
            self._disk_used += size
        self._evict_disk(0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.counters,
                "memory_bytes": self._mem_used,
                "memory_limit_bytes": self.memory_bytes,
                "memory_chunks": len(self._mem),
                "disk_bytes": self._disk_used,
                "disk_limit_bytes": self.disk_bytes if self.disk_dir else 0,
                "disk_chunks": len(self._disk),
            }

    # -- lookups -----------------------------------------------------------------

    def get(self, digest: str) -> bytes | None:
        """The chunk's bytes from the fastest tier that has them, or None (a miss)."""
        with self._lock:
            data = self._mem.get(digest)
            if data is not None:
                self._mem.move_to_end(digest)
                self.counters["memory_hits"] += 1
                return data
            on_disk = digest in self._disk
        if on_disk:
            data = self._read_disk(digest)
            if data is not None:
                with self._lock:
                    self.counters["disk_hits"] += 1
                    if digest in self._disk:
                        self._disk.move_to_end(digest)
                    self._put_memory(digest, data)
                return data
        with self._lock:
            self.counters["misses"] += 1
        return None

    def peek(self, digest: str, start: int, end: int) -> bytes | None:
        """Like :meth:`read`, but only from memory or a trusted disk chunk; a miss is not counted."""
        with self._lock:
            if digest not in self._mem and digest not in self._trusted:
                return None
        return self.read(digest, start, end)

    def read(self, digest: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of a chunk, or None (a miss); a trusted disk chunk is pread."""
        with self._lock:
            data = self._mem.get(digest)
            if data is not None:
                self._mem.move_to_end(digest)
                self.counters["memory_hits"] += 1
                return data[start:end]
            trusted = digest in self._trusted and digest in self._disk
        if trusted:
            try:
                fd = os.open(self._path(digest), os.O_RDONLY)
                try:
                    part = os.pread(fd, end - start, start)
                finally:
                    os.close(fd)
            except OSError:
                part = b""
            if len(part) == end - start:
                with self._lock:
                    self.counters["disk_hits"] += 1
                    if digest in self._disk:
                        self._disk.move_to_end(digest)
                return part
            with self._lock:
                self._trusted.discard(digest)
        whole = self.get(digest)
        return whole[start:end] if whole is not None else None

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._mem or digest in self._disk

    def _read_disk(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None and digest_of(data, _split(digest)[0]) == digest:
            with self._lock:
                self._trusted.add(digest)
            return data
        log.warning("chunk cache: %s on disk is missing or corrupt; fetching it again", digest)
        with self._lock:
            self.counters["disk_corrupt"] += 1
            size = self._disk.pop(digest, None)
            if size is not None:
                self._disk_used -= size
        path.unlink(missing_ok=True)
        return None

    # -- inserts ------------------------------------------------------------------

    def put(self, digest: str, data: bytes) -> None:
        """Store a chunk whose digest the caller verified (both tiers)."""
        with self._lock:
            self._put_memory(digest, data)
            if self.disk_dir is None or digest in self._disk or len(data) > self.disk_bytes:
                return
            self._evict_disk(len(data))
        if self._write_disk(digest, data):
            with self._lock:
                if digest not in self._disk:
                    self._disk[digest] = len(data)
                    self._disk_used += len(data)
                    self._trusted.add(digest)  # verified by the caller, written by us
                    self._evict_disk(0)

    def _put_memory(self, digest: str, data: bytes) -> None:
        if len(data) > self.memory_bytes:
            return
        if digest in self._mem:
            self._mem.move_to_end(digest)
            return
        self._mem[digest] = data
        self._mem_used += len(data)
        while self._mem_used > self.memory_bytes:
            _, old = self._mem.popitem(last=False)
            self._mem_used -= len(old)
            self.counters["memory_evictions"] += 1

    def _evict_disk(self, incoming: int) -> None:
        """Drop least recently used chunks until ``incoming`` more bytes fit the budget."""
        self._shrink_to(self.disk_bytes - incoming)

    def _shrink_to(self, target_bytes: int) -> None:
        while self._disk and self._disk_used > target_bytes:
            digest, size = self._disk.popitem(last=False)
            self._disk_used -= size
            self._trusted.discard(digest)
            self.counters["disk_evictions"] += 1
            self._path(digest).unlink(missing_ok=True)

    def _write_disk(self, digest: str, data: bytes) -> bool:
        for attempt in (0, 1):
            try:
                path = self._path(digest)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                return True
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                if full and attempt == 0:
                    with self._lock:  # the disk is fuller than our budget: halve our share
                        self._shrink_to(self._disk_used // 2)
                    continue
                log.warning(
                    "chunk cache: cannot store %s on disk (%s); serving from memory", digest, exc
                )
                with self._lock:
                    self.counters["disk_write_failures"] += 1
                return False
        return False
