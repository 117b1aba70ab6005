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

Prefetch streams each layer's landmark region (the files the build trace saw
the worker read, in that order) with one range request per layer, the way the
eStargz layout intends, and gives way to on-demand reads (see
:meth:`ChunkReader.prefetch`).
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
from zerostart.ztoc import ZtocError

log = logging.getLogger(__name__)

# The prefetch stream is read in blocks of this size; between blocks it checks for
# on-demand fetches and, while there are any, sleeps PREFETCH_YIELD_S: at 100 Mbit/s a
# 256 KiB block is ~20 ms, so the stream then takes at most ~1/2 of the link.
PREFETCH_READ_BYTES = 256 * 1024
PREFETCH_YIELD_S = 0.02
# A reader waits this long for a chunk the prefetch stream has promised before it
# fetches the chunk itself (the stream may be megabytes away from it).
PREFETCH_WAIT_S = 2.0
ERRORS_KEPT = 20
# A chunk profile is fetched by this many range requests at once: one request's round trip
# (proxy + registry, ~1-5 ms here) would otherwise leave the link idle between small runs.
PROFILE_STREAMS = 4
# Two runs of a profile this close in one blob are fetched as one: a request costs a round
# trip, ~2.5 ms = ~32 KiB at 100 Mbit/s.
PROFILE_GAP_BYTES = 32 * 1024


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
    ``spans``: a plain gzip layer read through its zTOC
    (:class:`zerostart.imagefs._zran.SpanReader`; extents are offsets in the
    uncompressed tar stream, as for ``local_path``).
    """

    index: int
    digest: str
    size: int
    local_path: Path | None = None
    prefetch_end: int = 0
    note: str = ""
    spans: Any = None


class _Pending:
    def __init__(self, *, prefetch: bool = False) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.prefetch = prefetch  # promised by the prefetch stream (a reader waits a bounded time)


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
        self._streams = 1  # prefetch streams running (a profile's are several)
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
            if layer.spans is not None:  # plain gzip through its zTOC (imagefs/_zran.py)
                parts.append(layer.spans.pread(self, layer, hi - lo, x.start + lo - x.file_offset))
                continue
            assert x.digest is not None
            part = self.cache.read(x.digest, lo - x.file_offset, hi - x.file_offset)
            if part is None:
                part = self.chunk(layer, x, cached=False)[lo - x.file_offset : hi - x.file_offset]
            parts.append(part)
        return b"".join(parts)

    def read_cached(self, node: Node, offset: int, length: int) -> bytes | None:
        """Like :meth:`read` when every chunk is in memory (or trusted on disk), else None.

        Called in the FUSE event loop: it never fetches, so it never blocks on the network.
        """
        end = min(offset + length, node.size)
        if offset >= end:
            return b""
        parts = []
        for x in extents_for(node, offset, end - offset):
            if self.layers[x.layer].local_path is not None or x.digest is None:
                return None
            lo, hi = max(offset, x.file_offset), min(end, x.file_offset + x.size)
            part = self.cache.peek(x.digest, lo - x.file_offset, hi - x.file_offset)
            if part is None:
                return None
            parts.append(part)
        return b"".join(parts)

    def _fd(self, layer: Layer) -> int:
        with self._lock:
            fd = self._fds.get(layer.index)
            if fd is None:
                assert layer.local_path is not None
                fd = self._fds[layer.index] = os.open(layer.local_path, os.O_RDONLY)
            return fd

    def chunk(self, layer: Layer, x: Extent, *, cached: bool = True) -> bytes:
        """One verified chunk: from the cache, from a fetch in flight, or fetched now.

        ``cached=False``: the caller just missed the cache; do not look (or count) again.
        """
        assert x.digest is not None
        data = self.cache.get(x.digest) if cached else None
        if data is not None:
            return data
        with self._lock:
            pending = self._pending.get(x.digest)
            owner = pending is None
            if owner:
                pending = self._pending[x.digest] = _Pending()
        assert pending is not None
        if not owner:
            arrived = pending.done.wait(PREFETCH_WAIT_S if pending.prefetch else None)
            if pending.data is not None:
                return pending.data
            if not arrived:  # the stream is far from this chunk: fetch it now, ourselves
                return self._fetch_now(layer, x)
            return self.chunk(layer, x)  # the other fetch failed (a prefetch): try ourselves
        with self._lock:
            self._demand += 1
        log.debug("on demand: %s @%d (%d bytes)", x.entry and x.entry.name, x.file_offset, x.size)
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

    def _fetch_now(self, layer: Layer, x: Extent) -> bytes:
        assert x.digest is not None
        with self._lock:
            self._demand += 1
        try:
            data = self._fetch_verified(layer, x)
            self.cache.put(x.digest, data)
            return data
        finally:
            with self._lock:
                self._demand -= 1

    def _fetch_verified(self, layer: Layer, x: Extent) -> bytes:
        """Fetch, inflate and verify one chunk; a bad chunk is refused and fetched once more."""
        assert x.entry is not None
        for attempt in (1, 2):
            raw = self._range(layer, x.start, x.end)
            try:
                return self._verify(layer, x, raw)
            except (EStargzError, ZtocError) as exc:
                with self._lock:
                    self.counters["digest_mismatches"] += 1
                problem = exc.problem if isinstance(exc, EStargzError) else str(exc)
                message = f"layer {layer.digest[:19]}: {problem} ({x.entry.name}); refused"
                log.warning("%s (attempt %d)", message, attempt)
        self._fail(message + " twice: the registry's copy is corrupt or was tampered with")

    @staticmethod
    def _verify(layer: Layer, x: Extent, raw: bytes) -> bytes:
        """The chunk's bytes from its compressed ``raw``, checked against its digest.

        An eStargz chunk is a gzip member (:func:`zerostart.estargz.read_chunk`);
        a zTOC span resumes from its checkpoint (imagefs/_zran.py). Raises
        EStargzError or ZtocError: nothing unverified is returned.
        """
        assert x.entry is not None
        if layer.spans is not None:
            return layer.spans.verify(x, raw)  # type: ignore[no-any-return]
        return read_chunk(x.entry, raw)

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
        """Stream every layer's landmark region, one range request per layer (blocking).

        Layers go in order (the bottom layer holds the interpreter a start needs
        first). Each chunk is verified and cached as soon as its bytes are in;
        a reader that wants a chunk still on its way waits for the stream, up
        to :data:`PREFETCH_WAIT_S`, then fetches it itself. While any on-demand
        fetch is in flight the stream reads slowly (:data:`PREFETCH_YIELD_S`
        per block), handing the link to the reads a process is blocked on.
        """
        plan = self._plan(extents)
        total = sum(xs[-1].end - xs[0].start for _, xs in plan)
        self.prefetch_state.update(
            state="running", source="landmark", total_bytes=total, done_bytes=0
        )
        t0 = time.perf_counter()
        log.info("prefetch: %d bytes in %d layer regions", total, len(plan))
        try:
            for layer, xs in plan:
                self._stream_region(layer, xs)
                if self._stop.is_set():
                    self.prefetch_state["state"] = "stopped"
                    return
        except ChunkReadError as exc:
            self.prefetch_state["state"] = f"failed: {exc}"
            return
        self.prefetch_state["state"] = "done"
        self.prefetch_state["seconds"] = time.perf_counter() - t0
        log.info("prefetch: done in %.2f s", self.prefetch_state["seconds"])

    def prefetch_chunks(self, extents: Sequence[Extent], streams: int = PROFILE_STREAMS) -> None:
        """Fetch the chunks of a profile (:mod:`zerostart.imagefs._profile`), in its order (blocking).

        Consecutive chunks that lie back to back in one layer blob (or within
        :data:`PROFILE_GAP_BYTES` of each other) become one range request, a
        *run*; ``streams`` threads take the runs in order, so the link stays
        busy across the round trip of each request while the order the start
        read its chunks in is kept (run *k* starts before run *k + streams*).
        On-demand reads come first as with the landmark region: while one is
        in flight the streams together read as slowly as the landmark's one
        stream does (each pauses ``streams`` × :data:`PREFETCH_YIELD_S` per block).
        """
        runs = self._runs(extents)
        total = sum(xs[-1].end - xs[0].start for _, xs in runs)
        self.prefetch_state.update(
            state="running", source="profile", total_bytes=total, done_bytes=0, runs=len(runs)
        )
        t0 = time.perf_counter()
        log.info(
            "prefetch: profile of %d chunks, %d bytes in %d runs", len(extents), total, len(runs)
        )
        queue = deque(runs)
        failures: list[str] = []

        def work() -> None:
            while not self._stop.is_set():
                with self._lock:
                    if not queue:
                        return
                    layer, xs = queue.popleft()
                try:
                    self._stream_region(layer, xs)
                except ChunkReadError as exc:  # left to on-demand reads; say so once
                    failures.append(str(exc))

        self._streams = max(1, streams)
        threads = [threading.Thread(target=work, daemon=True) for _ in range(self._streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._stop.is_set():
            self.prefetch_state["state"] = "stopped"
            return
        self.prefetch_state["state"] = f"failed: {failures[0]}" if failures else "done"
        self.prefetch_state["seconds"] = time.perf_counter() - t0
        log.info(
            "prefetch: profile %s in %.2f s", self.prefetch_state["state"], time.perf_counter() - t0
        )

    def _runs(self, extents: Sequence[Extent]) -> list[tuple[Layer, list[Extent]]]:
        """The profile's chunks as range requests, in its order.

        A chunk that continues its layer's latest run (at or just past its end)
        joins it, even when chunks of other layers came between: a start reads
        the interpreter's stdlib (one layer) and site-packages (another) in
        turns, and the build laid each layer's files out in read order.
        """
        runs: list[tuple[Layer, list[Extent]]] = []
        latest: dict[int, list[Extent]] = {}  # layer index -> its latest run
        for x in extents:
            layer = self.layers[x.layer]
            if layer.local_path is not None or not x.digest:
                continue
            xs = latest.get(x.layer)
            if xs is not None and 0 <= x.start - xs[-1].end <= PROFILE_GAP_BYTES:
                xs.append(x)
                continue
            latest[x.layer] = xs = [x]
            runs.append((layer, xs))
        return runs

    def _plan(self, extents: Sequence[Extent]) -> list[tuple[Layer, list[Extent]]]:
        by_layer: dict[int, dict[str, Extent]] = {}
        for x in extents:
            layer = self.layers[x.layer]
            if layer.local_path is None and x.digest and x.end <= layer.prefetch_end:
                by_layer.setdefault(x.layer, {}).setdefault(x.digest, x)
        return [
            (self.layers[i], sorted(xs.values(), key=lambda x: x.start))
            for i, xs in sorted(by_layer.items())
        ]

    def _stream_region(self, layer: Layer, xs: list[Extent]) -> None:
        with self._lock:
            mine: dict[str, _Pending] = {}
            for x in xs:
                assert x.digest is not None
                if x.digest not in self._pending and x.digest not in self.cache:
                    mine[x.digest] = self._pending[x.digest] = _Pending(prefetch=True)
        todo = [x for x in xs if x.digest in mine]
        try:
            delay = self.retry.backoff_s
            for attempt in range(1, self.retry.attempts + 1):
                try:
                    todo = [x for x in todo if str(x.digest) not in self.cache]  # the rest
                    self._stream_once(layer, todo, mine)
                    return
                except RegistryError as exc:
                    if attempt == self.retry.attempts or self._stop.is_set():
                        self._fail(f"prefetch of layer {layer.digest[:19]} gave up: {exc}")
                    with self._lock:
                        self.counters["retries"] += 1
                    time.sleep(delay)
                    delay *= 2
        finally:
            with self._lock:  # whatever did not arrive: its readers fetch it themselves
                for digest, pending in mine.items():
                    if self._pending.get(digest) is pending:
                        del self._pending[digest]
                    pending.done.set()

    def _stream_once(self, layer: Layer, todo: list[Extent], mine: dict[str, _Pending]) -> None:
        """Stream the chunks ``todo`` (sorted by offset) with one range request."""
        if not todo:
            return
        start, end = todo[0].start, max(x.end for x in todo)
        with self.reader.stream(layer.digest, start, end) as read:
            buf, base = bytearray(), start
            for i, x in enumerate(todo):
                while base + len(buf) < x.end:
                    if self._stop.is_set():
                        return
                    block = read(min(PREFETCH_READ_BYTES, end - base - len(buf)))
                    if not block:
                        raise RegistryError(layer.digest, f"range {start}-{end - 1} cut short")
                    buf += block
                    with self._lock:  # several profile streams add to it
                        self.prefetch_state["done_bytes"] += len(block)
                    if self._demand:  # n streams pause n times as long: together, as one
                        time.sleep(PREFETCH_YIELD_S * self._streams)
                self._settle(layer, x, bytes(buf[x.start - base : x.end - base]), mine)
                nxt = todo[i + 1].start if i + 1 < len(todo) else x.end
                cut = max(0, min(nxt, x.end) - base)
                del buf[:cut]
                base += cut

    def _settle(self, layer: Layer, x: Extent, raw: bytes, mine: dict[str, _Pending]) -> None:
        assert x.digest is not None and x.entry is not None
        pending = mine.get(x.digest)
        try:
            if x.digest not in self.cache:
                data = self._verify(layer, x, raw)
                self.cache.put(x.digest, data)
                if pending is not None:
                    pending.data = data
        except (EStargzError, ZtocError) as exc:
            with self._lock:  # left to an on-demand read, which fetches again and reports
                self.counters["digest_mismatches"] += 1
            log.warning("prefetch: layer %s: %s; refused", layer.digest[:19], exc)
        finally:
            if pending is not None:
                with self._lock:
                    if self._pending.get(x.digest) is pending:
                        del self._pending[x.digest]
                pending.done.set()

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
