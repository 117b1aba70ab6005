"""Image size and container cold start: the traced image vs the same app installed the usual way.

Builds the CPU image of a model with ``zerostart build`` and measures, in one run:

* the image: runtime + application layers (the closure without weights) and
  with the model layer, compressed (what a pull moves) and unpacked;
* "the usual way": the installed size of a virtual environment holding
  PyTorch + transformers (+ tokenizers, safetensors, numpy and every
  dependency they pull in, found through the installed distributions'
  metadata and RECORD files), and one holding ONNX Runtime + numpy +
  tokenizers; both plus the interpreter (stdlib + libpython) they need too;
* the same model converted for AVX-512 only (``--cpu-arch x86-64-v4``): its
  image takes zerostart's minimal BLAS instead of numpy's OpenBLAS (issue 12's
  image target: <= 40 MB unpacked, <= 15 MB compressed without weights);
* container start (``runc run``) -> first correct answer, median of N, with
  the rootfs already unpacked (unpacking is reported separately), next to the
  same worker started as a plain process.

Root and runc are needed for the container timings; without them those
fields are null with the reason.

    python bench/image_size.py [--model minilm-embed] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common import BUNDLES, ROOT, bundle_dir, model_dir, write_result
from zerostart.benchmark import (
    free_port,
    machine_description,
    post_json,
    sample_request,
    time_cold_start,
    worker_command,
)
from zerostart.container.runtime import Container, choose_runtime, unpacked_rootfs
from zerostart.errors import RuntimeToolError
from zerostart.image.build import build_image
from zerostart.image.inspect import inspect_image, summary_line
from zerostart.oci import read_oci_layout

WORK = ROOT / "bench" / ".work" / "images"
MB = 1e6
TORCH_STACK = ("torch", "transformers", "tokenizers", "safetensors", "numpy")
ORT_STACK = ("onnxruntime", "numpy", "tokenizers")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_closure(roots: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Installed distributions ``roots`` need (transitively, no extras); and those missing."""
    seen: dict[str, metadata.Distribution] = {}
    missing: list[str] = []
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req or "extra==" in req:
                continue
            marker = req.split(";", 1)[1] if ";" in req else ""
            if "sys_platform" in marker and "linux" not in marker and "!=" not in marker:
                continue  # e.g. pywin32; sys_platform == "win32"
            todo.append(re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return sorted(seen), sorted(set(missing))


def installed_bytes(names: list[str]) -> int:
    """Sum of the files each distribution's RECORD lists (what `pip install` wrote)."""
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for f in dist.files or []:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
    return total


def interpreter_bytes() -> int:
    """The CPython a venv runs on: its stdlib folder (with lib-dynload) and libpython."""
    total = 0
    for root, _, files in os.walk(sysconfig.get_path("stdlib")):
        if "site-packages" in root:
            continue
        total += sum(
            os.path.getsize(os.path.join(root, f))
            for f in files
            if not os.path.islink(os.path.join(root, f))
        )
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and os.path.exists(os.path.join(libdir, ldlib)):
        total += os.path.getsize(os.path.realpath(os.path.join(libdir, ldlib)))
    return total + os.path.getsize(os.path.realpath(sys.executable))


def stack(roots: tuple[str, ...], interp: int) -> dict[str, Any]:
    names, missing = distribution_closure(roots)
    size = installed_bytes(names)
    return {
        "roots": list(roots),
        "distributions": names,
        "missing": missing,
        "site_packages_mb": round(size / MB, 1),
        "with_interpreter_mb": round((size + interp) / MB, 1),
    }


def container_cold_starts(image: Path, task: str, runs: int) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root"}
    try:
        runtime = choose_runtime()
    except RuntimeToolError as exc:
        return {"skipped": str(exc)}
    ref = read_oci_layout(image)
    t0 = time.perf_counter()
    unpacked_rootfs(ref)
    unpack_s = time.perf_counter() - t0
    path, body, check = sample_request(task)
    samples, healthy = [], []
    for _ in range(runs + 1):  # the first run warms the page cache, not counted
        port = free_port()
        c = Container(str(image), port=port)
        t0 = time.perf_counter()
        try:
            healthy_s = c.start()
            status, answer = post_json(port, path, body)
            elapsed = time.perf_counter() - t0
            if status != 200 or not check(answer):
                raise SystemExit(f"wrong answer from the container: {status} {str(answer)[:200]}")
        finally:
            c.stop()
        samples.append(elapsed)
        healthy.append(healthy_s)
    return {
        "runtime": os.path.basename(runtime),
        "unpack_s": round(unpack_s, 3),
        "start_to_first_answer_s": {
            "median": round(statistics.median(samples[1:]), 3),
            "min": round(min(samples[1:]), 3),
            "max": round(max(samples[1:]), 3),
            "n": runs,
        },
        "runtime_run_to_healthy_median_s": round(statistics.median(healthy[1:]), 3),
    }


def process_cold_starts(bundle: Path, task: str, runs: int) -> dict[str, Any]:
    path, body, check = sample_request(task)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    samples = []
    for _ in range(runs + 1):
        port = free_port()
        s, _, _ = time_cold_start(worker_command(bundle, port), port, path, body, check, env=env)
        samples.append(s)
    return {"median": round(statistics.median(samples[1:]), 3), "n": runs}


def avx512_image(model: str, task: str, runs: int) -> dict[str, Any]:
    """The image of the model converted for x86-64-v4 only: minimal BLAS, its sizes and start."""
    from zerostart.model.convert import convert

    bundle = BUNDLES / f"{model}-cpu-x86-64-v4"
    if not (bundle / "manifest.json").exists():
        convert(model_dir(model), bundle, cpu_archs=["x86-64-v4"])
    out = WORK / f"{model}-x86-64-v4"
    built = build_image(bundle, out)
    report = inspect_image(out)
    no_model = [la for la in report.layers if la.name != "model"]
    assert built.blas is not None
    runnable = "avx512f" in Path("/proc/cpuinfo").read_text()
    return {
        "blas": {
            "blas": built.blas.blas,
            "reason": built.blas.reason,
            "replaced": list(built.blas.replaced),
            "saved_mb": round(built.blas.saved_bytes / MB, 2),
        },
        "without_weights_compressed_mb": round(sum(la.size for la in no_model) / MB, 2),
        "without_weights_unpacked_mb": round(sum(la.uncompressed_size for la in no_model) / MB, 2),
        "largest_files": [
            {"path": f.path, "mb": round(f.size / MB, 2)}
            for f in report.largest(6)
            if f.path != "/model/weights.safetensors"
        ],
        "container_cold_start": container_cold_starts(out, task, runs)
        if runnable
        else "not run: this CPU has no AVX-512",
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    bundle = bundle_dir(args.model)
    out = WORK / args.model
    t0 = time.perf_counter()
    built = build_image(bundle, out)
    build_s = time.perf_counter() - t0
    report = inspect_image(out)
    task = json.loads((bundle / "manifest.json").read_text())["task"]
    no_model = [la for la in report.layers if la.name != "model"]
    interp = interpreter_bytes()
    result: dict[str, Any] = {
        "machine": machine_description(),
        "model": args.model,
        "task": task,
        "build_s": round(build_s, 1),
        "image": {
            "manifest_digest": built.image.manifest_digest,
            "layers": [
                {
                    "name": la.name,
                    "compressed_mb": round(la.size / MB, 2),
                    "unpacked_mb": round(la.uncompressed_size / MB, 2),
                    "files": la.file_count,
                }
                for la in report.layers
            ],
            "without_weights_compressed_mb": round(sum(la.size for la in no_model) / MB, 2),
            "without_weights_unpacked_mb": round(
                sum(la.uncompressed_size for la in no_model) / MB, 2
            ),
            "with_weights_compressed_mb": round(report.total_size / MB, 2),
            "with_weights_unpacked_mb": round(report.total_uncompressed / MB, 2),
            "largest_files": [
                {"path": f.path, "mb": round(f.size / MB, 2), "why": f.reason}
                for f in report.largest(8)
            ],
            "by_kind_mb": {
                layer: {k: round(v / MB, 2) for k, v in kinds.items()}
                for layer, kinds in report.groups.items()
            },
        },
        "usual_way": {
            "interpreter_mb": round(interp / MB, 1),
            "torch_transformers_venv": stack(TORCH_STACK, interp),
            "onnxruntime_venv": stack(ORT_STACK, interp),
            "note": "installed (unpacked) bytes; compare with the image's unpacked size",
        },
        "container_cold_start": container_cold_starts(out, task, args.runs),
        "avx512_only": avx512_image(args.model, task, args.runs),
        "process_cold_start_s": process_cold_starts(bundle, task, args.runs),
        "gpu": "not measured: no NVIDIA GPU on this machine",
    }
    write_result("image_size", result)
    img = result["image"]
    print(
        f"image without weights: {img['without_weights_compressed_mb']} MB compressed, "
        f"{img['without_weights_unpacked_mb']} MB unpacked; with weights {img['with_weights_compressed_mb']} MB / "
        f"{img['with_weights_unpacked_mb']} MB"
    )
    print(f"biggest: {summary_line(report)}")
    for key in ("torch_transformers_venv", "onnxruntime_venv"):
        s = result["usual_way"][key]
        print(
            f"{key}: {s['site_packages_mb']} MB site-packages, {s['with_interpreter_mb']} MB with the interpreter"
        )
    v4 = result["avx512_only"]
    print(
        f"AVX-512-only bundle ({v4['blas']['blas']} BLAS): {v4['without_weights_compressed_mb']} MB "
        f"compressed, {v4['without_weights_unpacked_mb']} MB unpacked without weights"
    )
    print(f"container: {result['container_cold_start']}")
    print(f"process:   {result['process_cold_start_s']}")


if __name__ == "__main__":
    main()
