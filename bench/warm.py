"""Warm speed on CPU: zerostart's numpy engine vs PyTorch (eager, fp32) vs ONNX Runtime.

Same model, same token ids, same machine, same run, same thread count.
Measures the forward pass of already-tokenised inputs (tokenisation is
timed separately in bench/tokenizer_bench.py): latency at batch 1 x 128
tokens and throughput at batch 32 x 128 tokens. The ONNX model is exported
from the same PyTorch model at bench time (never committed).

    python bench/warm.py [--models minilm-sst2,bert-base-random] [--iters 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import BUNDLES, ROOT, bundle_dir, model_dir, write_result
from zerostart.benchmark import machine_description

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ_LEN = 128
SHAPES = (("latency_b1x128", 1), ("throughput_b32x128", 32))


def bert_base_random() -> Path:
    """bert-base shape (12 x 768, FFN 3072) with seeded random weights: speed only."""
    out = ROOT / "models" / "bert-base-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = BertForSequenceClassification(cfg).eval()
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp)
    src = model_dir("minilm-sst2")
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, tmp / f)
    tmp.rename(out)
    return out


def timeit(fn: Callable[[], object], iters: int) -> dict[str, float]:
    fn()
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_model(name: str, src: Path, iters: int, threads: int) -> dict[str, object]:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification

    from zerostart.pipeline import Pipeline

    torch.set_num_threads(threads)
    bundle = bundle_dir(name) if name != "bert-base-random" else _convert(src)
    pipe = Pipeline.load(bundle)
    rng = np.random.default_rng(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, attn_implementation="eager"
    ).eval()
    onnx_path = BUNDLES / f"{name}.onnx"
    if not onnx_path.exists():
        ids = torch.ones(1, 8, dtype=torch.long)
        axes = {k: {0: "b", 1: "t"} for k in ("input_ids", "attention_mask", "token_type_ids")}
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(onnx_path),
            input_names=list(axes),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    row: dict[str, object] = {"threads": threads}
    for label, batch in SHAPES:
        ids = rng.integers(1000, 20000, size=(batch, SEQ_LEN), dtype=np.int64)
        ids[:, 0], ids[:, -1] = pipe.tokenizer.cls_id, pipe.tokenizer.sep_id
        mask = np.ones_like(ids)
        types = np.zeros_like(ids)
        t_ids, t_mask, t_types = (torch.from_numpy(a) for a in (ids, mask, types))
        with torch.inference_mode():
            ref = model(
                input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types
            ).logits.numpy()
        ours = pipe.engine.forward(ids, mask, types)
        diff = float(np.abs(ours - ref).max())

        def run_torch() -> object:
            with torch.inference_mode():
                return model(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types).logits

        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        res = {
            "zerostart_numpy": timeit(lambda: pipe.engine.forward(ids, mask, types), iters),
            "pytorch_eager_fp32": timeit(run_torch, iters),
            "onnxruntime": timeit(lambda: sess.run(None, feeds), iters),
            "max_abs_diff_vs_pytorch": diff,
        }
        z, p, o = (
            res[k]["median_s"] for k in ("zerostart_numpy", "pytorch_eager_fp32", "onnxruntime")
        )  # type: ignore[index]
        res["pytorch_over_zerostart"] = p / z
        res["onnxruntime_over_zerostart"] = o / z
        row[label] = res
        print(
            f"{name:<17} {label:<19} zerostart {z * 1e3:8.2f} ms | PyTorch {p * 1e3:8.2f} ms "
            f"({p / z:4.2f}x) | ONNX Runtime {o * 1e3:8.2f} ms ({o / z:4.2f}x) | max|diff| {diff:.1e}"
        )
    return row


def _convert(src: Path) -> Path:
    from zerostart.model.convert import convert

    out = BUNDLES / "bert-base-random-cpu"
    if not (out / "manifest.json").exists():
        BUNDLES.mkdir(parents=True, exist_ok=True)
        convert(src, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="minilm-sst2,bert-base-random")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    result: dict[str, object] = {
        "benchmark": "warm_cpu",
        "machine": machine_description(),
        "seq_len": SEQ_LEN,
        "models": {},
    }
    for name in args.models.split(","):
        src = bert_base_random() if name == "bert-base-random" else model_dir(name)
        result["models"][name] = bench_model(name, src, args.iters, args.threads)  # type: ignore[index]
    write_result("warm_cpu", result)


if __name__ == "__main__":
    main()
