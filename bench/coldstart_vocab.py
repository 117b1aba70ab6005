"""Cold start of an XLM-R-base bundle against a BERT-base bundle of the same shape.

Issue 20 asks that a 250,002-piece model start like a BERT one: exec -> first
answer within 30 ms of a BERT-base bundle of the same size, because the
SentencePiece vocabulary comes mapped (tokenizer.bin, ``tokenizer.so``) and the
250,002 x 768 embedding table (733 MiB of float32) is mapped, not read. Both
models have seeded random weights (bench/warm.py ``bert_base_random`` with
MiniLM's WordPiece vocab.txt; ``xlmr_base_random`` with multilingual-e5-small's
real XLM-R tokenizer), are converted once into .cache/bench-bundles, and are
started interleaved (run i of both before run i+1 of either) with the page
cache warm, then, as root, with it dropped before every start. Median of
--runs; CPU time, peak RSS and the worker's own start-up phases (``/info``)
beside the wall time; the bundle's size on disk.

    python bench/coldstart_vocab.py [--runs 7] [--no-cold-cache]

Writes bench/results/coldstart_xlmr_vs_bert.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from coldstart import measure, reference_check
from common import write_result
from warm import _bundle, bert_base_random, xlmr_base_random
from zerostart.benchmark import machine_description, sample_request, worker_command

TARGET_GAP_S = 0.030  # issue 20, Must-have 6


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-cold-cache", action="store_true", help="skip the dropped-cache runs")
    ap.add_argument("--out", default="coldstart_xlmr_vs_bert")
    args = ap.parse_args()
    bundles = {
        "bert_base": _bundle("bert-base-random", bert_base_random(), "fp32"),
        "xlmr_base": _bundle("xlmr-base-random", xlmr_base_random(), "fp32"),
    }
    path, body, _ = sample_request("text-classification")
    checks = {k: reference_check(b, path, body) for k, b in bundles.items()}
    gc.collect()  # no mapping of a bundle may outlive its check: it would pin its pages
    stacks = {k: (lambda p, b=b: worker_command(b, p), True) for k, b in bundles.items()}

    def check(answer: object) -> bool:
        """One of the two models' own answer (``measure`` takes one check for all stacks)."""
        return any(c(answer) for c in checks.values())

    result: dict[str, object] = {
        "benchmark": "coldstart_xlmr_vs_bert",
        "machine": machine_description(),
        "runs": args.runs,
        "request": {"path": path, "body": body},
        "target_gap_s": TARGET_GAP_S,
        "bundle_mib": {k: _size_mib(b) for k, b in bundles.items()},
    }
    for cache in ("warm", "cold"):
        if cache == "cold" and args.no_cold_cache:
            continue
        got = measure(stacks, path, body, check, args.runs, cache == "cold")
        if got is None:
            print("cannot drop the page cache (not root?): cold-cache runs skipped")
            continue
        gap = got["xlmr_base"]["median_s"] - got["bert_base"]["median_s"]
        cpu_gap = got["xlmr_base"]["cpu_median_s"] - got["bert_base"]["cpu_median_s"]
        result[f"page_cache_{cache}"] = {**got, "gap_s": gap, "cpu_gap_s": cpu_gap}
        print(f"page cache {cache}:")
        for k, row in got.items():
            print(
                f"  {k:<10} {row['median_s'] * 1e3:7.1f} ms (CPU {row['cpu_median_s'] * 1e3:.0f} ms, "
                f"RSS {row['peak_rss_mib']:.0f} MiB)"
            )
            for phase, v in row.get("phases_s", {}).items():
                print(f"      {phase:<12} {v * 1e3:8.1f} ms")
        print(f"  XLM-R - BERT: {gap * 1e3:+.1f} ms wall, {cpu_gap * 1e3:+.1f} ms CPU "
              f"(target within {TARGET_GAP_S * 1e3:.0f} ms)")  # fmt: skip
    result["load_average_after"] = list(os.getloadavg())
    write_result(args.out, result)


if __name__ == "__main__":
    main()
