"""The GEMM decision for the CPU engine, measured: who multiplies the encoder's matrices.

On the products of a forward pass (MiniLM and bert-base shapes, 128 and 4096
rows), interleaved call by call, same threads:

* numpy's bundled OpenBLAS, fp32 (what the fp32 engine uses);
* our fp32 kernel (AVX-512 builds; on the weights as stored);
* our int8 (AVX-512 VNNI) and bf16 (AVX-512 BF16) micro-kernels, with the
  activation quantisation / rounding they need included in the time;
* PyTorch's CPU matmul, fp32 and bf16 (oneDNN / MKL: the well-kept library
  with VNNI / AMX paths; stands in for a oneDNN build we would ship).

Also what each costs in an image (bytes of the shared libraries) and at
start-up (import / load ms). Output: bench/results/gemm_cpu.json.

    python bench/gemm_cpu.py [--iters 10] [--threads N]
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv:
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import write_result
from zerostart.benchmark import machine_description
from zerostart.engine.native import cpu_flags

# (model, rows, K, N): the four products of one layer at batch 1 x 128 and 32 x 128.
LAYERS = {"minilm": (384, 1536), "bert-base": (768, 3072)}


def _shapes() -> list[tuple[str, int, int, int]]:
    out = []
    for model, (h, inter) in LAYERS.items():
        for rows in (128, 4096):
            for k, n in ((h, 3 * h), (h, h), (h, inter), (inter, h)):
                out.append((model, rows, k, n))
    return out


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
    import torch

    from zerostart.engine.cpu_gemm import PackedMatrix
    from zerostart.engine.native import NativeKernels
    from zerostart.engine.parallel import Workers
    from zerostart.kernels.cpu_build import build_library
    from zerostart.model import quantize

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    ours: dict[str, NativeKernels] = {}
    for precision, arch in (
        ("fp32", "x86-64-v4"),
        ("int8", "x86-64-v4+avx512vnni"),
        ("bf16", "x86-64-v4+avx512bf16"),
    ):
        need = {"fp32": "avx512f", "int8": "avx512_vnni", "bf16": "avx512_bf16"}[precision]
        if need in flags and "avx512bw" in flags:
            ours[precision] = NativeKernels(build_library(arch), arch)
    workers = Workers(args.threads)
    rng = np.random.default_rng(0)
    rows_out = []
    for model, m, k, n in _shapes():
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        txb, twb = tx.bfloat16(), tw.bfloat16()
        fns: dict[str, Callable[[], Any]] = {
            "numpy_openblas_fp32": lambda x=x, w=w: x @ w,
            "torch_fp32": lambda tx=tx, tw=tw: torch.matmul(tx, tw),
            "torch_bf16": lambda txb=txb, twb=twb: torch.matmul(txb, twb),
        }
        if "fp32" in ours:
            out = np.empty((m, n), np.float32)
            fns["zerostart_fp32"] = lambda x=x, w=w, out=out, m=m, k=k, n=n: workers.run(
                lambda i, j: ours["fp32"].gemm_f32(
                    x.ctypes.data, w.ctypes.data, out.ctypes.data, i, j, k, n
                ),
                m,
                min_part=24,
            )
        if "int8" in ours:
            q, s, c = quantize.quantize_int8(w)
            mat8 = PackedMatrix("int8", q, s, c, k, n)
            fns["zerostart_int8_vnni"] = lambda mat8=mat8, x=x: mat8.matmul(
                x, ours["int8"], workers
            )
        if "bf16" in ours:
            matb = PackedMatrix("bfloat16", quantize.quantize_bf16(w), None, None, k, n)
            fns["zerostart_bf16"] = lambda matb=matb, x=x: matb.matmul(x, ours["bf16"], workers)
        with torch.inference_mode():
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(args.iters):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        gflop = 2 * m * k * n / 1e9
        row = {
            "model": model, "rows": m, "k": k, "n": n,
            "median_ms": {name: v * 1e3 for name, v in med.items()},
            "gflops": {name: gflop / v for name, v in med.items()},
        }  # fmt: skip
        rows_out.append(row)
        print(
            f"{model:<9} {m:>5}x{k:<4}x{n:<4} "
            + " ".join(f"{name}={gflop / v:6.1f}" for name, v in med.items())
            + "  GFLOP/s"
        )
    np_libs = Path(np.__file__).parent.parent / "numpy.libs"
    torch_lib = Path(torch.__file__).parent / "lib"
    closure = {
        "numpy_openblas_bytes": _lib_bytes(sorted(np_libs.glob("libscipy_openblas*"))),
        "numpy_libs_bytes": _lib_bytes(sorted(np_libs.glob("*.so*"))),
        "torch_lib_bytes": _lib_bytes(sorted(torch_lib.glob("*.so*"))),
        "zerostart_kernels_bytes": {p: k.path.stat().st_size for p, k in ours.items()},
    }
    startup = {
        "import_numpy_ms": _import_ms("import numpy"),
        "import_torch_ms": _import_ms("import torch"),
    }
    result = {
        "benchmark": "gemm_cpu",
        "machine": {**machine_description(), "cpu_flags": sorted(flags)},
        "threads": args.threads,
        "method": "engines interleaved call by call; median of --iters rounds",
        "products": rows_out,
        "closure": closure,
        "startup": startup,
        "load_average_after": list(os.getloadavg()),
    }
    print(closure, startup)
    write_result("gemm_cpu", result)


if __name__ == "__main__":
    main()
