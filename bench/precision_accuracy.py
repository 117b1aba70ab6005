"""What int8 and bf16 bundles cost in accuracy: every real model, the whole test corpus.

For each model, the float32 bundle (native kernels) and the int8 / bf16 bundles
run the tokenizer test corpus (tests/unit/tokenizer_corpus.py, 300+ texts:
English, accents, CJK, emoji, long texts, ...) through the pipeline. Reported
per model and precision: max |difference| of the raw outputs (logits, or
token embeddings) against float32; for classifiers the number of texts whose
top label differs; for NER the number of texts whose entity list (group,
start, end) differs; for embeddings the lowest cosine similarity of the
pooled, normalised sentence vectors. Output: bench/results/precision_accuracy.json.

    python bench/precision_accuracy.py [--models ...] [--precisions int8,bfloat16] [--out NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import ROOT, model_dir, write_result
from zerostart.benchmark import machine_description
from zerostart.engine.native import cpu_flags

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from tokenizer_corpus import corpus

MODELS = "minilm-sst2,minilm-multilabel,minilm-embed,rampart-ner,quire-cls,quire-tagger"
PRECISIONS = ("int8", "bfloat16")


def _bundle(name: str, precision: str) -> Path:
    from warm import _bundle as cached  # keyed by the kernels' source digest

    return cached(name, model_dir(name), precision, precision=precision)


def _run(pipe: Any, texts: list[str]) -> tuple[list[np.ndarray], list[Any]]:
    route = {"sequence-classification": "predict", "token-classification": "tokens"}.get(
        pipe.manifest.task, "embed"
    )
    raws, answers = [], []
    for i in range(0, len(texts), 16):
        chunk: list[Any] = texts[i : i + 16]
        if route == "predict":  # a batch of single texts is [["t1"], ["t2"], ...]
            chunk = [[t] for t in chunk]
        job = pipe.prepare(route, {"inputs": chunk, "truncate": True})
        outs = pipe.execute(job.encodings)
        raws += outs
        answers += job.finish(outs)
    return raws, answers


def compare(name: str, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    from zerostart.pipeline import Pipeline

    texts = [t for t in corpus() if t.strip() and len(t) < 8192]  # the limit is 64 chars per token
    base = Pipeline.load(_bundle(name, "float32"))
    raw32, ans32 = _run(base, texts)
    task = base.manifest.task
    row: dict[str, Any] = {"task": task, "texts": len(texts)}
    for precision in precisions:
        try:
            pipe = Pipeline.load(_bundle(name, precision))
        except Exception as exc:  # a CPU without the instructions: say so, measure the rest
            row[precision] = f"not run: {exc}"
            continue
        raw, ans = _run(pipe, texts)
        res: dict[str, Any] = {
            "max_abs_diff_raw": max(
                float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
                for a, b in zip(raw, raw32, strict=True)  # the pipeline's outputs: memoryviews
            )
        }
        if task == "sequence-classification":
            res["top_label_differs"] = sum(
                a[0]["label"] != b[0]["label"] for a, b in zip(ans, ans32, strict=True)
            )
        elif task == "token-classification":
            key = lambda ents: [(e["entity_group"], e["start"], e["end"]) for e in ents]  # noqa: E731
            res["entity_lists_differ"] = sum(
                key(a) != key(b) for a, b in zip(ans, ans32, strict=True)
            )
            res["entities_float32"] = sum(len(b) for b in ans32)
        else:
            cos = [float(np.dot(a, b)) for a, b in zip(ans, ans32, strict=True)]  # normalised
            res["min_cosine_vs_float32"] = min(cos)
        row[precision] = res
        print(name, precision, res)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--out", default="precision_accuracy", help="result name under bench/results/")
    args = ap.parse_args()
    precisions = tuple(args.precisions.split(","))
    result = {
        "benchmark": "precision_accuracy",
        "machine": {**machine_description(), "cpu_flags": sorted(cpu_flags())},
        "models": {name: compare(name, precisions) for name in args.models.split(",")},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
