"""zTOC spans through the chunk reader's prefetch: on-demand reads come first (our own logic).

A unit test of imagefs/_fetch.py + imagefs/_zran.py with a blob store double
whose ``stream`` (the prefetch's range request) hands out one block each time
the test lets it, and whose ``read`` (an on-demand range request) answers at
once or when the test lets it. The zTOC is a real one, built by
``ztoc._build.build`` from a real gzip tar. What is checked is the ordering
contract the span profile relies on (docs/lazy-images.md): a read of a span
the profile does not name is fetched at once, however far the prefetch is
from done; a read of a span the prefetch has promised waits for the stream
instead of fetching it twice; while an on-demand fetch is in flight the
streams pause after each block. The real registry and FUSE run the same code
in tests/integration/test_zran_profile.py.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import random
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zerostart.imagefs import _fetch
from zerostart.imagefs._cache import ChunkCache
from zerostart.imagefs._fetch import ChunkReader, Layer
from zerostart.imagefs._zran import open_zran
from zerostart.ztoc import Ztoc
from zerostart.ztoc._build import build

SPAN = 64 * 1024
WAIT_S = 10.0


def _layer_blob() -> bytes:
    """A gzip tar whose deflate blocks end on byte boundaries often (a full flush per 32 KiB)."""
    rng = random.Random(5)
    words = [rng.randbytes(5).hex() for _ in range(3000)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(4):
            data = " ".join(rng.choices(words, k=60_000)).encode()
            info = tarfile.TarInfo(f"app/f{i}.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as g:
        for i in range(0, len(raw), 32 * 1024):
            g.write(raw[i : i + 32 * 1024])
            g.flush()  # zlib Z_SYNC_FLUSH: the block ends on a byte boundary
    return out.getvalue()


class GatedBlobs:
    """One blob. ``stream`` yields a block per ``blocks.release()``; ``read`` waits on ``reads``."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.blocks = threading.Semaphore(0)
        self.reads = threading.Event()
        self.reads.set()
        self.log: list[tuple[str, int]] = []

    def read(self, digest: str, start: int, end: int) -> bytes:
        self.log.append(("read", start))
        assert self.reads.wait(WAIT_S)
        return self.blob[start:end]

    @contextlib.contextmanager
    def stream(self, digest: str, start: int, end: int) -> Iterator[Callable[[int], bytes]]:
        self.log.append(("stream", start))
        pos = [start]

        def read(n: int) -> bytes:
            assert self.blocks.acquire(timeout=WAIT_S)
            data = self.blob[pos[0] : min(end, pos[0] + n)]
            pos[0] += len(data)
            return data

        yield read


@pytest.fixture()
def setup() -> tuple[GatedBlobs, ChunkReader, Layer, Ztoc]:
    blob = _layer_blob()
    z = build(io.BytesIO(blob), SPAN)
    assert len(z.checkpoints) >= 6
    blobs = GatedBlobs(blob)
    layer, _ = open_zran(0, {"digest": "sha256:" + "1" * 64, "size": len(blob)}, z)
    reader = ChunkReader(blobs, [layer], ChunkCache(disk_dir=None))  # type: ignore[arg-type]
    return blobs, reader, layer, z


def _prefetch(reader: ChunkReader, layer: Layer, spans: list[int]) -> threading.Thread:
    extents = [layer.spans.extent(0, i) for i in spans]
    t = threading.Thread(target=reader.prefetch_chunks, args=(extents, 1), daemon=True)
    t.start()
    return t


def _span_bytes(layer: Layer, reader: ChunkReader, z: Ztoc, i: int) -> bytes:
    start = z.checkpoints[i].out_offset
    return bytes(layer.spans.pread(reader, layer, z.span_end(i) - start, start))


def test_a_span_the_profile_does_not_name_is_fetched_at_once(setup: Any) -> None:
    blobs, reader, layer, z = setup
    t = _prefetch(reader, layer, [0, 1, 2])  # one run; its stream gets no block yet
    last = len(z.checkpoints) - 1
    got = _span_bytes(layer, reader, z, last)  # returns while the stream is stalled
    assert ("read", z.span_range(last)[0]) in blobs.log
    assert reader.prefetch_state["state"] == "running"
    assert len(got) == z.span_end(last) - z.checkpoints[last].out_offset
    for _ in range(200):
        blobs.blocks.release()
    t.join(WAIT_S)
    assert reader.prefetch_state["state"] == "done"


def test_a_promised_span_is_waited_for_not_fetched_twice(setup: Any) -> None:
    blobs, reader, layer, z = setup
    t = _prefetch(reader, layer, [1, 2])
    while ("stream", z.span_range(1)[0]) not in blobs.log:  # the stream has promised 1 and 2
        threading.Event().wait(0.01)
    out: list[bytes] = []
    waiter = threading.Thread(target=lambda: out.append(_span_bytes(layer, reader, z, 2)))
    waiter.start()
    for _ in range(200):
        blobs.blocks.release()
    waiter.join(WAIT_S)
    t.join(WAIT_S)
    assert out and len(out[0]) == z.span_end(2) - z.checkpoints[2].out_offset
    assert not [e for e in blobs.log if e[0] == "read"]  # served by the stream alone


def test_the_stream_pauses_after_each_block_while_a_read_is_in_flight(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs, reader, layer, z = setup
    sleeps: list[float] = []
    monkeypatch.setattr(_fetch.time, "sleep", sleeps.append)
    blobs.reads.clear()  # the on-demand fetch will hang until we let it go
    last = len(z.checkpoints) - 1
    demand = threading.Thread(target=_span_bytes, args=(layer, reader, z, last), daemon=True)
    demand.start()
    while ("read", z.span_range(last)[0]) not in blobs.log:
        threading.Event().wait(0.01)
    t = _prefetch(reader, layer, [0, 1, 2])
    for _ in range(3):
        blobs.blocks.release()
    while reader.prefetch_state.get("done_bytes", 0) < 3 * _fetch.PREFETCH_READ_BYTES and (
        reader.prefetch_state["done_bytes"] < z.span_range(2)[1] - z.span_range(0)[0]
    ):
        threading.Event().wait(0.01)
    assert sleeps and all(s == _fetch.PREFETCH_YIELD_S for s in sleeps)  # one stream
    blobs.reads.set()
    for _ in range(200):
        blobs.blocks.release()
    demand.join(WAIT_S)
    t.join(WAIT_S)
    assert reader.prefetch_state["state"] == "done"
