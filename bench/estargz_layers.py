"""eStargz layers vs the plain gzip layers they replace: build time, size, TOC index time.

Traces the worker and computes the closure once, then writes the same three
layers (runtime, application, model) of a model's CPU image ``--runs`` times
each as plain gzip (one gzip stream, path order: what ``zerostart build``
wrote before) and as eStargz (a gzip member per file or 4 MiB chunk, read
order first, TOC, footer), both at zlib level 6, and reports per layer the
median write time and the bytes. Then it times what a lazy mount needs before
it can answer ``getattr``: footer + TOC read, decompressed, parsed and
validated for all layers, (a) in this process (median of ``--runs``) and (b)
in a fresh interpreter, imports of :mod:`zerostart.estargz` included
(interpreter start-up excluded; the mount target is 50 ms). The registry
round trips of a real mount are imagefs's to measure (bench/lazy.py).

The machine is shared: the load average is recorded with the result.

    python bench/estargz_layers.py [--model minilm-embed] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, bundle_dir, write_result
from zerostart import estargz
from zerostart.benchmark import machine_description
from zerostart.bundle.manifest import Manifest
from zerostart.image.build import BuildOptions, app_package_dir, layer_contents
from zerostart.image.closure import build_closure
from zerostart.image.layers import write_layer
from zerostart.image.readorder import read_order
from zerostart.image.trace import trace_worker

MB = 1e6
FRESH_INDEX = r"""
import sys, time
t0, c0 = time.perf_counter(), time.process_time()
from zerostart.estargz import read_toc
t1, c1 = time.perf_counter(), time.process_time()
tocs = [read_toc(p) for p in sys.argv[1:]]
t2, c2 = time.perf_counter(), time.process_time()
print((t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (c1 - c0) * 1e3, (c2 - c1) * 1e3)
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    bundle = bundle_dir(args.model)
    manifest = Manifest.load(bundle)
    options = BuildOptions()
    trace = trace_worker(
        bundle,
        manifest.task,
        python=options.python,
        pythonpath=[os.path.dirname(app_package_dir())],
    )
    closure = build_closure(trace, app_package_dir(), exclude_driver_libraries=True)
    order = read_order(trace, closure, bundle=bundle)
    layers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zerostart-bench-esgz-") as work:
        contents = layer_contents(bundle, closure, Path(work) / "src", options)
        paths: list[str] = []
        for name, entries in contents:
            row: dict[str, Any] = {}
            for compression in ("gzip", "estargz"):
                times, cpu = [], []
                for i in range(args.runs):
                    out = Path(work) / f"{compression}-{i}"
                    t0, c0 = time.perf_counter(), time.process_time()
                    blob = write_layer(
                        name, entries, out, compression=compression, prioritized=order
                    )
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                row[compression] = {
                    "write_s_median": round(statistics.median(times), 3),
                    "write_s_all": [round(t, 3) for t in times],
                    # CPU seconds of this process: what the format costs, less the machine's load
                    "write_cpu_s_median": round(statistics.median(cpu), 3),
                    "compressed_mb": round(blob.size / MB, 3),
                    "uncompressed_mb": round(blob.uncompressed_size / MB, 3),
                }
                if compression == "estargz":
                    toc = estargz.read_toc(blob.path)
                    row[compression] |= {
                        "toc_entries": len(toc.entries),
                        "prefetch_mb": round(toc.prefetch_end / MB, 3),
                        "prefetch_fraction": round(toc.prefetch_end / blob.size, 3),
                    }
                    paths.append(blob.path)
            g, e = row["gzip"], row["estargz"]
            row["size_ratio_estargz_over_gzip"] = round(e["compressed_mb"] / g["compressed_mb"], 4)
            row["time_ratio_estargz_over_gzip"] = round(
                e["write_s_median"] / g["write_s_median"], 3
            )
            row["cpu_ratio_estargz_over_gzip"] = round(
                e["write_cpu_s_median"] / g["write_cpu_s_median"], 3
            )
            layers[name] = row
        index_ms = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            for p in paths:
                estargz.read_toc(p)
            index_ms.append((time.perf_counter() - t0) * 1e3)
        # compiled modules, as an image ships them: a first run writes the pycs
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONPYCACHEPREFIX=f"{work}/pyc")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        fresh = []
        for i in range(args.runs + 1):
            done = subprocess.run(
                [sys.executable, "-c", FRESH_INDEX, *paths],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
                env=env,
            )
            if i:
                fresh.append([float(x) for x in done.stdout.split()])
    total = {
        c: round(sum(layers[n][c]["compressed_mb"] for n in layers), 3) for c in ("gzip", "estargz")
    }
    result = {
        "machine": machine_description() | {"loadavg": os.getloadavg()},
        "model": args.model,
        "runs": args.runs,
        "gzip_level": 6,
        "chunk_size_bytes": estargz.DEFAULT_CHUNK_SIZE,
        "layers": layers,
        "total_compressed_mb": total,
        "total_size_ratio_estargz_over_gzip": round(total["estargz"] / total["gzip"], 4),
        "toc_index_all_layers_ms": {
            "in_process_median": round(statistics.median(index_ms), 2),
            "fresh_process_with_import_median": round(statistics.median(f[0] for f in fresh), 2),
            "fresh_process_import_only_median": round(statistics.median(f[1] for f in fresh), 2),
            "fresh_process_index_only_median": round(statistics.median(f[2] for f in fresh), 2),
            # CPU milliseconds of that process: the cost without the other engineers' load
            "fresh_process_import_cpu_median": round(statistics.median(f[3] for f in fresh), 2),
            "fresh_process_index_cpu_median": round(statistics.median(f[4] for f in fresh), 2),
            "target": 50,
        },
        "note": "load average in machine.loadavg: other engineers share these 2 cores",
    }
    write_result("estargz_layers", result)
    for name, row in layers.items():
        g, e = row["gzip"], row["estargz"]
        print(
            f"{name:12s} gzip {g['compressed_mb']:8.2f} MB {g['write_cpu_s_median']:6.2f} cpu-s | "
            f"estargz {e['compressed_mb']:8.2f} MB {e['write_cpu_s_median']:6.2f} cpu-s "
            f"(x{row['size_ratio_estargz_over_gzip']} bytes, x{row['cpu_ratio_estargz_over_gzip']} cpu)"
        )
    print(json.dumps(result["toc_index_all_layers_ms"]))


if __name__ == "__main__":
    main()
