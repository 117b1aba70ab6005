"""Chunk reads: cache first, then the registry, verified, retried, and prefetched in the background.

Theory of operation
-------------------
A read of ``[offset, offset + n)`` of a file touches a few extents
(:class:`~zerostart.imagefs._index.Extent`). For each one, :class:`ChunkReader`:

1. asks the :class:`~zerostart.imagefs._cache.ChunkCache` (memory, then disk);
2. else waits if another thread is already fetching that digest (one fetch per
   chunk, however many readers, images or layers want it);
3. else fetches the chunk's gzip member by one range request, inflates and
   checks it against the TOC's ``chunkDigest`` (:func:`zerostart.estargz.read_chunk`);
   a mismatch is refused (never served) and fetched once more, then fails the read;
4. network failures retry with exponential back-off (:class:`RetryPolicy`);
   when the attempts are spent the read fails with :class:`ChunkReadError`
   (``EIO`` to the reader) and the message is kept for ``imagefs stats``.

Prefetch walks each layer's landmark region (the files the build trace saw
the worker read, in that order) in batches of ``PREFETCH_BATCH_BYTES`` and
gives way to on-demand reads: before each batch it waits until no on-demand
fetch is in flight, so a process never queues behind the prefetch for more
than one batch (1 MiB: ~80 ms at 100 Mbit/s).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from zerostart.errors import ZerostartError
from zerostart.estargz import EStargzError, read_chunk
from zerostart.imagefs._cache import ChunkCache
from zerostart.imagefs._index import Extent, Node, extents_for
from zerostart.registry.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from zerostart.registry.ranges import BlobReader

log = logging.getLogger(__name__)

PREFETCH_BATCH_BYTES = 1024 * 1024
# Gaps between chunks (tar headers of directories, symlinks) up to this size are
# fetched with the batch instead of splitting it into two requests.
PREFETCH_GAP_BYTES = 64 * 1024
ERRORS_KEPT = 20


class ChunkReadError(ZerostartError):
    """A chunk could not be fetched or verified; the reader gets EIO."""


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per chunk and the back-off between them (doubling from ``backoff_s``).

    The defaults give up after 4 attempts and 0.2 + 0.4 + 0.8 s of waiting,
    each request bounded by the reader's network timeout: a dead registry
    fails a read in seconds, never hangs it.
    """

    attempts: int = 4
    backoff_s: float = 0.2


@dataclass
class Layer:
    """One layer as the reader sees it.

    ``local_path``: the uncompressed tar of a layer fetched whole (no TOC);
    None for an eStargz layer read by range. ``prefetch_end``: compressed
    offset of the ``.prefetch.landmark`` entry (0: nothing to prefetch).
    """

    index: int
    digest: str
    size: int
    local_path: Path | None = None
    prefetch_end: int = 0
    note: str = ""


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None


class ChunkReader:
    """Reads file bytes for the FUSE layer; thread-safe (one call per FUSE worker thread)."""

    def __init__(
        self,
        reader: BlobReader,
        layers: Sequence[Layer],
        cache: ChunkCache,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.reader, self.layers, self.cache, self.retry = reader, list(layers), cache, retry
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._demand = 0  # on-demand fetches in flight
        self._idle = threading.Condition(self._lock)
        self._fds: dict[int, int] = {}
        self.errors: deque[str] = deque(maxlen=ERRORS_KEPT)
        self.counters = {
            "registry_fetches": 0,
            "registry_bytes": 0,
            "digest_mismatches": 0,
            "retries": 0,
            "failed_reads": 0,
            "first_reads": 0,
        }
        self.prefetch_state: dict[str, Any] = {"state": "none", "total_bytes": 0, "done_bytes": 0}
        self.first_read: list[str] = []  # access order (paths), for profiling images
        self._stop = threading.Event()

    # -- reads ------------------------------------------------------------------------

    def read(self, node: Node, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of a regular file (short at end of file)."""
        end = min(offset + length, node.size)
        if offset >= end:
            return b""
        parts = []
        for x in extents_for(node, offset, end - offset):
            lo, hi = max(offset, x.file_offset), min(end, x.file_offset + x.size)
            layer = self.layers[x.layer]
            if layer.local_path is not None:
                parts.append(os.pread(self._fd(layer), hi - lo, x.start + lo - x.file_offset))
                continue
            chunk = self.chunk(layer, x)
            parts.append(chunk[lo - x.file_offset : hi - x.file_offset])
        return b"".join(parts)

    def _fd(self, layer: Layer) -> int:
        with self._lock:
            fd = self._fds.get(layer.index)
            if fd is None:
                assert layer.local_path is not None
                fd = self._fds[layer.index] = os.open(layer.local_path, os.O_RDONLY)
            return fd

    def chunk(self, layer: Layer, x: Extent) -> bytes:
        """One verified chunk: from the cache, from a fetch in flight, or fetched now."""
        assert x.digest is not None
        data = self.cache.get(x.digest)
        if data is not None:
            return data
        with self._lock:
            pending = self._pending.get(x.digest)
            owner = pending is None
            if owner:
                pending = self._pending[x.digest] = _Pending()
        assert pending is not None
        if not owner:
            pending.done.wait()
            if pending.data is not None:
                return pending.data
            return self.chunk(layer, x)  # the other fetch failed (a prefetch): try ourselves
        with self._lock:
            self._demand += 1
        try:
            pending.data = self._fetch_verified(layer, x)
            self.cache.put(x.digest, pending.data)
            return pending.data
        finally:
            with self._lock:
                self._demand -= 1
                self._pending.pop(x.digest, None)
                self._idle.notify_all()
            pending.done.set()

    def _fetch_verified(self, layer: Layer, x: Extent) -> bytes:
        """Fetch, inflate and verify one chunk; a bad chunk is refused and fetched once more."""
        assert x.entry is not None
        for attempt in (1, 2):
            raw = self._range(layer, x.start, x.end)
            try:
                return read_chunk(x.entry, raw)
            except EStargzError as exc:
                with self._lock:
                    self.counters["digest_mismatches"] += 1
                message = f"layer {layer.digest[:19]}: {exc.problem} ({x.entry.name}); refused"
                log.warning("%s (attempt %d)", message, attempt)
        self._fail(message + " twice: the registry's copy is corrupt or was tampered with")

    def _range(self, layer: Layer, start: int, end: int) -> bytes:
        delay = self.retry.backoff_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                data = self.reader.read(layer.digest, start, end)
            except (RegistryAuthError, RegistryNotFoundError) as exc:
                self._fail(f"layer {layer.digest[:19]}: {exc}")
            except RegistryError as exc:
                if attempt == self.retry.attempts or self._stop.is_set():
                    self._fail(
                        f"layer {layer.digest[:19]} bytes {start}-{end - 1}: gave up after "
                        f"{attempt} attempts: {exc}"
                    )
                log.info("range read failed (%s); retrying in %.1f s", exc, delay)
                with self._lock:
                    self.counters["retries"] += 1
                time.sleep(delay)
                delay *= 2
                continue
            with self._lock:
                self.counters["registry_fetches"] += 1
                self.counters["registry_bytes"] += len(data)
            return data
        raise AssertionError("unreachable: the last attempt returns or fails")

    def _fail(self, message: str) -> NoReturn:
        with self._lock:
            self.counters["failed_reads"] += 1
            self.errors.append(f"{time.strftime('%H:%M:%S')} {message}")
        log.error("imagefs: %s", message)
        raise ChunkReadError(message)

    # -- prefetch -------------------------------------------------------------------------

    def prefetch(self, extents: Sequence[Extent]) -> None:
        """Fetch every chunk in the layers' landmark regions, batch by batch (blocking)."""
        batches = self._batches(extents)
        total = sum(b[-1].end - b[0].start for b in batches)
        self.prefetch_state.update(state="running", total_bytes=total, done_bytes=0)
        try:
            for batch in batches:
                if self._stop.is_set():
                    self.prefetch_state["state"] = "stopped"
                    return
                self._prefetch_batch(batch)
                self.prefetch_state["done_bytes"] += batch[-1].end - batch[0].start
        except ChunkReadError as exc:
            self.prefetch_state["state"] = f"failed: {exc}"
            return
        self.prefetch_state["state"] = "done"

    def _batches(self, extents: Sequence[Extent]) -> list[list[Extent]]:
        seen: set[str] = set()
        todo = []
        for x in sorted(extents, key=lambda x: (x.layer, x.start)):
            layer = self.layers[x.layer]
            if (
                layer.local_path is None
                and x.digest
                and x.end <= layer.prefetch_end
                and x.digest not in seen
            ):
                seen.add(x.digest)
                todo.append(x)
        batches: list[list[Extent]] = []
        for x in todo:
            last = batches[-1] if batches else None
            if (
                last
                and last[-1].layer == x.layer
                and 0 <= x.start - last[-1].end <= PREFETCH_GAP_BYTES
                and x.end - last[0].start <= PREFETCH_BATCH_BYTES
            ):
                last.append(x)
            else:
                batches.append([x])
        return batches

    def _prefetch_batch(self, batch: list[Extent]) -> None:
        with self._lock:
            while self._demand and not self._stop.is_set():  # on-demand reads go first
                self._idle.wait(0.5)
            mine = []
            for x in batch:
                assert x.digest is not None
                if x.digest not in self._pending and x.digest not in self.cache:
                    self._pending[x.digest] = _Pending()
                    mine.append(x)
        if not mine:
            return
        layer = self.layers[batch[0].layer]
        start, end = mine[0].start, mine[-1].end
        try:
            raw = self._range(layer, start, end)
            for x in mine:
                assert x.digest is not None and x.entry is not None
                try:
                    data = read_chunk(x.entry, raw[x.start - start : x.end - start])
                except EStargzError:
                    with self._lock:  # left to an on-demand read, which re-fetches and reports
                        self.counters["digest_mismatches"] += 1
                    continue
                self.cache.put(x.digest, data)
                self._pending[x.digest].data = data
        finally:
            with self._lock:
                for x in mine:
                    assert x.digest is not None
                    p = self._pending.pop(x.digest)
                    p.done.set()

    # -- life cycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._idle.notify_all()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.counters,
                "prefetch": dict(self.prefetch_state),
                "errors": list(self.errors),
            }
