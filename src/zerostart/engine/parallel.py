"""A few threads for the numpy work that BLAS does not parallelise.

BLAS already spreads each large matrix product over the cores; everything else
(softmax, GELU, layer norm, the per-head attention products) runs in numpy's
single-threaded ufunc loops, about a third of a forward pass at batch 32.
numpy releases the GIL inside those loops and inside BLAS calls, so plain
threads working on disjoint row ranges of the same arrays run in parallel.

The pool is created on first use, not at import or construction, so a worker
that never runs a large batch never starts a thread.

Runtime module: standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # concurrent.futures pulls in queue & co: only load it when threads run
    from concurrent.futures import Future, ThreadPoolExecutor

MAX_THREADS = 8  # beyond this the per-call overhead outweighs the elementwise work we split


def default_threads() -> int:
    """The CPUs this process may run on (cgroup/affinity aware), capped."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, n))


class Workers:
    """Runs ``fn(start, stop)`` over contiguous parts of ``range(n)``, one part per thread."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def run(self, fn: Callable[[int, int], None], n: int, *, min_part: int = 1) -> None:
        """Split ``range(n)`` into at most ``threads`` parts of at least ``min_part`` items.

        The calling thread takes the first part. Returns when every part is done
        (also when one raised: no thread may still write into the caller's arrays).
        """
        parts = max(1, min(self.threads, n // max(1, min_part)))
        if parts == 1:
            fn(0, n)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="zerostart-cpu")
        bounds = [n * i // parts for i in range(parts + 1)]
        futures: list[Future[None]] = [
            self._pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)
        ]
        try:
            fn(bounds[0], bounds[1])
        finally:
            for f in futures:
                f.exception()  # wait, whatever happened here
        for f in futures:
            f.result()  # re-raise a worker's error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
