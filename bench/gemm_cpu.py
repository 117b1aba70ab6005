"""The GEMM decision for the CPU engine, measured: who multiplies the encoder's matrices.

On the products of a forward pass (MiniLM and bert-base shapes, 128 and 4096
rows), interleaved call by call, same threads:

* numpy's bundled OpenBLAS, fp32 (the numpy engine's products; the anchor);
* our fp32 kernel on every build this CPU runs (zs_gemm_f32: portable,
  AVX2/FMA, AVX-512), with the plan the worker would take here (the shipped
  tuning table's row for this CPU, else the default rule) and its thread split;
* our int8 (AVX-512 VNNI, and AVX2 vpmaddwd) and bf16 (AVX-512 BF16) micro-kernels, with the
  activation quantisation / rounding they need included in the time;
* PyTorch's CPU matmul, fp32 and bf16 (oneDNN / MKL), unless --no-torch.

Also what each costs in an image (bytes of the shared libraries) and at
start-up (import / load ms). Output:
bench/results/gemm_cpu_<vendor>-<family>-<model>_<threads>t.json (CPU model,
flags, load average before and after).

    python bench/gemm_cpu.py [--iters 10] [--threads N] [--no-torch]
        [--openblas-coretype NEHALEM]   # OpenBLAS's SSE kernels: the portable build's peer
"""

from __future__ import annotations

import os
import sys

if "--openblas-coretype" in sys.argv:  # before numpy loads OpenBLAS (DYNAMIC_ARCH reads it once)
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--openblas-coretype") + 1]

import argparse
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import write_result
from gemm_timing import (
    Problem,
    encoder_shapes,
    interleave,
    machine_cpu,
    set_openblas_threads,
)
from zerostart.benchmark import machine_description
from zerostart.engine.cpu_tuning import cpu_identity, load_table
from zerostart.engine.native import cpu_flags


def _lib_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _import_ms(code: str) -> float:
    probe = f"import time; t=time.perf_counter(); {code}; print((time.perf_counter()-t)*1e3)"
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
        )
        runs.append(float(out.stdout.split()[-1]))
    return statistics.median(runs)


def main() -> None:
    from zerostart.engine.cpu_gemm import PackedMatrix
    from zerostart.engine.native import NativeKernels
    from zerostart.engine.parallel import Workers
    from zerostart.kernels.cpu_build import (
        DEFAULT_ARCHS,
        TUNING_TABLE,
        arch_features,
        build_library,
    )
    from zerostart.model import quantize

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out (faster)")
    ap.add_argument("--rows", default="128,4096", help="rows of the products (b x 128)")
    ap.add_argument("--openblas-coretype", help="OpenBLAS kernel family (e.g. NEHALEM)")
    args = ap.parse_args()
    torch: Any = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    set_openblas_threads(args.threads)
    load_before = list(os.getloadavg())
    flags = cpu_flags()
    table = load_table(TUNING_TABLE)
    ours: dict[str, NativeKernels] = {}
    for arch in DEFAULT_ARCHS:
        if set(arch_features(arch)) <= flags:
            ours[f"fp32 {arch}"] = NativeKernels(build_library(arch), arch, tuning=table)
    for precision, arch in (
        ("int8_vnni", "x86-64-v4+avx512vnni"),
        ("int8_avx2", "x86-64-v3"),
        ("bf16", "x86-64-v4+avx512bf16"),
    ):
        if set(arch_features(arch)) <= flags:
            ours[precision] = NativeKernels(build_library(arch), arch)
    workers = Workers(args.threads)
    rows_out = []
    for model, m, k, n in encoder_shapes(tuple(int(r) for r in args.rows.split(","))):
        prob = Problem(m, k, n)
        fns: dict[str, Callable[[], Any]] = {"numpy_openblas_fp32": prob.openblas()}
        for name, kern in ours.items():
            if name.startswith("fp32 "):
                fns[f"zerostart_fp32_{kern.arch}"] = prob.ours(kern, workers)
        if torch is not None:
            tx, tw = torch.from_numpy(prob.x), torch.from_numpy(prob.w)
            txb, twb = tx.bfloat16(), tw.bfloat16()
            fns["torch_fp32"] = lambda tx=tx, tw=tw: torch.matmul(tx, tw)
            fns["torch_bf16"] = lambda txb=txb, twb=twb: torch.matmul(txb, twb)
        q, s, c = quantize.quantize_int8(prob.w)
        mat8 = PackedMatrix("int8", q, s, c, k, n)
        for kind in ("int8_vnni", "int8_avx2"):  # the AVX2 kernel runs on AVX-512 CPUs too
            if kind in ours:
                fns[f"zerostart_{kind}"] = lambda mat8=mat8, x=prob.x, kern=ours[kind]: mat8.matmul(
                    x, kern, workers
                )
        if "bf16" in ours:
            matb = PackedMatrix("bfloat16", quantize.quantize_bf16(prob.w), None, None, k, n)
            fns["zerostart_bf16"] = lambda matb=matb, x=prob.x: matb.matmul(
                x, ours["bf16"], workers
            )
        errors = {}
        for name, fn in fns.items():
            if name.startswith("zerostart_fp32"):
                fn()
                errors[name] = prob.relative_error()
        if torch is not None:
            with torch.inference_mode():
                times = interleave(fns, args.iters)
        else:
            times = interleave(fns, args.iters)
        row: dict[str, Any] = {
            "model": model, "rows": m, "k": k, "n": n,
            "median_ms": {name: v["median_s"] * 1e3 for name, v in times.items()},
            "min_ms": {name: v["min_s"] * 1e3 for name, v in times.items()},
            # the calling thread's CPU time: meaningful at --threads 1 only (gemm_timing.py)
            "cpu_median_ms": {name: v["cpu_median_s"] * 1e3 for name, v in times.items()},
            "gflops": {name: prob.gflop / v["median_s"] for name, v in times.items()},
            "fp32_relative_error": errors,
            "load_average": list(os.getloadavg()),
        }  # fmt: skip
        rows_out.append(row)
        print(
            f"{model:<9} {m:>5}x{k:<4}x{n:<4} "
            + " ".join(f"{name}={g:6.1f}" for name, g in row["gflops"].items())
            + f"  GFLOP/s (median)  load {row['load_average'][0]:.1f}"
            + (
                "  ours/OpenBLAS CPU time: "
                + " ".join(
                    f"{name[15:]}={times['numpy_openblas_fp32']['cpu_median_s'] / v['cpu_median_s']:.2f}x"
                    for name, v in times.items()
                    if name.startswith("zerostart_fp32")
                )
                if args.threads == 1
                else ""
            ),
            flush=True,
        )
    np_libs = Path(np.__file__).parent.parent / "numpy.libs"
    closure: dict[str, Any] = {
        "numpy_openblas_bytes": _lib_bytes(sorted(np_libs.glob("libscipy_openblas*"))),
        "numpy_libs_bytes": _lib_bytes(sorted(np_libs.glob("*.so*"))),
        "zerostart_kernels_bytes": {p: k.path.stat().st_size for p, k in ours.items()},
    }
    startup = {"import_numpy_ms": _import_ms("import numpy")}
    if torch is not None:
        closure["torch_lib_bytes"] = _lib_bytes(
            sorted((Path(torch.__file__).parent / "lib").glob("*.so*"))
        )
        startup["import_torch_ms"] = _import_ms("import torch")
    cpu = cpu_identity()
    result = {
        "benchmark": "gemm_cpu",
        "machine": {
            **machine_description(),
            "cpu_identity": machine_cpu(),
            "cpu_flags": sorted(flags),
        },
        "threads": args.threads,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "auto"),
        "plans": {
            k.arch: k.gemm_plan._asdict() for name, k in ours.items() if name.startswith("fp32 ")
        },
        "method": "engines interleaved call by call; median (and min) of --iters rounds",
        "products": rows_out,
        "closure": closure,
        "startup": startup,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }
    print(closure, startup)
    suffix = (
        ""
        if "OPENBLAS_CORETYPE" not in os.environ
        else "_" + os.environ["OPENBLAS_CORETYPE"].lower()
    )
    if args.rows != "128,4096":
        suffix += "_rows" + args.rows.replace(",", "-")
    write_result(f"gemm_cpu_{cpu.vendor}-{cpu.family}-{cpu.model}_{args.threads}t{suffix}", result)


if __name__ == "__main__":
    main()
