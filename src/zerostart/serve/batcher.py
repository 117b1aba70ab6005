"""Dynamic batching: many concurrent requests, one engine call.

The event loop tokenises and queues; one worker thread drains the queue and
runs the engine, so the loop keeps accepting, parsing and answering while a
batch runs (numpy and the CUDA driver release the GIL while they compute).

Batch formation, in the worker thread:

* Jobs wait in a bounded FIFO (``max_queue`` jobs); a full queue is refused at
  once (:class:`Overloaded`, HTTP 429) rather than growing latency without bound.
* The worker takes encodings from the head of the queue, in order, until the
  batch holds ``max_batch_sequences`` sequences or the next sequence would push the
  sum of lengths over ``max_batch_tokens``. A job larger than one batch is split
  across engine calls; a sequence longer than ``max_batch_tokens`` still runs,
  alone, so no request is starved.
* It calls ``execute`` once, hands each job its slice of the outputs, and
  resolves a job's future on the event loop when all its slices are done.
* A job whose client went away (future cancelled) is skipped before it runs.

Runtime module: standard library only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.limits import Limits

log = logging.getLogger("zerostart.serve")

Execute = Callable[[list[Any]], Sequence[Any]]


class Overloaded(ZerostartError):
    """The queue is full (HTTP 429)."""


class Stopped(ZerostartError):
    """The batcher is shutting down and takes no new work (HTTP 503)."""


class BatchFailed(ZerostartError):
    """The engine raised on a batch; every job in it gets this error (HTTP 424)."""


def token_count(encoding: Any) -> int:
    """Sequence length of an encoding (``len(enc.ids)``, else ``len(enc)``)."""
    ids = getattr(encoding, "ids", None)
    return len(ids) if ids is not None else len(encoding)


class _Job:
    __slots__ = ("encodings", "future", "next", "outputs", "remaining")

    def __init__(self, encodings: list[Any], future: asyncio.Future[list[Any]]) -> None:
        self.encodings = encodings
        self.future = future
        self.next = 0  # index of the first encoding not yet taken into a batch
        self.outputs: list[Any] = [None] * len(encodings)
        self.remaining = len(encodings)


class Batcher:
    """Owns the worker thread; ``submit`` from the event loop, ``stop`` to drain.

    ``limits``: the server's (``ServerConfig.limits``), the same object the pipeline
    runs with, so a batch formed here is one engine call there.
    """

    def __init__(
        self,
        execute: Execute,
        limits: Limits,
        *,
        max_queue: int,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._execute = execute
        self._max_batch_size = limits.max_batch_sequences
        self._max_batch_tokens = limits.max_batch_tokens
        self._max_queue = max_queue
        self._on_batch = on_batch  # (sequences, tokens, seconds) after each engine call
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting, including one partly batched."""
        return len(self._queue)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="zerostart-batcher", daemon=True)
        self._thread.start()

    def submit(self, encodings: list[Any]) -> asyncio.Future[list[Any]]:
        """Queue one job; its future gets one output per encoding, in order."""
        assert self._loop is not None, "Batcher.start() first"
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not encodings:
            future.set_result([])
            return future
        with self._cond:
            if self._stopping:
                raise Stopped("the server is shutting down")
            if len(self._queue) >= self._max_queue:
                raise Overloaded(
                    f"model is overloaded: {len(self._queue)} requests are already queued"
                )
            self._queue.append(_Job(encodings, future))
            self._cond.notify()
        return future

    @property
    def alive(self) -> bool:
        """The worker thread is running (it exits once stopped and drained)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Refuse new jobs, finish queued ones, join the thread; False if it timed out."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- worker thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping and drained
                batch, tokens = self._take()
            if batch:
                self._run_batch(batch, tokens)

    def _take(self) -> tuple[list[tuple[_Job, int, int]], int]:
        """Slices (job, start, end) for the next engine call, and their tokens.

        The caller holds the lock.
        """
        batch: list[tuple[_Job, int, int]] = []
        sequences = tokens = 0
        while self._queue and sequences < self._max_batch_size:
            job = self._queue[0]
            if job.future.cancelled():
                self._queue.popleft()
                continue
            start = end = job.next
            while end < len(job.encodings) and sequences < self._max_batch_size:
                n = token_count(job.encodings[end])
                if sequences and tokens + n > self._max_batch_tokens:
                    break
                tokens += n
                sequences += 1
                end += 1
            if end == start:
                break  # the token budget is spent
            batch.append((job, start, end))
            job.next = end
            if end < len(job.encodings):
                break  # the rest of this job goes in the next batch
            self._queue.popleft()
        return batch, tokens

    def _run_batch(self, batch: list[tuple[_Job, int, int]], tokens: int) -> None:
        encodings = [e for job, start, end in batch for e in job.encodings[start:end]]
        t0 = time.perf_counter()
        try:
            outputs = list(self._execute(encodings))
            if len(outputs) != len(encodings):
                raise BatchFailed(
                    f"engine returned {len(outputs)} outputs for {len(encodings)} inputs"
                )
        except Exception as exc:  # the engine's failure fails these jobs, not the server
            log.error("engine failed on a batch of %d sequences", len(encodings), exc_info=exc)
            failure = (
                exc
                if isinstance(exc, ZerostartError)
                else BatchFailed(f"inference failed: {exc!r}")
            )
            for job, _, _ in batch:
                self._fail(job, failure)
            return
        elapsed = time.perf_counter() - t0
        if self._on_batch is not None:
            self._on_batch(len(encodings), tokens, elapsed)
        offset = 0
        for job, start, end in batch:
            job.outputs[start:end] = outputs[offset : offset + end - start]
            offset += end - start
            job.remaining -= end - start
            if job.remaining == 0:
                self._resolve(job)

    def _resolve(self, job: _Job) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_set_result, job.future, job.outputs)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        assert self._loop is not None
        with self._cond:
            if job in self._queue:  # partly batched: drop the rest of it
                self._queue.remove(job)
        self._loop.call_soon_threadsafe(_set_exception, job.future, exc)


def _set_result(future: asyncio.Future[list[Any]], value: list[Any]) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[list[Any]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
