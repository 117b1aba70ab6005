"""Measure every compiled GEMM block config on this GPU and write the best per (N, K, M).

Runs on the GPU machine (scripts/gpu_session.sh's ``tune`` step), against a
``kernels/`` folder compiled with ``zerostart.kernels.variants.TUNING_GEMM_CONFIGS``
(tools/gpu_prep.py writes one for bench/gpu.py's bert-base shape). Only the
plain epilogue (no activation, no residual, aligned) is timed: the epilogue
adds the same few instructions to every config.

For each GEMM shape of the models we ship (bert-base and MiniLM widths; the
GEMM sites QKV, attention output, FFN up and down) and each M (batch x
sequence bucket rows), every config that can run the shape is checked against
numpy once (max abs difference on a fixed input; a config over the fp16
tolerance is excluded and named), then captured ``REPS`` times into a CUDA
graph, each launch on its own copy of the weights (as successive layers read
different weights: a GEMM repeated on the same weights reads them from L2 and
favours other configs), and timed with CUDA events over ``ROUNDS`` graph
launches: the time per GEMM as it runs inside the engine's graphs, launch
gaps included. The result
file is what ``zerostart convert --gemm-tuning`` and
``src/zerostart/kernels/tuning/<arch>.json`` hold::

    {"arch": "sm_90", "gpu": ..., "driver_version": ..., "machine": {...},
     "choices": [{"n", "k", "m", "config", "us", "rule_config", "rule_us"}],
     "timings_us": {"N,K,M": {config: us}}, "rejected": [...]}

    python tools/gpu_tune.py --kernels .gpu/bench/kernels --out OUT/tuning.json [--budget-s 150]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# (N, K) of the GEMM sites: QKV (3H, H), attention output (H, H), FFN up (I, H), FFN down (H, I).
SHAPES = {
    "bert-base": [(2304, 768), (768, 768), (3072, 768), (768, 3072)],
    "minilm": [(1152, 384), (384, 384), (1536, 384), (384, 1536)],
}
ROWS = (16, 64, 128, 256, 512, 1024, 4096, 16384)  # b x t of the buckets served most
REPS = 20  # GEMMs per graph
ROUNDS = 5  # graph launches timed
TOLERANCE = 0.05  # max abs vs numpy, inputs ~N(0, 1) / sqrt(K) so outputs are O(1)
CHECK_ROWS = 128  # the M at which every config's output is checked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop measuring after this")
    ap.add_argument("--models", default=",".join(SHAPES), help=f"of {sorted(SHAPES)}")
    ap.add_argument(
        "--no-check", action="store_true", help="skip the numpy check (dry runs: fake kernels)"
    )
    args = ap.parse_args(argv)

    from zerostart.benchmark import machine_description
    from zerostart.bundle.launch import KernelManifest, gemm_config_name, select_gemm
    from zerostart.engine.cuda.driver import (
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        Driver,
    )
    from zerostart.engine.cuda.module import KernelLibrary
    from zerostart.kernels.variants import DEFAULT_GEMM_CONFIGS

    t_start = time.perf_counter()
    drv = Driver.load()
    drv.init()
    dev = drv.device(0)
    cc = drv.compute_capability(dev)
    arch = f"sm_{cc}"
    ctx = drv.primary_context(dev)
    shapes = [s for m in args.models.split(",") for s in SHAPES[m]]
    result: dict[str, Any] = {
        "arch": arch,
        "gpu": drv.device_name(dev),
        "driver_version": drv.version(),
        "machine": machine_description(),
        "method": f"CUDA events over {ROUNDS} launches of a graph of {REPS} GEMMs",
        "choices": [],
        "timings_us": {},
        "rejected": [],
        "complete": False,
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")

    with drv.current(ctx):
        km = KernelManifest.load(args.kernels)
        optin = drv.device_attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev)
        sms = drv.device_attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)
        lib = KernelLibrary(drv, args.kernels, km, cc, optin)
        cands = [
            v
            for v in km.variants
            if v.op == "gemm"
            and v.params.get("ACT") == 0
            and v.params.get("HAS_RES") == 0
            and v.params.get("ALIGNED") == 1
            and lib.fits(v)
        ]
        print(f"{arch} {result['gpu']}: {len(cands)} configs", flush=True)
        # "rule": what an untuned bundle (the default configs only) would run
        defaults = {c.name for c in DEFAULT_GEMM_CONFIGS}
        km_default = replace(
            km,
            variants=tuple(
                v for v in km.variants if v.op != "gemm" or gemm_config_name(v) in defaults
            ),
        )
        max_m, max_n = max(ROWS), max(n for n, _ in shapes)
        max_k = max(k for _, k in shapes)
        rng = np.random.default_rng(0)
        a_host = rng.standard_normal((max_m, max_k)).astype(np.float16)
        b_host = (rng.standard_normal((max_k, max_n)) / np.sqrt(max_k)).astype(np.float16)
        bias_host = rng.standard_normal(max_n).astype(np.float16)
        stream = drv.stream_create()
        a = drv.mem_alloc(a_host.nbytes)
        # REPS weight copies, one per GEMM of a graph: each reads its own weights, as the
        # layers of a forward pass do (a bert-base layer's 14 MB do not stay in L2 across a
        # pass; MiniLM's whole encoder fits, and so do its 20 copies): not L2-hot repeats.
        bs = [drv.mem_alloc(b_host.nbytes) for _ in range(REPS)]
        bias, c = drv.mem_alloc(bias_host.nbytes), drv.mem_alloc(max_m * max_n * 2)
        for dst, src in ((a, a_host), *((b, b_host) for b in bs), (bias, bias_host)):
            drv.memcpy_htod(dst, src.ctypes.data, src.nbytes, stream)
        drv.stream_synchronize(stream)
        ev0, ev1 = drv.event_create(), drv.event_create()
        out_host = np.empty(max_m * max_n, np.float16)

        def args_for(m: int, n: int, k: int, rep: int = 0) -> dict[str, int | float]:
            # B is contiguous [K, N] for the kernel: the buffer's first K*N values.
            return {
                "a_ptr": a,
                "b_ptr": bs[rep % len(bs)],
                "bias_ptr": bias,
                "res_ptr": c,
                "c_ptr": c,
                "M": m,
                "N": n,
                "K": k,
                "lda": k,
                "ldc": n,
            }

        def check(v: Any, m: int, n: int, k: int, want: np.ndarray) -> float:
            lib.launch(v, {"M": m, "N": n}, args_for(m, n, k), stream)
            drv.memcpy_dtoh(out_host.ctypes.data, c, m * n * 2, stream)
            drv.stream_synchronize(stream)
            got = out_host[: m * n].reshape(m, n).astype(np.float32)
            return float(np.abs(got - want).max())

        def time_us(v: Any, m: int, n: int, k: int) -> float:
            drv.begin_capture(stream)
            try:
                for rep in range(REPS):
                    lib.launch(v, {"M": m, "N": n}, args_for(m, n, k, rep), stream)
            finally:
                graph = drv.end_capture(stream)
            exe = drv.graph_instantiate(graph)
            drv.graph_destroy(graph)
            try:
                drv.graph_launch(exe, stream)  # warm-up
                drv.event_record(ev0, stream)
                for _ in range(ROUNDS):
                    drv.graph_launch(exe, stream)
                drv.event_record(ev1, stream)
                drv.event_synchronize(ev1)
                return drv.event_elapsed_ms(ev0, ev1) * 1e3 / (ROUNDS * REPS)
            finally:
                drv.call("cuGraphExecDestroy", ctypes.c_void_p(exe))

        bad: set[str] = set()
        for n, k in shapes:
            # the kernel reads A (lda = K) and B as contiguous M x K and K x N: the buffers' first values
            b_view = b_host.reshape(-1)[: k * n].reshape(k, n).astype(np.float32)
            a_view = a_host.reshape(-1)[: CHECK_ROWS * k].reshape(CHECK_ROWS, k)  # lda = K
            want = a_view.astype(np.float32) @ b_view
            want += bias_host[:n].astype(np.float32)
            runnable = [v for v in cands if k % v.params["BLOCK_K"] == 0]
            for v in [] if args.no_check else runnable:
                err = check(v, CHECK_ROWS, n, k, want)
                if not err <= TOLERANCE:
                    bad.add(gemm_config_name(v))
                    result["rejected"].append(
                        {"n": n, "k": k, "config": gemm_config_name(v), "max_abs": err}
                    )
                    print(
                        f"REJECTED {gemm_config_name(v)} at N={n} K={k}: max abs {err:.3g}",
                        flush=True,
                    )
            runnable = [v for v in runnable if gemm_config_name(v) not in bad]
            if not runnable:
                print(f"N={n} K={k}: no config gives correct results; shape skipped", flush=True)
                continue
            for m in ROWS:
                if time.perf_counter() - t_start > args.budget_s:
                    print("budget spent: partial result", flush=True)
                    save()
                    return 0
                times = {gemm_config_name(v): time_us(v, m, n, k) for v in runnable}
                rule = select_gemm(
                    km_default, act=0, has_res=False, m=m, n=n, k=k, lda=k, ldc=n, sm_count=sms,
                    fits=lib.fits,
                )  # fmt: skip
                rule_name = gemm_config_name(rule)
                best = min(times, key=lambda name: times[name])
                result["timings_us"][f"{n},{k},{m}"] = {x: round(t, 2) for x, t in times.items()}
                result["choices"].append(
                    {
                        "n": n,
                        "k": k,
                        "m": m,
                        "config": best,
                        "us": round(times[best], 2),
                        "rule_config": rule_name,
                        "rule_us": round(times.get(rule_name, float("nan")), 2),
                    }
                )
                print(
                    f"N={n:5d} K={k:5d} M={m:6d}: {best:16s} {times[best]:8.2f} us"
                    f"  (rule {rule_name} {times.get(rule_name, float('nan')):8.2f} us)",
                    flush=True,
                )
                save()
        result["complete"] = True
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        save()
    drv.release_primary_context(dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
