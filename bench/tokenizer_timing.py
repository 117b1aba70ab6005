"""The per-text timing the tokenizer benchmarks share: ours against `tokenizers`, interleaved.

``time_cases`` runs, for one pool of texts, every variant once per repeat (so a
change in the shared machine's load hits all of them alike) and keeps each
one's best pass, in µs per text:

* ``ours_single_us`` / ``tokenizers_single_us``: one ``encode`` per text; the
  reference's time includes reading ``.ids`` and ``.offsets`` back into Python,
  which the worker needs;
* ``ours_single_cold_cache_us``: ours after ``clear`` (our per-word caches;
  the reference keeps its own);
* ``ours_batch32_us`` / ``tokenizers_batch32_us``: ``encode_batch`` of 32;
* any ``extra`` variants (e.g. our pure-Python fallback), timed the same way.

Each row also has ``cpu``: the same keys in process CPU time (best pass), the
steadier figure on a shared, loaded machine (time spent waiting for a core is
not counted; the reference's thread pool in batches is, as its CPU time).

Both sides must give the same ids, or the timing means nothing: checked first.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

BATCH_SIZE = 32


def _encode_all(ours: Any, pool: list[str], ml: int | None) -> None:
    for t in pool:
        ours.encode(t, max_length=ml)


def time_cases(
    ours: Any,
    ref: Any,
    cases: list[tuple[str, list[str], int | None]],
    repeats: int,
    *,
    clear: Callable[[], object],
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per (name, texts, max_length) case; see the module docstring."""
    rows = []
    for name, pool, ml in cases:
        if ml is None:
            ref.no_truncation()
        else:
            ref.enable_truncation(max_length=ml, strategy="longest_first")
        for t in pool:
            assert ours.encode(t, max_length=ml).ids == ref.encode(t).ids, t
            for other in (extra or {}).values():
                assert other.encode(t, max_length=ml).ids == ref.encode(t).ids, t

        def cold(pool: list[str] = pool, ml: int | None = ml) -> None:
            clear()
            _encode_all(ours, pool, ml)

        def ref_single(pool: list[str] = pool) -> None:
            for t in pool:
                e = ref.encode(t)
                e.ids, e.offsets  # noqa: B018

        def ours_batch(pool: list[str] = pool, ml: int | None = ml) -> None:
            for k in range(0, len(pool), BATCH_SIZE):
                ours.encode_batch(pool[k : k + BATCH_SIZE], max_length=ml)

        def ref_batch(pool: list[str] = pool) -> None:
            for k in range(0, len(pool), BATCH_SIZE):
                for e in ref.encode_batch(pool[k : k + BATCH_SIZE]):
                    e.ids, e.offsets  # noqa: B018

        fns: dict[str, Callable[[], object]] = {
            "ours_single_us": functools.partial(_encode_all, ours, pool, ml),
            "ours_single_cold_cache_us": cold,
            "tokenizers_single_us": ref_single,
            "ours_batch32_us": ours_batch,
            "tokenizers_batch32_us": ref_batch,
        }
        for key, other in (extra or {}).items():
            fns[key] = functools.partial(_encode_all, other, pool, ml)
        best = dict.fromkeys(fns, float("inf"))
        best_cpu = dict.fromkeys(fns, float("inf"))
        for _ in range(repeats):
            for key, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
                best_cpu[key] = min(best_cpu[key], time.process_time() - c0)
        tokens = statistics.mean(len(ours.encode(t, max_length=ml)) for t in pool)
        n = len(pool)
        rows.append(
            {
                "case": name,
                "tokens_mean": tokens,
                **{k: v / n * 1e6 for k, v in best.items()},
                "cpu": {k: v / n * 1e6 for k, v in best_cpu.items()},
            }
        )
    return rows


COLUMNS = [
    ("ours_single_us", "ours"),
    ("ours_single_cold_cache_us", "ours cold"),
    ("tokenizers_single_us", "tokenizers"),
    ("ours_batch32_us", "ours b32"),
    ("tokenizers_batch32_us", "tok b32"),
]


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The rows as two tables, wall and CPU time (extra columns after the standard ones)."""
    cols = COLUMNS + [
        (k, k.removeprefix("ours_").removesuffix("_single_us").split("_")[0])
        for k in rows[0]
        if k.endswith("_us") and k not in dict(COLUMNS)
    ]
    for title, cpu in (("wall", False), ("CPU", True)):
        print(f"{'µs per text, ' + title:<34}{'tokens':>7}" + "".join(f"{h:>12}" for _, h in cols))
        for row in rows:
            values = row["cpu"] if cpu else row
            print(
                f"{row['case']:<34}{row['tokens_mean']:7.0f}"
                + "".join(f"{values[k]:12.1f}" for k, _ in cols)
            )
