"""Warm speed of a ModernBERT-base shape: zerostart fp32 / int8 vs ONNX Runtime fp32 / int8 vs PyTorch fp32.

``bench/warm.py --models modernbert-base-random`` runs this (or run it alone).
The model is ModernBERT-base's shape (22 layers x 768, 12 heads, GeGLU FFN
1,152, vocabulary 50,368, a 128-token window in two of every three layers)
with seeded random weights and a two-label sequence-classification head
(``classifier_pooling: mean``, as the released config): speed only. Same
token ids, same machine, same run, same thread count, engines interleaved
call by call (``warm.interleaved``).

Engines:
* ``zerostart_fp32_serving``: the worker's numpy-free engine
  (``ModernBertNativeEngine``) on the bundle's best kernel build;
* ``zerostart_int8_serving``: the same engine on the int8 bundle (``convert
  --precision int8``: the four matrices of each layer packed), where this CPU
  has int8 products (AVX-512 VNNI or AVX2);
* ``zerostart_fp32_all_global`` (1,024 tokens only): the same weights with every
  layer global, to show what the sliding window saves at long sequences;
* ``pytorch_fp32``: transformers with its default attention (SDPA), fp32 (b1x128 only);
* ``onnxruntime_fp32``: exported by torch from the same model (eager attention,
  one static shape per point: the export bakes the mask's shapes), fp32;
  ``onnxruntime_int8``: that export through ``quantize_dynamic`` (QInt8 weights,
  per channel), as ``bench/warm.py`` does for BERT.

Accuracy: max |logit difference| against PyTorch fp32 for each engine.

    python bench/warm_modernbert.py [--threads N] [--iters 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import BUNDLES, write_result
from zerostart.benchmark import machine_description
from zerostart.engine.native import cpu_flags

NAME = "modernbert-base-random"
# (label, batch, tokens, timed rounds, with PyTorch): the long points are one sequence past the
# window. PyTorch runs at b1x128 only: on the shared, loaded 2-core machine of this session
# (load average 10-15) it took 5x ONNX Runtime's time there, so a b32x128 call would have
# taken over ten minutes (its threads spin-wait against the other work).
SHAPES = (
    ("latency_b1x128", 1, 128, 5, True),
    ("throughput_b32x128", 32, 128, 1, False),
    ("long_b1x1024", 1, 1024, 2, False),
    ("long_b1x4096", 1, 4096, 1, False),  # where the window's saving grows: 1/3 of layers global
)
# From here on, ours only (window against all-global, fp32 and int8): exporting the model to
# ONNX with eager attention at 4,096 tokens (and the eager reference) took the 24 GB machine
# out of memory; the other points check our answers against PyTorch.
OURS_ONLY_FROM = 4096
WARMUPS = 0  # extra calls before the timed rounds: the accuracy pass already warmed each engine
CLS_ID, SEP_ID = 50281, 50282  # ModernBERT-base's [CLS] / [SEP]
ANCHOR = "onnxruntime_fp32"


def source_folder() -> Path:
    """The random-weight ModernBERT-base folder (built once, kept under .cache/bench-bundles)."""
    out = BUNDLES / f"{NAME}-src"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    torch.manual_seed(0)
    cfg = ModernBertConfig(num_labels=2, classifier_pooling="mean")  # ModernBERT-base's shape
    model = ModernBertForSequenceClassification(cfg).eval()
    BUNDLES.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=BUNDLES))
    model.save_pretrained(tmp)
    (tmp / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(cfg.vocab_size)))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _onnx(model: Any, batch: int, tokens: int) -> Path:
    import torch

    path = BUNDLES / f"{NAME}.b{batch}x{tokens}.onnx"
    if not path.exists():
        ids = torch.full((batch, tokens), 100, dtype=torch.long)
        tmp = path.with_suffix(".tmp")
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
        tmp.rename(path)
    return path


def _onnx_int8(fp32: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = fp32.with_suffix(".int8.onnx")
    if not path.exists():
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True)
    return path


def bench(
    iters_scale: float,
    threads: int,
    only: tuple[str, ...] = (),
    on_shape: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch
    from transformers import ModernBertForSequenceClassification

    from zerostart.bundle.folder import Bundle
    from zerostart.engine.modernbert_native import ModernBertNativeEngine
    from zerostart.errors import ConvertError, EngineError

    torch.set_num_threads(threads)
    from warm import _bundle, interleaved  # bundles cached by kernel source digest

    src = source_folder()
    bundle = Bundle.open(_bundle(NAME, src, "fp32"))
    ours = ModernBertNativeEngine.from_bundle(bundle, threads=threads)
    ours8: Any = None
    try:
        ours8 = ModernBertNativeEngine.from_bundle(
            Bundle.open(_bundle(NAME, src, "int8", precision="int8")), threads=threads
        )
    except (EngineError, ConvertError) as exc:
        print(f"zerostart int8 not run: {exc}")
    m = bundle.manifest
    all_global = ModernBertNativeEngine(
        m._replace(config=m.config._replace(global_every=1)),
        bundle.weights,
        ours.kernels,
        threads=threads,
    )
    eager = ModernBertForSequenceClassification.from_pretrained(
        src, attn_implementation="eager"
    ).eval()
    default = ModernBertForSequenceClassification.from_pretrained(src).eval()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # ONNX Runtime's pool threads spin after each run by default: interleaved with our
    # engine, they held a core while ours ran (MiniLM b1, 2 threads: ours 79 ms instead of
    # ~30) and their spinning was counted in the next call's process CPU time. A server
    # that waits between requests does not spin either.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    row: dict[str, Any] = {
        "threads": threads,
        "zerostart_kernel_build": ours.kernels.arch,
        "pytorch_attention": default.config._attn_implementation,
    }
    rng = np.random.default_rng(0)
    for label, batch, tokens, rounds, with_torch in SHAPES:
        if only and label not in only:
            continue
        ids = rng.integers(1000, 50000, size=(batch, tokens), dtype=np.int64)
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        mask = np.ones_like(ids)
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        ours_only = tokens >= OURS_ONLY_FROM
        if not ours_only:
            fp32_onnx = _onnx(eager, batch, tokens)
            sess = ort.InferenceSession(str(fp32_onnx), so, providers=["CPUExecutionProvider"])
            sess8 = ort.InferenceSession(
                str(_onnx_int8(fp32_onnx)), so, providers=["CPUExecutionProvider"]
            )
        from array import array

        flat, lengths = array("q", ids.reshape(-1).tolist()), [tokens] * batch

        def torch_fp32() -> Any:
            with torch.inference_mode():
                return default(input_ids=t_ids, attention_mask=t_mask).logits.numpy()

        fns: dict[str, Callable[[], object]] = {
            "zerostart_fp32_serving": lambda e=ours: np.frombuffer(
                e.run(flat, None, lengths, tokens), np.float32
            ).reshape(batch, -1),
        }
        if not ours_only:
            fns["onnxruntime_fp32"] = lambda: sess.run(
                None, {"input_ids": ids, "attention_mask": mask}
            )[0]
            fns["onnxruntime_int8"] = lambda: sess8.run(
                None, {"input_ids": ids, "attention_mask": mask}
            )[0]
        if ours8 is not None:
            fns["zerostart_int8_serving"] = lambda e=ours8: np.frombuffer(
                e.run(flat, None, lengths, tokens), np.float32
            ).reshape(batch, -1)
        if with_torch:
            fns["pytorch_fp32"] = torch_fp32
        if tokens > 2 * m.config.local_window + 1:
            fns["zerostart_fp32_all_global"] = lambda e=all_global: np.frombuffer(
                e.run(flat, None, lengths, tokens), np.float32
            ).reshape(batch, -1)
        diffs: dict[str, float] = {}
        if not ours_only:
            with torch.inference_mode():
                ref = eager(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
            diffs = {
                k: float(np.abs(np.asarray(fn(), np.float32) - ref).max()) for k, fn in fns.items()
            }
        load_before = list(os.getloadavg())
        timings = interleaved(fns, max(1, round(rounds * iters_scale)), WARMUPS)
        t = {k: v["median_s"] for k, v in timings.items()}
        c = {k: v["cpu_median_s"] for k, v in timings.items()}
        anchor = ANCHOR if ANCHOR in t else "zerostart_fp32_all_global"
        row[label] = {
            "batch": batch,
            "tokens": tokens,
            "timings": timings,
            "max_abs_diff_vs_pytorch_eager_fp32": diffs,
            "anchor": anchor,
            "anchor_over_engine": {k: t[anchor] / v for k, v in t.items()},
            "anchor_over_engine_cpu": {k: c[anchor] / v for k, v in c.items() if v > 0},
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        }
        print(f"{NAME} {label} (medians; ratio = {anchor} time / this engine's time)")
        for k, v in sorted(t.items(), key=lambda kv: kv[1]):
            print(
                f"  {k:<26} {v * 1e3:9.1f} ms  {t[anchor] / v:5.2f}x  cpu {c[k] * 1e3:9.1f} ms "
                f"{c[anchor] / max(c[k], 1e-9):5.2f}x  max|diff| {diffs.get(k, float('nan')):.1e}"
            )
        if on_shape is not None:
            on_shape(row)  # a long run stopped (or killed) later keeps the points done
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iters-scale", type=float, default=1.0, help="x the rounds per shape")
    ap.add_argument("--out", default="warm_cpu_modernbert", help="result name under bench/results/")
    ap.add_argument("--shapes", default="", help="comma-separated labels (default: all)")
    args = ap.parse_args()
    machine = machine_description()
    machine["cpu_flags"] = sorted(cpu_flags())
    result: dict[str, Any] = {
        "benchmark": "warm_cpu",
        "machine": machine,
        "note": "shared 2-core machine, loaded by other work: see the load averages per shape",
        "method": "engines interleaved call by call; median of the rounds",
        "load_average_before": list(os.getloadavg()),
        "models": {},
    }

    def save(row: dict[str, Any]) -> None:
        result["models"][NAME] = row
        result["load_average_after"] = list(os.getloadavg())
        write_result(args.out, result)

    only = tuple(filter(None, args.shapes.split(",")))
    save(bench(args.iters_scale, args.threads, only, on_shape=save))


if __name__ == "__main__":
    main()
