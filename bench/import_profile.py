"""Where the worker's imports go: ``python -X importtime -m zerostart.serve BUNDLE``, grouped.

    python bench/import_profile.py [--model minilm-embed] [--runs 5] [--out import_profile]
        [--baseline-src OTHER_CHECKOUT/src [--import-runs 20]]

Each run starts a fresh worker with ``-X importtime``, sends one request, stops
it, and parses the import log on its stderr. Every module's *self* time (its
own body, not what it imports) is summed per top-level package (``asyncio``
for ``asyncio.base_events``, ``zerostart.serve`` for our serving modules),
median over runs, ms of wall time with importtime's own overhead (~10-20 %);
then per group: zerostart's own modules, httptools, the standard library.
The load average is recorded: on a shared machine only the shares are worth
comparing across runs.

``--baseline-src`` adds an interleaved comparison of the imports alone: a fresh
interpreter imports the worker's modules (GC paused, as the entry point does)
from this checkout, then from the other one, ``--import-runs`` times each;
wall and CPU milliseconds (CPU moves less with the neighbours' load), medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import bundle_dir, write_result
from zerostart.benchmark import machine_description, sample_request
from zerostart.bundle.manifest import Manifest
from zerostart.procs import free_port

# A fresh interpreter imports what the worker imports, timing every @dataclass decoration
# (dataclasses._process_class: it compiles __init__, __repr__, __eq__, __hash__ and the
# frozen __setattr__/__delattr__ with exec, one by one) against the whole import.
DATACLASS_PROBE = r"""
import json, sys, time
sys.modules["ssl"] = None  # as the worker's entry point does
t0 = time.perf_counter()
import dataclasses
process, spent, count = dataclasses._process_class, [0.0], [0]
def timed(*args, **kwargs):
    t = time.perf_counter()
    try:
        return process(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - t
        count[0] += 1
dataclasses._process_class = timed
import zerostart.serve.__main__, zerostart.serve.server, zerostart.pipeline
import zerostart.engine.cpu_native, zerostart.tokenize
total = time.perf_counter() - t0
print(json.dumps({"classes": count[0], "ms": spent[0] * 1e3, "imports_ms": total * 1e3}))
"""
IMPORT_PROBE = r"""
import gc, json, sys, time
gc.disable()  # as the worker's entry point does for start-up (serve/startup.py)
sys.modules["ssl"] = None
t0, c0 = time.perf_counter(), time.process_time()
import zerostart.serve.__main__, zerostart.serve.server, zerostart.pipeline
import zerostart.engine.cpu_native, zerostart.tokenize
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "modules": len(sys.modules)}))
"""
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")
START_TIMEOUT_S = 60.0


def package(name: str) -> str:
    """The package a module's time is charged to: zerostart's subpackages apart."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "zerostart" and len(parts) > 1 else parts[0]


def top_level(log: str) -> list[tuple[str, float]]:
    """(package, self µs) summed over every module the log lists."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = LINE.match(line)
        if m:
            key = package(m.group(4))
            out[key] = out.get(key, 0.0) + float(m.group(1))
    return list(out.items())


def one_run(bundle: Path, route: str, body: Any) -> list[tuple[str, float]]:
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-X", "importtime", "-m", "zerostart.serve", str(bundle)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode()
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not answer: {proc.stderr}") from None
                time.sleep(0.02)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    return top_level(err)


def probe(code: str, src: Path | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (``src`` on PYTHONPATH if given); its JSON line."""
    env = dict(os.environ) if src is None else dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def compare_imports(baseline_src: Path, runs: int) -> dict[str, Any]:
    """The worker's imports, this checkout vs ``baseline_src``, interleaved; medians."""
    ours_src = Path(__file__).resolve().parent.parent / "src"
    samples: dict[str, list[dict[str, Any]]] = {"this": [], "baseline": []}
    decorations: dict[str, list[dict[str, Any]]] = {"this": [], "baseline": []}
    load_before = os.getloadavg()
    for _ in range(runs):
        for name, src in (("this", ours_src), ("baseline", baseline_src)):
            samples[name].append(probe(IMPORT_PROBE, src))
            if len(decorations[name]) < 5:
                decorations[name].append(probe(DATACLASS_PROBE, src))
    out: dict[str, Any] = {
        "what": "fresh interpreter, GC paused: import the worker's modules; ms, medians",
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
    for name, rows in samples.items():
        out[name] = {
            "wall_ms": round(statistics.median(r["wall_ms"] for r in rows), 1),
            "cpu_ms": round(statistics.median(r["cpu_ms"] for r in rows), 1),
            "modules": rows[0]["modules"],
            "dataclass_decorations": decorations[name][0]["classes"],
            "dataclass_ms": round(statistics.median(d["ms"] for d in decorations[name]), 1),
        }
    return out


def group_of(name: str) -> str:
    if name.startswith("zerostart"):
        return "zerostart"
    if name.startswith("httptools"):
        return "httptools"
    return "stdlib"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="import_profile")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare with")
    ap.add_argument("--import-runs", type=int, default=20, help="runs of the import comparison")
    args = ap.parse_args()
    bundle = bundle_dir(args.model)
    route, body, _ = sample_request(Manifest.load(bundle).task)
    load_before = os.getloadavg()
    runs = [one_run(bundle, route, body) for _ in range(args.runs)]
    per_module: dict[str, list[float]] = {}
    for run in runs:
        for name, us in run:
            per_module.setdefault(name, []).append(us)
    medians = {k: statistics.median(v) / 1e3 for k, v in per_module.items()}
    probes = [probe(DATACLASS_PROBE) for _ in range(args.runs)]
    dataclass_ms = statistics.median(p["ms"] for p in probes)
    imports_ms = statistics.median(p["imports_ms"] for p in probes)
    share = dataclass_ms / imports_ms if imports_ms else 0.0
    groups: dict[str, float] = {}
    for name, ms in medians.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    total = sum(groups.values())
    ranked = sorted(medians.items(), key=lambda kv: -kv[1])
    result = {
        "what": "python -X importtime -m zerostart.serve BUNDLE: self ms summed per top-level "
        "package, medians over fresh workers",
        "model": args.model,
        "runs": args.runs,
        "total_ms": round(total, 1),
        "groups_ms": {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "per_package_ms": {k: round(v, 2) for k, v in ranked},
        "dataclass_decorations": {
            "classes": probes[0]["classes"],
            "median_ms": round(dataclass_ms, 1),
            "imports_median_ms": round(imports_ms, 1),
            "share": round(share, 3),
        },
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_description(),
    }
    if args.baseline_src is not None:
        result["imports_vs_baseline"] = compare_imports(args.baseline_src, args.import_runs)
        for name in ("this", "baseline"):
            row = result["imports_vs_baseline"][name]
            print(f"imports, {name}: {row}")
    for name, ms in ranked[:25]:
        print(f"{ms:7.1f} ms  {100 * ms / total:4.1f} %  {name}")
    print(f"total {total:.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in groups.items()))
    print(
        f"{probes[0]['classes']} @dataclass decorations: {dataclass_ms:.1f} ms of "
        f"{imports_ms:.1f} ms of imports ({100 * share:.0f} %)"
    )
    write_result(args.out, result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
