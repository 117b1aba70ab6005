"""The worker's imports with the cyclic GC on and paused: CPU time of fresh interpreters.

    python bench/startup_gc.py [--runs 15] [--out startup_gc]

Each run starts two fresh interpreters, interleaved: one imports what the
worker imports (``zerostart.serve.__main__``, the server, the pipeline, the
native engine, the tokenizer) with the collector on, the other the same after
``gc.disable()`` (what ``Startup.begin(pause_gc=True)`` does in the worker).
CPU time (user + system of the child, from ``RUSAGE_CHILDREN``) is reported
beside the wall time, because on a shared machine it moves much less with load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_result
from zerostart.benchmark import machine_description

IMPORTS = (
    "import sys; sys.modules['ssl'] = None; "
    "import zerostart.serve.__main__, zerostart.serve.server, zerostart.pipeline, "
    "zerostart.engine.cpu_native, zerostart.tokenize"
)
VARIANTS = {"gc_on": IMPORTS, "gc_paused": "import gc; gc.disable(); " + IMPORTS}


def one(code: str) -> tuple[float, float]:
    """(CPU ms, wall ms) of a fresh interpreter running ``code``."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return cpu * 1e3, wall * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default="startup_gc")
    args = ap.parse_args()
    load_before = os.getloadavg()
    cpu: dict[str, list[float]] = {k: [] for k in VARIANTS}
    wall: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(args.runs):
        for name, code in VARIANTS.items():
            c, w = one(code)
            cpu[name].append(c)
            wall[name].append(w)
    result = {
        "what": "fresh interpreter importing the worker's modules, GC on vs paused",
        "runs": args.runs,
        "variants": {
            k: {
                "cpu_ms_median": round(statistics.median(cpu[k]), 1),
                "cpu_ms_min": round(min(cpu[k]), 1),
                "wall_ms_median": round(statistics.median(wall[k]), 1),
            }
            for k in VARIANTS
        },
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_description(),
    }
    on, off = (statistics.median(cpu[k]) for k in ("gc_on", "gc_paused"))
    result["cpu_saved_fraction"] = round(1 - off / on, 3)
    print(f"GC on {on:.1f} ms CPU, paused {off:.1f} ms CPU ({100 * (1 - off / on):.1f} % less)")
    write_result(args.out, result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
