"""Prepare a GPU session on the CPU machine: everything the GPU machine cannot make itself.

The lent GPU machine (docs/gpu.md) runs Python 3.12 with numpy, pytest, torch,
transformers and Triton 3.6, but it has no package index, none of our test
models, no CRIU, and takes at most 64 MiB of repository + carried files per
call. This tool writes what it lacks into ``.gpu/`` (git-ignored; name it in
the call's ``carry``)::

    .gpu/models/<name>/bundle/        GPU bundle: fp16 weights, cubins for --arch + sm_80 PTX
                                      (Triton 3.9, ahead of time; no GPU needed)
    .gpu/models/<name>/reference.npz  the test corpus encoded by our tokenizer, the CPU
                                      engine's fp32 outputs and transformers' fp32 outputs
    .gpu/models/<name>/answers.json   the CPU pipeline's answers on the corpus (labels, entities)
    .gpu/bench/kernels/               kernels of bench/gpu.py's bert-base shape (its random
                                      weights are made on the GPU machine; kernels depend on
                                      the shape only), with every GEMM config tools/gpu_tune.py
                                      times (TUNING_GEMM_CONFIGS)
    .gpu/modernbert/                  ModernBERT's GPU parity fixture (tools/gpu_prep_modernbert.py:
                                      a 4-layer miniature, its kernels, the reference's outputs
                                      at T = 1..1,024; ~5 MB), and .gpu/deberta/ (the same for
                                      DeBERTa, T up to 512; ~3 MB), with --families
    .gpu/wheels/                      httptools for CPython 3.12 (the worker's HTTP parser)
    .gpu/criu.tar.xz                  CRIU and the shared libraries it needs (glibc excepted),
                                      14 MB unpacked; criu/criu is a wrapper that sets the
                                      library path
    .gpu/prep.json                    what was made, from which commit, sizes, versions

    python tools/gpu_prep.py [--models minilm-sst2] [--arch sm_90] [--no-criu] [--no-wheels]
                             [--no-bench] [--families]

ModernBERT and DeBERTa ride in a call of their own (the BERT call is at the budget):
``python tools/gpu_prep.py --models "" --families --no-criu --no-wheels --no-bench``
(13 MiB with the tree), then ``GPU_STEPS=env,pytest`` on the GPU machine.

A GPU bundle of a MiniLM model is ~46 MB (22.7M fp16 parameters) and the
Rampart NER model ~37 MB, so one call carries one model: ``--models`` picks
it (default ``minilm-sst2``, whose sequence-classification head reads the
[CLS] rows in place, the least obvious indexing of the three). The tool
refuses a selection over the budget, naming the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".gpu"
CARRY_LIMIT_BYTES = 64 * 1024 * 1024  # the device tool's limit on tree + carried paths
MODELS = ("minilm-sst2", "rampart-ner", "minilm-embed")
ROUTES = {
    "sequence-classification": "predict",
    "token-classification": "tokens",
    "embeddings": "embed",
}
HTTPTOOLS_VERSION = "0.9.0"  # the version the shared venv runs (pyproject: httptools>=0.6)
DEVICE_PYTHON = "3.12"  # KINDS.md: python3 there is CPython 3.12.3
PIP_TIMEOUT_S = 300
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
CORE_LIBRARIES = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux")

# The test corpus: names, addresses, numbers, typos, a short text, a long one; pairs for
# the sequence classifier (its second texts), first texts alone for the others.
CORPUS = (
    (
        "My name is Sarah Johnson and I live at 42 Baker Street, Springfield.",
        "Call me at 555-1234.",
    ),
    ("Their was to much traffic in Paris yesterday, which were annoying.", "Yes."),
    ("ok", "Email john.doe@example.com before Friday, or don't."),
    ("The quick brown fox jumps over the lazy dog again and again and again.", "Nothing here."),
    ("I loved this film, the acting was wonderful and the ending made me cry.", "Great."),
    (
        "Terrible service, cold food, and the waiter was rude to everyone at our table.",
        "Never again.",
    ),
    (
        "Please send the invoice to Maria Garcia, 1600 Amphitheatre Parkway, Mountain View.",
        "Thanks!",
    ),
)


def log(msg: str) -> None:
    print(f"[gpu_prep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def corpus_inputs(task: str) -> list[Any]:
    """The corpus as the model's requests hold it: pairs for classification, texts otherwise."""
    if task == "sequence-classification":
        return [list(p) for p in CORPUS]
    return [a for a, _ in CORPUS]


def encode(bundle_dir: Path, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corpus through our tokenizer (identical to `tokenizers`, tests/unit), right-padded."""
    from zerostart.bundle.manifest import Manifest
    from zerostart.tokenize import WordPieceTokenizer

    m = Manifest.load(bundle_dir)
    tok = WordPieceTokenizer.from_files(bundle_dir / "vocab.txt", m.tokenizer)
    items = [tuple(x) if isinstance(x, list) else x for x in corpus_inputs(task)]
    encs = tok.encode_batch(items, max_length=m.max_length)
    t = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), t), tok.pad_id, np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = e.ids, 1, e.type_ids
    return ids, mask, types


def transformers_outputs(
    src: Path, task: str, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
) -> np.ndarray:
    """transformers on torch, fp32, eager attention: logits, or last_hidden_state for embeddings."""
    import torch
    import transformers

    cls = {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "embeddings": transformers.AutoModel,
    }[task]
    model = cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    kwargs = {"token_type_ids": torch.from_numpy(types)} if types is not None else {}
    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kwargs
        )
    return np.asarray((out.last_hidden_state if task == "embeddings" else out.logits).float())


def pipeline_answers(bundle_dir: Path, task: str) -> Any:
    """What the worker answers for the corpus (the JSON a client gets), from ``bundle_dir``."""
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle_dir, verify="none")
    job = pipe.prepare(ROUTES[task], {"inputs": corpus_inputs(task)})
    return job.finish(pipe.execute(job.encodings))


def build_case(
    name: str, src: Path, out: Path, archs: list[str], *, gpu_bundle: Path | None = None
) -> dict[str, Any]:
    """``out/bundle`` (unless ``gpu_bundle`` is given), ``out/reference.npz``, ``out/answers.json``.

    The references come from a CPU (fp32) bundle of the same folder, converted
    into a temporary folder and deleted; transformers' outputs are added when
    transformers and torch import, and ``reference.npz`` says whether they did.
    """
    from zerostart.bundle.folder import Bundle
    from zerostart.engine.cpu import CpuEngine
    from zerostart.model.convert import convert

    out.mkdir(parents=True, exist_ok=True)
    if gpu_bundle is None:
        log(f"{name}: GPU bundle for {','.join(archs)} (Triton AOT)")
        if (out / "bundle").exists():
            shutil.rmtree(out / "bundle")
        convert(src, out / "bundle", device="cuda", archs=archs)
    with tempfile.TemporaryDirectory(prefix="gpu-prep-cpu.") as tmp:
        cpu_dir = Path(tmp) / "cpu"
        convert(src, cpu_dir, device="cpu")
        cpu = Bundle.open(cpu_dir)
        m = cpu.manifest
        ids, mask, types = encode(cpu_dir, m.task)
        t_ = types if m.architecture == "bert" else None
        arrays: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if t_ is not None:
            arrays["token_type_ids"] = t_
        arrays["cpu"] = CpuEngine(m, cpu.weights).forward(ids, mask, t_)
        meta: dict[str, Any] = {"model": name, "task": m.task, "architecture": m.architecture}
        try:
            arrays["transformers"] = transformers_outputs(src, m.task, ids, mask, t_)
            import transformers

            meta["transformers"] = transformers.__version__
        except ImportError as exc:
            meta["transformers"] = f"not recorded: {exc}"
        answers = pipeline_answers(cpu_dir, m.task)
    np.savez_compressed(out / "reference.npz", **arrays)
    (out / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "answers.json").write_text(json.dumps(answers, indent=1) + "\n")
    log(f"{name}: references written ({meta['transformers']})")
    return meta


def bench_kernels(out: Path, archs: list[str]) -> None:
    """bench/gpu.py's model shape, compiled here; bench/gpu.py --kernels copies them in."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu as bench_gpu  # bench/gpu.py
    from zerostart.kernels.aot import compile_for_bundle

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log(f"bench kernels (bert-base shape, every tuning config) for {','.join(archs)}")
    # as `convert --arch` would (the configs measured in zerostart/kernels/tuning/), plus every
    # candidate tools/gpu_tune.py times
    compile_for_bundle(bench_gpu.bench_manifest(), out, archs, tuning_candidates=True)
    (out / "kernels").rename(out / "k")
    for p in (out / "k").iterdir():
        p.rename(out / p.name)
    (out / "k").rmdir()


def download_wheels(out: Path) -> None:
    """httptools for the GPU machine's CPython (pip download; PyPI only)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        DEVICE_PYTHON,
        "--implementation",
        "cp",
        *(a for p in WHEEL_PLATFORMS for a in ("--platform", p)),
        "-d",
        str(out),
        f"httptools=={HTTPTOOLS_VERSION}",
    ]
    log("httptools wheel for cp312")
    subprocess.run(cmd, check=True, timeout=PIP_TIMEOUT_S, capture_output=True, text=True)


def criu_archive(out_tar: Path, criu: str | None = None) -> dict[str, int]:
    """``out_tar`` (xz): criu/ holding CRIU, its libraries but glibc, and a wrapper."""
    import tarfile

    with tempfile.TemporaryDirectory(prefix="gpu-prep-criu.") as tmp:
        files = criu_closure(Path(tmp) / "criu", criu)
        with tarfile.open(out_tar, "w:xz") as tar:
            tar.add(Path(tmp) / "criu", arcname="criu")
    return files


def criu_closure(out: Path, criu: str | None = None) -> dict[str, int]:
    """CRIU plus every shared library it needs but glibc, and a wrapper that sets the path."""
    from zerostart.image.elf import Resolver
    from zerostart.snapshot._criu import criu_binary

    binary = criu or criu_binary()
    if out.exists():
        shutil.rmtree(out)
    (out / "lib").mkdir(parents=True)
    resolver = Resolver()
    todo, seen, files = [os.path.realpath(binary)], set(), {}
    while todo:
        path = todo.pop()
        info = resolver.info(path)
        if info is None or path in seen:
            continue
        seen.add(path)
        for needed in info.needed:
            found = resolver.find(needed, info)
            if found is None:
                raise SystemExit(f"criu needs {needed}, which is not found here")
            if needed.startswith(CORE_LIBRARIES):
                continue  # glibc: the GPU machine's own (newer) one serves
            real = os.path.realpath(found.path)
            if needed not in files:
                shutil.copy2(real, out / "lib" / needed)
                files[needed] = os.path.getsize(real)
                todo.append(real)
    shutil.copy2(os.path.realpath(binary), out / "criu.bin")
    wrapper = out / "criu"
    wrapper.write_text(
        '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\n'
        'LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/criu.bin" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    files["criu"] = os.path.getsize(out / "criu.bin")
    log(f"criu closure: {len(files)} files, {sum(files.values()) / 1e6:.1f} MB")
    return files


def tree_bytes(repo: Path) -> int:
    """Bytes of what a call sends besides carried paths: tracked + untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    total = 0
    for name in out.decode().split("\0"):
        p = repo / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm-sst2", help=f"comma-separated, of {MODELS}")
    ap.add_argument("--arch", default="sm_90", help="cubin archs (the H200 is sm_90)")
    ap.add_argument("--models-dir", default=os.environ.get("ZEROSTART_MODELS_DIR"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-criu", action="store_true")
    ap.add_argument("--no-wheels", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument(
        "--families",
        action="store_true",
        help="also ModernBERT's and DeBERTa's GPU parity fixtures (~8.4 MiB); a call of their own",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    archs = [a for a in args.arch.split(",") if a]
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # one consistent set per call: stale models would ride along
    out.mkdir(parents=True)
    models_dir = Path(args.models_dir) if args.models_dir else REPO / "models"
    record: dict[str, Any] = {"models": {}, "archs": archs}
    for name in models:
        src = models_dir / name
        if not (src / "config.json").exists():
            raise SystemExit(f"{src} is missing: build it with tools/make_models.py {name}")
        record["models"][name] = build_case(name, src, out / "models" / name, archs)
    if not args.no_bench:
        bench_kernels(out / "bench" / "kernels", archs)
    if args.families:
        sys.path.insert(0, str(REPO / "tools"))
        from gpu_prep_modernbert import build as build_modernbert
        from gpu_prep_modernbert import build_deberta

        record["modernbert"] = build_modernbert(out / "modernbert", archs)
        record["deberta"] = build_deberta(out / "deberta", archs)
    if not args.no_wheels:
        download_wheels(out / "wheels")
    if not args.no_criu:
        record["criu_files"] = criu_archive(out / "criu.tar.xz")
    import triton

    record["triton"] = triton.__version__
    record["commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    sizes = {
        p.name: folder_bytes(p) if p.is_dir() else p.stat().st_size for p in sorted(out.iterdir())
    }
    sizes.update({f"models/{n}": folder_bytes(out / "models" / n) for n in models})
    tree = tree_bytes(REPO)
    carried = folder_bytes(out)
    record["bytes"] = {"tree": tree, "carried": carried, "parts": sizes}
    (out / "prep.json").write_text(json.dumps(record, indent=2) + "\n")
    total = tree + carried
    log(
        f"tree {tree / 2**20:.1f} MiB + .gpu {carried / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
        f"(limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB); parts: "
        + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sizes.items())
    )
    if total > CARRY_LIMIT_BYTES:
        raise SystemExit("over the carry limit: fewer --models, or --no-criu / --no-bench")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
