"""GPU benchmark (issue 4): zerostart's driver-only engine vs PyTorch fp16, same machine, same run.

Needs an NVIDIA GPU, the dev extras (torch with CUDA, transformers) and Triton
(to compile the kernels for this GPU's arch). Run from the repository root::

    python bench/gpu.py            # writes bench/results/gpu_<gpu-name>.json
    python bench/gpu.py --kernels .gpu/bench/kernels --out $OUT/gpu_bench.json

``--kernels`` copies kernels compiled ahead of time for this model's shape
(``tools/gpu_prep.py`` makes them) instead of compiling with Triton here: the
GPU machine's own Triton is not the series the kernels are compiled with.

What it measures, all on a BERT-base-shaped model with random weights
(12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522, 2 labels):

* warm latency, batch 1 x 128 and batch 1 x 512, and time per batch of 32 x 128:
  zerostart ``CudaEngine.forward`` end to end (host ids in, float32 logits out,
  so its numbers include both copies) vs PyTorch fp16 eager with SDPA attention
  and PyTorch fp16 + SDPA replayed from a CUDA graph (device time only, inputs
  already on the GPU: the fastest PyTorch can be);
* process exec -> first answer: a fresh ``python`` that opens the bundle,
  builds the engine (graph capture included) and answers one request, vs one
  that imports torch + transformers, loads the model onto the GPU in fp16 and
  answers; the bundle is in the page cache (read once before);
* the bytes of every file the zerostart worker process maps (/proc/self/maps),
  the GPU libraries among them, and the kernels folder's size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-gpu"
RESULTS = ROOT / "bench" / "results"
SHAPES = [(1, 128), (1, 512), (32, 128)]
WARMUP, REPEATS = 20, 100


# bert-base (Devlin et al. 2018, Table 1 "BERT_BASE"), as transformers' BertConfig defaults.
BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
}
NUM_LABELS = 2


def bench_manifest():  # type: ignore[no-untyped-def]
    """The manifest ``convert`` writes for ``make_model``'s folder, without making it (no torch).

    tools/gpu_prep.py compiles the kernels for it on the CPU machine;
    ``convert(kernels_from=...)`` checks that they fit the real bundle.
    """
    from zerostart.bundle.manifest import Manifest, ModelConfig, TokenizerSettings

    c = BERT_BASE
    return Manifest(
        architecture="bert",
        task="sequence-classification",
        config=ModelConfig(
            hidden_size=c["hidden_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=c["num_attention_heads"],
            intermediate_size=c["intermediate_size"],
            vocab_size=c["vocab_size"],
            max_position_embeddings=c["max_position_embeddings"],
            type_vocab_size=c["type_vocab_size"],
            layer_norm_eps=c["layer_norm_eps"],
            hidden_act=c["hidden_act"],
        ),
        tokenizer=TokenizerSettings(),
        max_length=c["max_position_embeddings"],
        dtype="float16",
        device="cuda",
        labels=tuple(f"LABEL_{i}" for i in range(NUM_LABELS)),
    )


def make_model() -> Path:
    """A bert-base-shaped sequence classifier with seeded random weights, saved as a HF folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = WORK / "bert-base-random"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    cfg = BertConfig(num_labels=NUM_LABELS, **BERT_BASE)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [f"tok{i}" for i in range(cfg.vocab_size - len(specials))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def make_bundle(
    src: Path, arch: str, kernels: Path | None, tuning: Path | None, name: str = ""
) -> Path:
    """The GPU bundle: kernels compiled here for ``arch``, or copied from ``kernels``.

    ``tuning``: a tools/gpu_tune.py result the launch rule follows; default: what ships
    in zerostart/kernels/tuning/ for this arch. ``name == "-rule"``: no measured choices
    and the default configs only (an untuned bundle).
    """
    from zerostart.model.convert import convert

    if kernels is not None and name == "-rule":
        kernels = default_kernels(kernels)
    dst = WORK / f"bundle-{arch}{name}"
    t = tuning
    if name == "-rule":  # no measured choices: the launch rule alone
        t = WORK / "no-tuning.json"
        t.write_text(json.dumps({"arch": arch, "choices": []}))
    if kernels is not None:
        convert(src, dst, device="cuda", kernels_from=kernels, gemm_tuning=t)
    else:
        convert(src, dst, device="cuda", archs=[arch], gemm_tuning=t)
    return dst


def default_kernels(kernels: Path) -> Path:
    """A copy of a kernels/ folder with only the default GEMM configs: an untuned bundle."""
    import shutil
    from dataclasses import replace

    from zerostart.bundle.launch import KernelManifest, gemm_config_name
    from zerostart.kernels.variants import DEFAULT_GEMM_CONFIGS

    names = {c.name for c in DEFAULT_GEMM_CONFIGS}
    km = KernelManifest.load(kernels)
    keep = tuple(v for v in km.variants if v.op != "gemm" or gemm_config_name(v) in names)
    out = WORK / "kernels-default"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for v in keep:
        for image in v.images.values():
            shutil.copy2(kernels / image.file, out / image.file)
    (out / "manifest.json").write_text(replace(km, variants=keep, gemm_table=()).to_json())
    return out


def inputs(b: int, t: int) -> tuple:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(b, t), dtype=np.int64)
    ids[:, 0] = 2  # [CLS] in the made-up vocabulary
    return ids, np.ones((b, t), np.int64)


def time_ms(fn, sync) -> float:  # type: ignore[no-untyped-def]
    for _ in range(WARMUP):
        fn()
    sync()
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def bench_split_k(bundle_dir: Path) -> dict:
    """Batch-1 latency with split-K off (1), forced to 2 or 4, and automatic (the default)."""
    from zerostart.bundle.folder import Bundle
    from zerostart.engine.cuda import CudaEngine

    out: dict = {}
    bundle = Bundle.open(bundle_dir)
    for split in (1, 2, 4, None):
        engine = CudaEngine.from_bundle(bundle, split_k=split)
        row = {}
        for b, t in SHAPES[:2]:
            ids, mask = inputs(b, t)
            row[f"b{b}x{t}_ms"] = time_ms(
                lambda ids=ids, mask=mask: engine.forward(ids, mask), lambda: None
            )
        out["auto" if split is None else f"x{split}"] = row
        engine.close()
    return out


def bench_zerostart(bundle_dir: Path, profile: bool = False) -> dict:
    from zerostart.bundle.folder import Bundle
    from zerostart.engine.cuda import CudaEngine

    t0 = time.perf_counter()
    engine = CudaEngine.from_bundle(Bundle.open(bundle_dir))
    startup_s = time.perf_counter() - t0
    out: dict = {
        "engine_startup_s": startup_s,
        "startup_phases_s": dict(engine.startup_phases),
        "device": engine.device_name,
    }
    for b, t in SHAPES:
        ids, mask = inputs(b, t)
        t0 = time.perf_counter()
        engine.forward(ids, mask)  # the bucket's first call captures its graph
        out[f"b{b}x{t}_first_call_ms"] = (time.perf_counter() - t0) * 1e3
        out[f"b{b}x{t}_ms"] = time_ms(
            lambda ids=ids, mask=mask: engine.forward(ids, mask), lambda: None
        )
    gemms = {
        f"{s.variant.op} {s.args['N']}x{s.args['K']} M={s.args['M']}": s.variant.key.split(".", 2)[
            -1
        ]
        for s in engine._plans[(1, 128)]
        if s.variant.op in ("gemm", "gemm_partial")
    }
    out["gemm_configs_b1x128"] = gemms
    if profile:
        try:
            out["profile_us"] = {f"b{b}x{t}": profile_plan(engine, b, t) for b, t in SHAPES}
        except Exception as exc:  # the profile is extra: never lose the numbers above
            out["profile_error"] = repr(exc)
    engine.close()
    return out


def profile_plan(engine, b: int, t: int, reps: int = 20, rounds: int = 5) -> dict:  # type: ignore[no-untyped-def]
    """GPU time of each kind of launch in the bucket's forward pass, summed over layers (us).

    Each launch is captured ``reps`` times into its own CUDA graph and timed with
    CUDA events over ``rounds`` graph launches, as it runs inside the real graph.
    Also the whole pass's graph, and the sum of the parts for comparison.
    """
    d, s = engine.driver, engine._stream

    def timed(steps: list) -> float:  # type: ignore[type-arg]
        d.begin_capture(s)
        try:
            for _ in range(reps):
                engine._run(steps)
        finally:
            graph = d.end_capture(s)
        exe = d.graph_instantiate(graph)
        d.graph_destroy(graph)
        d.graph_launch(exe, s)
        d.event_record(ev0, s)
        for _ in range(rounds):
            d.graph_launch(exe, s)
        d.event_record(ev1, s)
        d.event_synchronize(ev1)
        import ctypes

        d.call("cuGraphExecDestroy", ctypes.c_void_p(exe))
        return d.event_elapsed_ms(ev0, ev1) * 1e3 / (reps * rounds)

    out: dict = {}
    with engine._lock, d.current(engine._context):
        ev0, ev1 = d.event_create(), d.event_create()
        plan = engine._plans[(b, t)]
        for step in plan:
            v = step.variant
            kind = v.op
            if v.op in ("gemm", "gemm_partial"):
                kind = f"{v.op} {step.args['N']}x{step.args['K']} M={step.args['M']} {v.key.split('.', 2)[-1]}"
            out[kind] = out.get(kind, 0.0) + timed([step])
        out = {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
        out["sum_of_parts"] = round(sum(out.values()), 2)
        out["whole_pass"] = round(timed(plan), 2)
    return out


def bench_torch(src: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = (
        AutoModelForSequenceClassification.from_pretrained(
            src, attn_implementation="sdpa", dtype=torch.float16
        )
        .cuda()
        .eval()
    )
    out: dict = {}
    for b, t in SHAPES:
        ids, mask = (torch.from_numpy(x).cuda() for x in inputs(b, t))

        def run(ids=ids, mask=mask):  # type: ignore[no-untyped-def]
            return model(input_ids=ids, attention_mask=mask)

        with torch.inference_mode():
            out[f"eager_b{b}x{t}_ms"] = time_ms(run, torch.cuda.synchronize)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    run()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run()
            out[f"graph_b{b}x{t}_ms"] = time_ms(graph.replay, torch.cuda.synchronize)
    out["torch"] = torch.__version__
    return out


ZEROSTART_CHILD = """
import time; t0 = time.perf_counter()
import os, sys
if os.environ.get("ZS_PREWARM") == "1":  # what the worker does for a GPU bundle (serve/__main__)
    from zerostart.serve.__main__ import prewarm_cuda
    prewarm_cuda()
import numpy as np
from zerostart.bundle.folder import Bundle
from zerostart.engine.cuda import CudaEngine
t1 = time.perf_counter()
b = Bundle.open(sys.argv[1])
t2 = time.perf_counter()
e = CudaEngine.from_bundle(b)
t3 = time.perf_counter()
ids = np.array([[2, 1000, 2000, 3]]); print("ANSWER", e.forward(ids, np.ones_like(ids)).argmax(-1)[0], flush=True)
t4 = time.perf_counter()
import json
print("PHASES", json.dumps({"imports": t1 - t0, "bundle_open": t2 - t1, "engine": t3 - t2,
      "first_forward": t4 - t3, "engine_phases": e.startup_phases}))
maps = {}
for line in open('/proc/self/maps'):
    parts = line.split()
    if len(parts) >= 6 and parts[5].startswith('/'):
        maps[parts[5]] = 1
import os, json
print("MAPS", json.dumps({p: os.path.getsize(p) for p in maps if os.path.exists(p)}))
"""
TORCH_CHILD = """
import sys, torch
from transformers import AutoModelForSequenceClassification
m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], dtype=torch.float16).cuda().eval()
ids = torch.tensor([[2, 1000, 2000, 3]]).cuda()
with torch.inference_mode(): print("ANSWER", int(m(input_ids=ids).logits.argmax(-1)[0]), flush=True)
"""


def minimal_blas() -> Path:
    """zerostart's minimal BLAS built for this numpy (what ``zerostart build`` puts in images)."""
    import numpy as np

    from zerostart.kernels.blas_build import build_minimal_blas

    npdir = Path(np.__file__).resolve().parent
    (openblas,) = sorted((npdir.parent / "numpy.libs").glob("lib*openblas*.so*"))
    modules = sorted(p for p in npdir.rglob("*.so") if "tests" not in p.parts)
    return build_minimal_blas(openblas, modules, cache=WORK / "minimal-blas")


def import_profile(top: int = 15, extra_env: dict | None = None) -> dict:
    """The child's imports by cumulative time (``python -X importtime``), microseconds."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    code = "import numpy\nfrom zerostart.bundle.folder import Bundle\nfrom zerostart.engine.cuda import CudaEngine"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return {name: us for us, name in sorted(rows, reverse=True)[:top]}


def exec_to_answer(code: str, arg: Path, extra_env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    env = dict(os.environ, **(extra_env or {}))  # the child imports zerostart from this checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(arg)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    first = ""
    for line in proc.stdout:
        if line.startswith("ANSWER"):
            elapsed = time.perf_counter() - t0
            first = line
            break
    rest = proc.stdout.read()
    proc.wait(timeout=300)
    if not first or proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}): {rest[-2000:]}")
    return elapsed, rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=Path, help="kernels/ folder compiled for this shape")
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/gpu_<gpu>.json)")
    ap.add_argument(
        "--tuning",
        type=Path,
        help="tools/gpu_tune.py result (default: the packaged one for this arch); the engine "
        "is measured with it and with the untuned rule",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from zerostart.benchmark import machine_description
    from zerostart.engine.cuda.driver import Driver

    drv = Driver.load()
    drv.init()
    dev = drv.device(0)
    arch = f"sm_{drv.compute_capability(dev)}"
    name = drv.device_name(dev)
    WORK.mkdir(parents=True, exist_ok=True)
    src = make_model()
    bundle = make_bundle(src, arch, args.kernels, args.tuning)
    rule_bundle = make_bundle(src, arch, args.kernels, None, "-rule")
    for p in bundle.rglob("*"):  # page cache warm, as the target says
        if p.is_file():
            p.read_bytes()
    result: dict = {
        "gpu": name,
        "arch": arch,
        "driver_version": drv.version(),
        "model": "bert-base shape, random weights",
        "machine": machine_description(),
    }
    result["zerostart"] = bench_zerostart(bundle, profile=True)
    result["zerostart_untuned_rule"] = bench_zerostart(rule_bundle)
    result["split_k"] = bench_split_k(bundle)
    result["tuning"] = str(args.tuning or "zerostart/kernels/tuning (packaged)")
    print(json.dumps(result, indent=1, sort_keys=True), flush=True)  # kept if a later part fails
    result["pytorch"] = bench_torch(src)
    runs = [exec_to_answer(ZEROSTART_CHILD, bundle) for _ in range(3)]
    zs_s = statistics.median(r[0] for r in runs)
    rest = runs[-1][1]
    maps = json.loads(rest.split("MAPS", 1)[1])
    result["exec_phases_s"] = json.loads(rest.split("PHASES", 1)[1].split("\n", 1)[0])
    result["exec_runs_s"] = [r[0] for r in runs]
    # numpy's OpenBLAS starts a thread per core at import; the GPU worker never calls BLAS
    one = {"OPENBLAS_NUM_THREADS": "1"}
    result["exec_runs_openblas_1_thread_s"] = [
        exec_to_answer(ZEROSTART_CHILD, bundle, one)[0] for _ in range(3)
    ]
    result["import_profile_us"] = import_profile()
    # the worker's context prewarm (a thread retains the primary context during the imports)
    warm = {"OPENBLAS_NUM_THREADS": "1", "ZS_PREWARM": "1"}
    result["exec_runs_prewarm_s"] = [
        exec_to_answer(ZEROSTART_CHILD, bundle, warm)[0] for _ in range(3)
    ]
    # What the GPU image's worker runs: numpy with zerostart's minimal BLAS (image/blas.py)
    # instead of its OpenBLAS, loaded here in its place through LD_PRELOAD (same SONAME).
    try:
        shim = minimal_blas()
        pre = {"LD_PRELOAD": str(shim)}
        result["exec_runs_minimal_blas_s"] = [
            exec_to_answer(ZEROSTART_CHILD, bundle, pre)[0] for _ in range(3)
        ]
        result["import_profile_minimal_blas_us"] = import_profile(extra_env=pre)
    except Exception as exc:  # no compiler here: say so, keep the rest
        result["exec_runs_minimal_blas_s"] = f"not measured: {exc!r}"
    torch_s, _ = exec_to_answer(TORCH_CHILD, src)
    weights = str(bundle / "weights.safetensors")
    result["exec_to_first_answer_s"] = {"zerostart": zs_s, "pytorch_transformers": torch_s}
    result["worker_maps"] = {
        "files": maps,
        "bytes_without_weights": sum(v for k, v in maps.items() if k != weights),
        "gpu_libraries": sorted(
            k for k in maps if "cuda" in k.lower() or "nv" in Path(k).name.lower()
        ),
        "kernels_dir_bytes": sum(p.stat().st_size for p in (bundle / "kernels").iterdir()),
    }
    out = args.out or RESULTS / f"gpu_{name.replace(' ', '_').replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
