"""ModernBERT's GPU parity fixture, made on the CPU machine for a lent GPU (issue 23).

``tools/gpu_prep.py --families`` calls ``build`` and ``build_deberta`` (``.gpu/deberta/``,
the same files for DeBERTa); alone (writes both):

    python tools/gpu_prep_modernbert.py [--out .gpu/modernbert] [--arch sm_90]

Writes, for ``tests/gpu/test_gpu_families.py``::

    kernels/                 the Triton kernels (kernels/triton_modernbert.py + BERT's GEMM)
                             compiled ahead of time for --arch and sm_80 PTX; one folder
                             serves every case below (same shape, the mean-pool case's
                             variant set holds the others')
    manifest.<case>.json     the bundle manifest of each case: embeddings, sequence
                             classification (cls and mean pooling), token classification
    weights.npz              fp16 weights of the largest case (the others use a subset)
    reference.npz            per length T in LENGTHS: ids_T, mask_T (2 right-padded rows, one
                             of T tokens, one of ~T/3) and <case>_T, the numpy reference's
                             (engine/modernbert_ref.py) fp32 outputs on the fp16 weights

The shape is ModernBERT's in miniature: head size 64 (as base and large), a
128-token window (64 keys per side), a global layer every third (layers 0 and
3 of 4), positions up to 1,024 so the longest case crosses the window 8 times
over. About 5 MB in all (the carry limit is 64 MiB with the rest of ``.gpu``). No GPU is needed here; the GPU machine needs no Triton.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASES = {  # case -> (task, classifier pooling)
    "embeddings": ("embeddings", "cls"),
    "seqcls_cls": ("sequence-classification", "cls"),
    "seqcls_mean": ("sequence-classification", "mean"),
    "tokcls": ("token-classification", "cls"),
}
LENGTHS = (1, 127, 512, 1024)
SHAPE = {"hidden": 128, "layers": 4, "heads": 2, "ffn": 192, "max_positions": 1024, "vocab": 512}
WINDOW = 64  # local_window: keys per side (ModernBERT's local_attention 128 // 2)


def _log(msg: str) -> None:
    print(f"[gpu_prep_modernbert {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(out: Path, archs: list[str]) -> dict[str, Any]:
    """Write the fixture into ``out``; returns what was made (for prep.json)."""
    for p in (REPO / "src", REPO / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    from interpret_engine import tiny_modernbert
    from zerostart.engine.modernbert_ref import ModernBertReference
    from zerostart.kernels import aot

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(23)
    arrays: dict[str, np.ndarray] = {}
    for t in LENGTHS:
        lens = np.array([t, max(1, t // 3)])
        ids = rng.integers(3, SHAPE["vocab"], (2, t))
        mask = (np.arange(t)[None, :] < lens[:, None]).astype(np.int64)
        arrays[f"ids_{t}"], arrays[f"mask_{t}"] = np.where(mask != 0, ids, 0), mask
    from zerostart.bundle.modernbert_layout import modernbert_shapes

    _, weights = tiny_modernbert("sequence-classification", window=WINDOW, seed=23, **SHAPE)
    for case, (task, pooling) in CASES.items():  # one set of weights; each case reads its part
        manifest, _ = tiny_modernbert(task, pooling=pooling, window=WINDOW, **SHAPE)
        (out / f"manifest.{case}.json").write_text(manifest.to_json(), encoding="utf-8")
        ref = ModernBertReference(manifest, {k: weights[k] for k in modernbert_shapes(manifest)})
        for t in LENGTHS:
            arrays[f"{case}_{t}"] = ref.forward(arrays[f"ids_{t}"], arrays[f"mask_{t}"])
        _log(f"{case}: reference at T = {LENGTHS}")
    t0 = time.perf_counter()
    manifest, _ = tiny_modernbert("sequence-classification", pooling="mean", window=WINDOW, **SHAPE)
    km = aot.compile_for_bundle(manifest, out, archs)
    _log(f"kernels: {len(km['variants'])} variants for {archs} in {time.perf_counter() - t0:.0f} s")
    np.savez(out / "weights.npz", **{k: v.astype(np.float16) for k, v in weights.items()})
    np.savez(out / "reference.npz", **arrays)
    made = {"cases": list(CASES), "lengths": list(LENGTHS), "shape": SHAPE, "window": WINDOW}
    (out / "prep.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def build_deberta(out: Path, archs: list[str]) -> dict[str, Any]:
    """DeBERTa's fixture, same files as ``build`` (cases: embeddings, seqcls, tokcls; T up to 512).

    The tests' tiny DeBERTa (tests/interpret_engine.py ``tiny_deberta``: 2 layers, head
    size 16, 16 log buckets) widened to 4 heads of 32 and 512 positions, so distances up to
    511 go through the log buckets. ~2 MB.
    """

    for p in (REPO / "src", REPO / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    from interpret_engine import tiny_deberta
    from zerostart.engine.deberta import DebertaEngine
    from zerostart.kernels import aot

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20)
    lengths = (1, 127, 512)
    arrays: dict[str, np.ndarray] = {}
    for t in lengths:
        lens = np.array([t, max(1, t // 3)])
        mask = (np.arange(t)[None, :] < lens[:, None]).astype(np.int64)
        arrays[f"ids_{t}"] = rng.integers(3, 50, (2, t)) * mask
        arrays[f"mask_{t}"] = mask
    from zerostart.bundle.deberta_layout import tensor_shapes

    shape = {"hidden": 128, "heads": 4, "max_positions": 512}
    _, weights = tiny_deberta("sequence-classification", seed=20, **shape)
    cases = {"embeddings": "embeddings", "seqcls_cls": "sequence-classification"}
    cases["tokcls"] = "token-classification"
    for case, task in cases.items():  # one set of weights; each case reads its part
        manifest, _ = tiny_deberta(task, **shape)
        (out / f"manifest.{case}.json").write_text(manifest.to_json(), encoding="utf-8")
        ref = DebertaEngine(manifest, {k: weights[k] for k in tensor_shapes(manifest)})
        for t in lengths:
            arrays[f"{case}_{t}"] = ref.forward(arrays[f"ids_{t}"], arrays[f"mask_{t}"])
    manifest, _ = tiny_deberta("sequence-classification", **shape)
    km = aot.compile_for_bundle(manifest, out, archs)
    _log(f"deberta kernels: {len(km['variants'])} variants for {archs}")
    fp16 = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
    np.savez(out / "weights.npz", **fp16)
    np.savez(out / "reference.npz", **arrays)
    made = {
        "cases": list(cases),
        "lengths": list(lengths),
        "config": manifest.config._asdict(),
    }
    (out / "prep.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / ".gpu" / "modernbert"))
    ap.add_argument("--arch", default="sm_90", help="cubin archs, comma-separated")
    args = ap.parse_args(argv)
    archs = [a for a in args.arch.split(",") if a]
    build(Path(args.out), archs)
    build_deberta(Path(args.out).parent / "deberta", archs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
