"""The e5-small SentencePiece Unigram tokenizer: ours (mapped tokenizer.bin) vs `tokenizers`.

Run through ``python bench/tokenizer_bench.py --unigram``. Measures, in one
process and interleaved so that both sides see the same machine load:

* load: ``Tokenizer.from_bundle`` on the compiled tokenizer.bin against
  ``tokenizers.Tokenizer.from_file`` on tokenizer.json (median of 5, wall and
  process CPU time), and the same in a fresh interpreter including imports;
* the first encode after loading (what a cold worker's first request pays);
* µs per text for short / medium / long / multilingual texts, single and in
  batches of 32 (``tokenizer_timing.time_cases``); "cold" clears our per-word
  caches before each pass (the reference keeps its own cache); "python
  fallback" is ours without the native tokenizer.so.

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
sys.path.insert(0, str(REPO / "bench"))

from tokenizer_corpus import COMMON_WORDS, SCRIPTS  # noqa: E402

from tokenizer_timing import print_rows, time_cases  # noqa: E402
from zerostart.tokenize import Tokenizer  # noqa: E402
from zerostart.tokenize.compile import compile_tokenizer_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tokenizer_unigram.json"
RUNS = 5
POOL_TEXTS = 64
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
        if ours.model.native is None:  # type: ignore[attr-defined]
            raise SystemExit("no tokenizer.so was built (is gcc installed?): nothing to compare")
        python = Tokenizer.from_bundle(tmp, spec, native=False)
        ref = tokenizers.Tokenizer.from_file(str(tj))
        rows = _speed(ours, python, ref, repeats)
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


def _clear(tok: Tokenizer) -> None:
    """Our per-word caches: the model's and the Precompiled normaliser's."""
    tok.model.pieces.cache_clear()  # type: ignore[attr-defined]
    for part in getattr(tok._normalizer, "_parts", [tok._normalizer]):
        getattr(part, "_words", {}).clear()


def _speed(ours: Tokenizer, python: Tokenizer, ref: Any, repeats: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    words = list(COMMON_WORDS)
    multi = words + " ".join(SCRIPTS).split() * 3
    cases = [
        ("short (10 words)", _texts(10, rng, words), None),
        ("medium (60 words)", _texts(60, rng, words), None),
        ("long (~800 words, truncate 512)", _texts(800, rng, words), 512),
        ("medium multilingual (60 words)", _texts(60, rng, multi), None),
    ]
    return time_cases(
        ours,
        ref,
        cases,
        repeats,
        clear=lambda: _clear(ours),
        extra={"ours_python_fallback_single_us": python},
    )


def _print(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"{m['cpu']} x{m['cores']}, load {m['loadavg_1_5_15']}, tokenizers {m['tokenizers']}")
    print(
        f"compile {r['compile']['seconds']:.1f} s, tokenizer.bin {r['compile']['tokenizer_bin_bytes'] / 1e6:.1f} MB"
    )
    for k, v in r["load_ms"].items():
        print(f"load {k:<45} {v:9.2f} ms")
    print()
    print_rows(r["speed_us_per_text"])
