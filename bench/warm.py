"""Warm speed on CPU: zerostart (fp32 / int8 / bf16) vs PyTorch (fp32 / bf16) vs ONNX Runtime (fp32 / int8).

Same model, same token ids, same machine, same run, same thread count, and
the engines *interleaved*: every round times one call of each, so a burst of
load from other work on the machine hits all of them alike. Measures the
forward pass of already-tokenised inputs (tokenisation is timed separately in
bench/tokenizer_bench.py): latency at batch 1 x 128 tokens and throughput at
batch 32 x 128 tokens.

Engines:
* zerostart fp32 on its native kernels (the default bundle), and on the numpy
  kernels (``--cpu-arch none``), to show what the kernels bring; ``*_serving``
  is the worker's own numpy-free engine (``NativeCpuEngine``) on the same
  bundle, beside ``CpuEngine``'s native path (what the worker served before);
* zerostart int8 / bf16 (``--precision``), where this CPU has VNNI / AVX-512 BF16;
* PyTorch eager fp32, and bf16 under ``torch.autocast("cpu")`` (oneDNN: AMX
  where the CPU has it, AVX-512 BF16 otherwise);
* ONNX Runtime fp32, and int8 from its own ``quantize_dynamic`` (QInt8
  weights, per-channel). The ONNX models are exported from the same PyTorch
  model at bench time (never committed).

Accuracy: max |logit difference| against PyTorch fp32 for each engine.

    python bench/warm.py [--models minilm-sst2,bert-base-random] [--iters 20] [--threads N]

``--models modernbert-base-random`` times ModernBERT-base's shape (bench/warm_modernbert.py).
"""

from __future__ import annotations

import os
import sys

# BLAS reads its thread count once, when numpy loads: set it before that, from --threads.
if "--threads" in sys.argv:
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import BUNDLES, ROOT, model_dir, write_result
from zerostart.benchmark import machine_description
from zerostart.engine.native import cpu_flags

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ_LEN = 128
SHAPES = (("latency_b1x128", 1), ("throughput_b32x128", 32))
ANCHOR = "onnxruntime_fp32"


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
    src = model_dir("minilm-sst2")
    names = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return _save_random(model, out, lambda tmp: _copy_present(src, tmp, names))


def deberta_v3_base_random() -> Path:
    """deberta-v3-base shape (12 x 768, FFN 3072, 128,100 pieces, 256 position buckets,
    shared keys, no absolute positions) with seeded random weights: speed only. Kept under
    .cache/ (not models/: nothing here is a model anyone trained)."""
    out = ROOT / ".cache" / "bench-models" / "deberta-v3-base-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
        layer_norm_eps=1e-7, max_relative_positions=-1, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    model = DebertaV2ForSequenceClassification(cfg).eval()
    vocab = "".join(f"t{i}\n" for i in range(cfg.vocab_size))
    return _save_random(model, out, lambda tmp: (tmp / "vocab.txt").write_text(vocab))


def xlmr_base_random() -> Path:
    """xlm-roberta-base shape (12 x 768, FFN 3072, 250,002 pieces, 514 positions from
    padding_idx + 1) with seeded random weights and the real XLM-R SentencePiece tokenizer
    (multilingual-e5-small's, models/e5-small): speed and cold start only. Kept under .cache/."""
    out = ROOT / ".cache" / "bench-models" / "xlmr-base-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )  # fmt: skip
    model = XLMRobertaForSequenceClassification(cfg).eval()
    src = model_dir("e5-small")
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "sentencepiece.bpe.model")  # fmt: skip
    return _save_random(model, out, lambda tmp: _copy_present(src, tmp, names))


def _copy_present(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    for f in names:
        if (src / f).exists():
            shutil.copy(src / f, dst / f)


def _save_random(model: Any, out: Path, tokenizer: Callable[[Path], object]) -> Path:
    """``model.save_pretrained`` and ``tokenizer(folder)`` into a temporary folder, renamed to
    ``out`` when complete (an interrupted build leaves no half folder to be taken as done)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer(tmp)
    tmp.rename(out)
    return out


MODEL_FOLDERS: dict[str, Callable[[], Path]] = {
    "bert-base-random": bert_base_random,
    "xlmr-base-random": xlmr_base_random,
    "deberta-v3-base-random": deberta_v3_base_random,
}


def interleaved(
    fns: dict[str, Callable[[], object]], iters: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """``warmup`` untimed calls each, then ``iters`` rounds of one timed call of every engine.

    Also the process's CPU seconds per call (``cpu_median_s``): with one thread per engine
    (``--threads 1``) that is the engine's own work, much less disturbed than wall time
    when other work shares the cores; with more threads it adds up every thread's time."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        k: {
            "median_s": statistics.median(v),
            "min_s": min(v),
            "max_s": max(v),
            "cpu_median_s": statistics.median(cpu[k]),
        }
        for k, v in times.items()
    }


def _kernel_sources_digest() -> str:
    """A short digest of the CPU kernels' C sources: a cached bundle holds compiled kernels,
    so one converted before a kernel change must not be timed as if it were current."""
    from zerostart.kernels.cpu_build import sources_digest

    return sources_digest().hexdigest()[:10]


def _bundle(name: str, src: Path, tag: str, **kwargs: Any) -> Path:
    from zerostart.model.convert import convert

    out = BUNDLES / f"{name}-cpu-{tag}-{_kernel_sources_digest()}"
    if not (out / "manifest.json").exists():
        BUNDLES.mkdir(parents=True, exist_ok=True)
        convert(src, out, **kwargs)
    return out


class _Serving:
    """``NativeCpuEngine`` (the worker's engine) behind ``forward(ids, mask, types)``.

    The flat ``array`` inputs are built once per batch shape, outside the timing, as
    the numpy arrays of the other engines are.
    """

    def __init__(self, engine: Any) -> None:
        self.engine, self.kernels = engine, engine.kernels
        self._inputs: dict[tuple[int, int], Any] = {}

    def forward(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        from array import array

        b, t = ids.shape
        if (b, t) not in self._inputs:
            lengths = [int(n) for n in mask.sum(axis=1)]
            flat = array("q", ids.reshape(-1).tolist()), array("q", types.reshape(-1).tolist())
            self._inputs[(b, t)] = (*flat, lengths)
        a_ids, a_types, lengths = self._inputs[(b, t)]
        out = self.engine.run(a_ids, a_types, lengths, t)
        return np.frombuffer(out, np.float32).reshape(b, -1)


def _zerostart_engines(name: str, src: Path, threads: int) -> dict[str, Any]:
    """Our engines this CPU can run, by label; a precision it lacks is reported, not run."""
    from zerostart.bundle.folder import Bundle
    from zerostart.engine.cpu import CpuEngine
    from zerostart.engine.cpu_native import NativeCpuEngine
    from zerostart.errors import ConvertError, EngineError

    engines: dict[str, Any] = {}
    if name.startswith("deberta"):  # the serving engine only: fp32, native kernels
        from zerostart.engine.deberta_native import NativeDebertaEngine

        for label, tag, kwargs in (
            ("zerostart_fp32_serving", "fp32", {}),
            ("zerostart_int8_serving", "int8", {"precision": "int8"}),
        ):
            try:
                bundle = Bundle.open(_bundle(name, src, tag, **kwargs))
                engines[label] = _Serving(NativeDebertaEngine.from_bundle(bundle, threads=threads))
            except (EngineError, ConvertError) as exc:
                engines[label] = f"not run: {exc}"
        return engines
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("zerostart_fp32", "fp32", {}),
        ("zerostart_numpy_fp32", "numpy", {"cpu_archs": ["none"]}),
        ("zerostart_int8", "int8", {"precision": "int8"}),
        ("zerostart_bf16", "bf16", {"precision": "bfloat16"}),
    ]
    for label, tag, kwargs in variants:
        try:
            bundle = Bundle.open(_bundle(name, src, tag, **kwargs))
            # The numpy-kernel engine: BLAS has the threads (OPENBLAS_NUM_THREADS), the rest
            # one, as the worker runs it; native bundles: the products are ours, so are the threads.
            ours = 1 if tag == "numpy" else threads
            engines[label] = CpuEngine.from_bundle(bundle, threads=ours)
            if tag != "numpy":
                serving = NativeCpuEngine.from_bundle(bundle, threads=threads)
                engines[label + "_serving"] = _Serving(serving)
        except (EngineError, ConvertError) as exc:
            engines[label] = f"not run: {exc}"
    return engines


def _onnx(name: str, model: Any) -> tuple[Path, Path]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = BUNDLES / f"{name}.onnx"
    int8 = BUNDLES / f"{name}.int8.onnx"
    if not fp32.exists():
        ids = torch.ones(1, 8, dtype=torch.long)
        axes = {k: {0: "b", 1: "t"} for k in ("input_ids", "attention_mask", "token_type_ids")}
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(fp32),
            input_names=list(axes),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if not int8.exists():
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return fp32, int8


def bench_model(
    name: str,
    src: Path,
    iters: int,
    threads: int,
    shapes: tuple[tuple[str, int], ...] = SHAPES,
    warmup: int = 2,
    skip: frozenset[str] = frozenset(),
) -> dict[str, object]:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    ours = _zerostart_engines(name, src, threads)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, attn_implementation="eager"
    ).eval()
    onnx_fp32, onnx_int8 = _onnx(name, model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # ONNX Runtime's pool threads spin after each run by default: interleaved with our
    # engine, they held a core while ours ran (MiniLM b1, 2 threads: ours 79 ms instead of
    # ~30) and their spinning was counted in the next call's process CPU time. A server
    # that waits between requests does not spin either.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        "onnxruntime_fp32": ort.InferenceSession(
            str(onnx_fp32), so, providers=["CPUExecutionProvider"]
        ),
        "onnxruntime_int8": ort.InferenceSession(
            str(onnx_int8), so, providers=["CPUExecutionProvider"]
        ),
    }
    row: dict[str, object] = {
        "threads": threads,
        "zerostart_kernel_build": {
            k: e.kernels.arch if not isinstance(e, str) and e.kernels else None
            for k, e in ours.items()
        },
        "not_run": {k: e for k, e in ours.items() if isinstance(e, str)},
    }
    rng = np.random.default_rng(0)
    for label, batch in shapes:
        ids = rng.integers(1000, 20000, size=(batch, SEQ_LEN), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        types = np.zeros_like(ids)
        t_ids, t_mask, t_types = (torch.from_numpy(a) for a in (ids, mask, types))
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        # an input the model ignores (DeBERTa-v3's token types) is not in the exported graph
        wanted = {i.name for i in sessions["onnxruntime_fp32"].get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}

        def run_torch(bf16: bool = False) -> Any:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types).logits

        fns: dict[str, Callable[[], Any]] = {}
        for k, e in ours.items():
            if not isinstance(e, str):
                fns[k] = lambda e=e: e.forward(ids, mask, types)
        fns["pytorch_fp32"] = run_torch
        # DeBERTa: no PyTorch bf16 row (our DeBERTa bundles are fp32 or int8; on a loaded
        # 2-core box that row would lengthen the run for nothing to compare against)
        deberta = name.startswith("deberta")
        if not deberta:
            fns["pytorch_bf16"] = lambda: run_torch(bf16=True)
        for k, sess in sessions.items():
            fns[k] = lambda sess=sess: sess.run(None, feeds)[0]
        ref = run_torch().float().numpy()
        fns = {k: fn for k, fn in fns.items() if k not in skip}
        diffs = {}
        for k, fn in fns.items():
            out = fn()
            out = (
                out.float().numpy()
                if hasattr(out, "float") and not isinstance(out, np.ndarray)
                else out
            )
            diffs[k] = float(np.abs(np.asarray(out, np.float32) - ref).max())
        res: dict[str, Any] = {
            "timings": interleaved(fns, iters, warmup),
            "max_abs_diff_vs_pytorch_fp32": diffs,
        }
        t = {k: v["median_s"] for k, v in res["timings"].items()}
        res["anchor_over_engine"] = {k: t[ANCHOR] / v for k, v in t.items()}
        best_reduced = min(t.get("onnxruntime_int8", np.inf), t.get("pytorch_bf16", np.inf))
        if best_reduced < np.inf:
            res["best_of_ort_int8_and_torch_bf16_s"] = best_reduced
        row[label] = res
        print(f"{name} {label} (medians; ratio = ONNX Runtime fp32 time / this engine's time)")
        c = {k: v["cpu_median_s"] for k, v in res["timings"].items()}
        res["anchor_over_engine_cpu"] = {k: c[ANCHOR] / v for k, v in c.items() if v > 0}
        for k, v in sorted(t.items(), key=lambda kv: kv[1]):
            print(
                f"  {k:<22} {v * 1e3:9.2f} ms  {t[ANCHOR] / v:5.2f}x  "
                f"cpu {c[k] * 1e3:9.2f} ms {c[ANCHOR] / max(c[k], 1e-9):5.2f}x  "
                f"max|diff| {diffs[k]:.1e}"
            )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="minilm-sst2,bert-base-random")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per engine first")
    ap.add_argument("--out", default="warm_cpu", help="result name under bench/results/")
    ap.add_argument(
        "--shapes",
        default=",".join(label for label, _ in SHAPES),
        help="which of the shapes to time (default %(default)s)",
    )
    ap.add_argument(
        "--skip",
        default="",
        help="engines to leave out of the timing, comma-separated (e.g. "
        "zerostart_numpy_fp32,pytorch_bf16: on a loaded 2-core machine a round of all of them "
        "at bert-base b32 takes minutes)",
    )
    args = ap.parse_args()
    shapes = tuple(s for s in SHAPES if s[0] in args.shapes.split(","))
    skip = frozenset(filter(None, args.skip.split(",")))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    machine = machine_description()
    machine["cpu_flags"] = sorted(cpu_flags())
    result: dict[str, object] = {
        "benchmark": "warm_cpu",
        "machine": machine,
        "seq_len": SEQ_LEN,
        "method": "engines interleaved call by call; median of --iters rounds",
        "iters": args.iters,
        "warmup": args.warmup,
        "load_average_before": list(os.getloadavg()),
        "models": {},
    }
    for name in args.models.split(","):
        if name == "modernbert-base-random":  # its own engines and points: bench/warm_modernbert.py
            from warm_modernbert import bench as bench_modernbert

            result["models"][name] = bench_modernbert(args.iters / 20, args.threads)  # type: ignore[index]
            result["load_average_after"] = list(os.getloadavg())
            write_result(args.out, result)
            continue
        src = MODEL_FOLDERS[name]() if name in MODEL_FOLDERS else model_dir(name)
        result["models"][name] = bench_model(  # type: ignore[index]
            name, src, args.iters, args.threads, shapes, args.warmup, skip
        )
        result["skipped_engines"] = sorted(skip)
        result["load_average_after"] = list(os.getloadavg())
        write_result(args.out, result)  # after every model: a long run stopped early keeps its data


if __name__ == "__main__":
    main()
