"""Start paths of the platform, request -> first correct answer, for MiniLM embeddings on CPU.

    python bench/platform_start.py [--runs 10] [--model minilm-embed] [--out platform_start]
        [--paths warm_slot,cold_boot,snapshot] [--baseline-src OTHER_CHECKOUT/src]

Three paths, each through ``PathStarter.start`` (``zerostart.platform.starter``)
and then one ``POST /embed`` to the replica it returns; the clock starts
before ``start`` and stops when the answer has been read (its numbers are
checked against the first cold boot's answer):

* ``cold_boot`` (the anchor): no pool, no snapshot: ``python -m zerostart.serve
  BUNDLE`` from exec to ready, then the request;
* ``warm_slot``: a pool of one CPU slot, full before each run (its refill is not
  timed and does not overlap the run: the starter wakes it after the slot serves);
* ``snapshot``: a CRIU snapshot of the warmed worker named after the model,
  restored (root and CRIU needed, else recorded as skipped with the reason).

The first request goes, alternately, on the readiness check's connection
(``Replica.connections``, as the gateway sends it) and on a new one (as it did
before: two TCP connects per start); ``first_request_ms_median`` compares the
two in the same run.

Every process (slots, cold-booted workers, the snapshotted worker) gets the
same environment, with ``--blas-threads`` (default 1) as OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS / MKL_NUM_THREADS: on this 2-core machine shared by other work
(load average 4-8), OpenBLAS's spinning worker threads made a MiniLM first
batch take 0.3-0.8 s with 2 threads against 15-35 ms with 1 (measured in the
same minutes), which would measure the neighbours, not the start path.
``--blas-threads 0`` inherits the caller's environment instead.

``--baseline-src`` adds ``warm_slot_baseline``: a second pool whose slots run
another checkout's code (e.g. main before a change) with the canary that
checkout writes, interleaved with the others; the pool process itself is this
checkout's.

Runs are interleaved (slot, cold, snapshot, slot, cold, ...) so that load from
other work on the machine hits every path alike; the load average is recorded
before and after. The gateway is not in the path here (``bench/platform_gateway.py``
measures it); this is what a start path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import bundle_dir, write_result
from zerostart.benchmark import machine_description, summarize
from zerostart.platform.pool import WarmPool
from zerostart.platform.replica import ColdBootStarter
from zerostart.platform.starter import PathStarter
from zerostart.platform.upstream import UpstreamPool
from zerostart.platform_toml import ModelConfig
from zerostart.procs import free_port

BODY = json.dumps({"inputs": "I love this"}).encode()
ATOL = 1e-5
TARGET_WARM_SLOT_MS = 15.0  # issue 19
BLAS_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)  # issue 10's target on this machine


async def first_answer(
    starter: PathStarter, model: ModelConfig, handed_on: bool
) -> tuple[float, float, Any, Any]:
    """Seconds from start() to the first /embed answer, seconds of that request alone, the
    answer, and the replica. ``handed_on``: send it on the readiness check's connection
    (``Replica.connections``, as the gateway does), else on a new one (as before issue 22)."""
    t0 = time.perf_counter()
    replica = await starter.start(model)
    t1 = time.perf_counter()
    pool = replica.connections if handed_on else None
    if pool is None:
        pool = UpstreamPool(replica.host, replica.port, max_idle=1)
    try:
        response = await pool.request(
            "POST",
            "/embed",
            [("content-type", "application/json")],
            BODY,
            timeout_s=60,
            max_body_bytes=1 << 20,
        )
    finally:
        pool.close()
    t2 = time.perf_counter()
    if response.status != 200:
        raise SystemExit(f"{replica.start_path}: HTTP {response.status}: {response.body[:200]!r}")
    return t2 - t0, t2 - t1, np.array(json.loads(response.body)), replica


def take_snapshot(model: ModelConfig, store: Path, env: dict[str, str]) -> str | None:
    """Snapshot the warmed worker as ``model.name``; the reason when it cannot be done."""
    if os.geteuid() != 0:
        return "needs root (CRIU)"
    from zerostart.snapshot import Warmup, criu_version, snapshot

    try:
        criu_version()
        cmd = [sys.executable, "-m", "zerostart.serve", model.source, "--port", str(free_port())]
        taken = snapshot(
            model.name, cmd, warmup=Warmup("/embed", json.loads(BODY)), store=store, env=env
        )
        print(f"snapshot taken: {taken.size_bytes / 1e6:.1f} MB", flush=True)
    except Exception as exc:  # any reason is reported, not raised: the other paths still run
        return f"{type(exc).__name__}: {exc}"
    return None


def phase_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    names = list(dict.fromkeys(k for s in samples for k in s))
    return {k: round(statistics.median(s[k] for s in samples if k in s), 3) for k in names}


def baseline_canary(src: Path, out: Path, env: dict[str, str]) -> Path:
    """The canary as the checkout at ``src`` writes it (its own format and engine)."""
    code = (  # model.canary since issue 19's slot work; engine.canary before
        "import sys\ntry:\n from zerostart.model.canary import write_canary\n"
        "except ImportError:\n from zerostart.engine.canary import write_canary\n"
        "write_canary(sys.argv[1])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out)],
        check=True,
        timeout=600,
        env=dict(env, PYTHONPATH=str(src)),
    )
    return out


async def bench(
    bundle: Path,
    runs: int,
    work: Path,
    env: dict[str, str],
    wanted: list[str],
    baseline_src: Path | None,
) -> dict[str, Any]:
    model = ModelConfig(name="minilm", source=str(bundle))
    store = work / "snapshots"
    snapshot_skip = take_snapshot(model, store, env) if "snapshot" in wanted else "not asked for"
    pool = WarmPool({"cpu": 1}, run_dir_parent=work, env=env)
    await pool.start()
    pools = [pool]
    starters = {
        "warm_slot": PathStarter(pool, snapshots=False),
        "cold_boot": PathStarter(None, cold=ColdBootStarter(env=env), snapshots=False),
        "snapshot": PathStarter(None, snapshot_store=store),
    }
    if baseline_src is not None:
        base_env = dict(env, PYTHONPATH=str(baseline_src))
        canary = baseline_canary(baseline_src, work / "baseline-canary", base_env)
        base_pool = WarmPool({"cpu": 1}, run_dir_parent=work, env=base_env, canary=canary)
        await base_pool.start()
        pools.append(base_pool)
        starters["warm_slot_baseline"] = PathStarter(base_pool, snapshots=False)
        wanted = [*wanted, "warm_slot_baseline"]
    paths = [p for p in wanted if p != "snapshot" or not snapshot_skip]
    times: dict[str, list[float]] = {p: [] for p in paths}
    # the first request alone, on the readiness check's connection or a new one (alternating)
    request_s: dict[str, dict[str, list[float]]] = {p: {"handed_on": [], "new": []} for p in paths}
    phases: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    reference = None
    load_before = os.getloadavg()
    try:
        for i in range(runs):
            for path in paths:
                for p in pools:
                    await p.wait_ready("cpu", timeout_s=120)
                handed_on = i % 2 == 0
                seconds, request, answer, replica = await first_answer(
                    starters[path], model, handed_on
                )
                request_s[path]["handed_on" if handed_on else "new"].append(request)
                await replica.stop()
                if replica.start_path != path.removesuffix("_baseline"):
                    raise SystemExit(
                        f"wanted {path}, got {replica.start_path}: {replica.fallbacks}"
                    )
                reference = answer if reference is None else reference
                if not np.allclose(answer, reference, atol=ATOL):
                    raise SystemExit(f"{path}: the answer differs from the first cold boot's")
                times[path].append(seconds)
                phases[path].append(dict(replica.phases_ms))
                print(f"  {i + 1}/{runs} {path}: {seconds * 1e3:.1f} ms {replica.phases_ms}")
    finally:
        load_after = os.getloadavg()
        pool_counts = pool.snapshot()
        for s in starters.values():
            await s.close()
    out: dict[str, Any] = {
        "what": "PathStarter.start -> first correct POST /embed answer (MiniLM), per start path",
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "paths": {
            p: {
                "first_answer_ms": {k: round(v * 1e3, 2) for k, v in summarize(times[p]).items()}
                | {"n": len(times[p])},
                "phases_ms_median": phase_medians(phases[p]),
                "first_request_ms_median": {
                    k: round(statistics.median(v) * 1e3, 3) for k, v in request_s[p].items() if v
                },
            }
            for p in paths
        },
        "pool": pool_counts,
    }
    if snapshot_skip and "snapshot" in wanted:
        out["paths"]["snapshot"] = {"skipped": snapshot_skip}
    if "cold_boot" in times:
        cold = statistics.median(times["cold_boot"])
        for p in paths:
            out["paths"][p]["speedup_over_cold_boot"] = round(cold / statistics.median(times[p]), 2)
    if baseline_src is not None:
        out["baseline_src"] = "another checkout's slots (--baseline-src): main before this change"
    slot_ms = statistics.median(times["warm_slot"]) * 1e3
    out["target_warm_slot_ms"] = TARGET_WARM_SLOT_MS
    out["warm_slot_meets_target"] = slot_ms <= TARGET_WARM_SLOT_MS
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--out", default="platform_start")
    ap.add_argument("--blas-threads", type=int, default=1, help="0: inherit the environment")
    ap.add_argument("--paths", default="warm_slot,cold_boot,snapshot", help="start paths to run")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ for its slots")
    args = ap.parse_args()
    bundle = bundle_dir(args.model)
    env = dict(os.environ)
    if args.blas_threads > 0:
        for name in BLAS_THREAD_VARS:
            env[name] = str(args.blas_threads)
    with tempfile.TemporaryDirectory(prefix="zs-platform-start-") as tmp:
        result = asyncio.run(
            bench(bundle, args.runs, Path(tmp), env, args.paths.split(","), args.baseline_src)
        )
    result["machine"] = machine_description()
    result["model"] = args.model
    result["worker_env"] = {k: env.get(k) for k in BLAS_THREAD_VARS}
    for p, r in result["paths"].items():
        if "first_answer_ms" in r:
            print(
                f"{p:18s} median {r['first_answer_ms']['median']:7.1f} ms  "
                f"({r.get('speedup_over_cold_boot', '-')}x cold boot)  {r['phases_ms_median']}"
            )
        else:
            print(f"{p:10s} skipped: {r['skipped']}")
    write_result(Path(args.out).stem, result)


if __name__ == "__main__":
    main()
