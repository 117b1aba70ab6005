"""The e5-small SentencePiece Unigram tokenizer: ours (mapped tokenizer.bin) vs `tokenizers`.

Run through ``python bench/tokenizer_bench.py --unigram``. Measures, in one
process and interleaved so that both sides see the same machine load:

* load: ``Tokenizer.from_bundle`` on the compiled tokenizer.bin against
  ``tokenizers.Tokenizer.from_file`` on tokenizer.json (median of 5, wall and
  process CPU time), and the same in a fresh interpreter including imports;
* the first encode after loading (what a cold worker's first request pays);
* µs per text for short / medium / long / multilingual texts, single and in
  batches of 32; "cold" clears our per-word and per-character caches before
  each pass (the reference keeps its own cache).

Writes bench/results/tokenizer_unigram.json.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from tokenizer_corpus import COMMON_WORDS, SCRIPTS  # noqa: E402

from zerostart.tokenize import Tokenizer  # noqa: E402
from zerostart.tokenize.compile import compile_tokenizer_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tokenizer_unigram.json"
RUNS = 5
POOL_TEXTS = 64
BATCH = 32
SPECIALS = {"unk_token": "<unk>", "pad_token": "<pad>"}


def _median_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) medians in ms."""
    wall, cpu = [], []
    for _ in range(RUNS):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def _fresh_ms(code: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    times = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def run_unigram(repeats: int) -> None:
    import tokenizers

    from zerostart.benchmark import machine_description

    tj = REPO / "models" / "e5-small" / "tokenizer.json"
    if not tj.is_file():
        raise SystemExit("models/e5-small is missing: python tools/make_models.py --only e5-small")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        spec = compile_tokenizer_json(tj, tmp, special_tokens=SPECIALS).spec
        compile_s = time.perf_counter() - t0
        size = (Path(tmp) / "tokenizer.bin").stat().st_size
        ours_wall, ours_cpu = _median_ms(lambda: Tokenizer.from_bundle(tmp, spec))
        ref_wall, ref_cpu = _median_ms(lambda: tokenizers.Tokenizer.from_file(str(tj)))
        spec_json = json.dumps(json.dumps(spec))
        ours_fresh = _fresh_ms(
            "import time; t0 = time.perf_counter(); import json; "
            "from zerostart.tokenize import Tokenizer; "
            f"t = Tokenizer.from_bundle({tmp!r}, json.loads({spec_json})); "
            "print((time.perf_counter() - t0) * 1e3)"
        )
        ref_fresh = _fresh_ms(
            "import time; t0 = time.perf_counter(); import tokenizers; "
            f"tokenizers.Tokenizer.from_file({str(tj)!r}); print((time.perf_counter() - t0) * 1e3)"
        )
        first = _fresh_ms(
            "import json, time; from zerostart.tokenize import Tokenizer; "
            f"t = Tokenizer.from_bundle({tmp!r}, json.loads({spec_json})); "
            "t0 = time.perf_counter(); t.encode('query: Привет, how are you? 東京 café'); "
            "print((time.perf_counter() - t0) * 1e3)"
        )
        ours = Tokenizer.from_bundle(tmp, spec)
        ref = tokenizers.Tokenizer.from_file(str(tj))
        rows = _speed(ours, ref, repeats)
    result = {
        "machine": {
            **machine_description(),
            "tokenizers": tokenizers.__version__,
            "loadavg_1_5_15": os.getloadavg(),
        },
        "tokenizer": "multilingual-e5-small (Unigram, 250,002 pieces, nmt_nfkc Precompiled)",
        "compile": {"seconds": compile_s, "tokenizer_bin_bytes": size},
        "load_ms": {
            "ours_from_bundle_wall": ours_wall,
            "ours_from_bundle_cpu": ours_cpu,
            "tokenizers_from_file_wall": ref_wall,
            "tokenizers_from_file_cpu": ref_cpu,
            "ours_fresh_process_import_and_load": ours_fresh,
            "tokenizers_fresh_process_import_and_load": ref_fresh,
            "ours_first_encode_after_load": first,
        },
        "speed_us_per_text": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print(result)
    print(f"\nwrote {RESULTS}")


def _texts(n_words: int, rng: random.Random, words: list[str]) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(n_words)) for _ in range(POOL_TEXTS)]


def _best_us(fn: Callable[[], object], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def _speed(ours: Tokenizer, ref: Any, repeats: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    words = list(COMMON_WORDS)
    multi = words + " ".join(SCRIPTS).split() * 3
    cases = [
        ("short (10 words)", _texts(10, rng, words), None),
        ("medium (60 words)", _texts(60, rng, words), None),
        ("long (~800 words, truncate 512)", _texts(800, rng, words), 512),
        ("medium multilingual (60 words)", _texts(60, rng, multi), None),
    ]
    rows = []
    for name, pool, ml in cases:
        if ml is None:
            ref.no_truncation()
        else:
            ref.enable_truncation(max_length=ml, strategy="longest_first")
        for t in pool:  # the same answer, or the timing means nothing
            assert ours.encode(t, max_length=ml).ids == ref.encode(t).ids

        def o(pool: list[str] = pool, ml: int | None = ml) -> None:
            for t in pool:
                ours.encode(t, max_length=ml)

        def o_cold(pool: list[str] = pool, ml: int | None = ml) -> None:
            ours.model.pieces.cache_clear()  # type: ignore[attr-defined]
            for t in pool:
                ours.encode(t, max_length=ml)

        def r(pool: list[str] = pool) -> None:
            for t in pool:
                e = ref.encode(t)
                e.ids, e.offsets  # noqa: B018

        def o_b(pool: list[str] = pool, ml: int | None = ml) -> None:
            for k in range(0, len(pool), BATCH):
                ours.encode_batch(pool[k : k + BATCH], max_length=ml)

        def r_b(pool: list[str] = pool) -> None:
            for k in range(0, len(pool), BATCH):
                for e in ref.encode_batch(pool[k : k + BATCH]):
                    e.ids, e.offsets  # noqa: B018

        n = len(pool)
        # Interleaved: each repeat runs every variant once, so load changes hit all of them.
        best = {
            "ours": 1e18,
            "ours_cold": 1e18,
            "tokenizers": 1e18,
            "ours_b32": 1e18,
            "tok_b32": 1e18,
        }
        for _ in range(repeats):
            for key, fn in (
                ("ours", o),
                ("ours_cold", o_cold),
                ("tokenizers", r),
                ("ours_b32", o_b),
                ("tok_b32", r_b),
            ):
                best[key] = min(best[key], _best_us(fn, n, 1))
        rows.append(
            {
                "case": name,
                "tokens_mean": statistics.mean(len(ours.encode(t, max_length=ml)) for t in pool),
                "ours_single_us": best["ours"],
                "ours_single_cold_cache_us": best["ours_cold"],
                "tokenizers_single_us": best["tokenizers"],
                "ours_batch32_us": best["ours_b32"],
                "tokenizers_batch32_us": best["tok_b32"],
            }
        )
    return rows


def _print(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"{m['cpu']} x{m['cores']}, load {m['loadavg_1_5_15']}, tokenizers {m['tokenizers']}")
    print(
        f"compile {r['compile']['seconds']:.1f} s, tokenizer.bin {r['compile']['tokenizer_bin_bytes'] / 1e6:.1f} MB"
    )
    for k, v in r["load_ms"].items():
        print(f"load {k:<45} {v:9.2f} ms")
    cols = [
        ("ours_single_us", "ours"),
        ("ours_single_cold_cache_us", "ours cold"),
        ("tokenizers_single_us", "tokenizers"),
        ("ours_batch32_us", "ours b32"),
        ("tokenizers_batch32_us", "tok b32"),
    ]
    print(f"\n{'µs per text':<34}{'tokens':>7}" + "".join(f"{h:>12}" for _, h in cols))
    for row in r["speed_us_per_text"]:
        print(
            f"{row['case']:<34}{row['tokens_mean']:7.0f}"
            + "".join(f"{row[k]:12.1f}" for k, _ in cols)
        )
