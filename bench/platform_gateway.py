"""The platform through its gateway: added latency, first answer from zero per start path, a trace.

    python bench/platform_gateway.py [--runs 10] [--latency-requests 2000] [--trace-seconds 45]
    python bench/platform_gateway.py --only latency --latency-requests 5000 --out platform_latency

Everything goes through a real gateway (``zerostart.platform.gateway.serve``)
in its own process, on loopback, and a client in this process:

1. **Gateway added latency** on a warm replica: the same keep-alive client
   calls the replica directly and through the gateway, alternately, N times
   each (``GET /health``: forwarding only; ``POST /embed``: a real answer).
   Added latency = the gateway's percentile minus the direct one.
2. **Request -> first correct answer at zero replicas**, per start path, each
   path behind its own gateway: ``cold_boot`` (``ColdBootStarter``),
   ``warm_slot`` (``PathStarter`` with a one-slot warm pool), ``snapshot``
   (``PathStarter`` restoring a CRIU snapshot of the warmed worker; root and
   CRIU needed, else skipped with the reason), and the **anchor**: a PyTorch +
   transformers server (``bench/anchors/torch_server.py``) started on demand by
   the same gateway. Runs interleave the paths so load from other work on the
   machine hits them alike; before each run the model is back at zero (and the
   pool full). Every answer is checked against the first one.
3. **Trace replay**: three models behind one gateway (warm pool of two slots,
   ``idle_timeout`` 2 s), a seeded bursty trace (bursts of 5-40 requests,
   gaps of 3-8 s, longer than the idle timeout): p50/p99 latency, cold starts
   by path, replica-seconds up and idle, against an always-on replica per model.

Worker processes get one BLAS thread (``--blas-threads``): several share two
cores here, and OpenBLAS's spinning threads otherwise measure the neighbours
(bench/platform_start.py). The load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import ROOT, bundle_dir, model_dir, write_result
from zerostart.benchmark import machine_description, request_json
from zerostart.platform._types import Replica, Starter
from zerostart.procs import free_port

BODY = {"inputs": "I love this"}
ATOL_OURS = 1e-5  # the same engine, any start path
ATOL_ANCHOR = 1e-4  # PyTorch fp32 against our numpy engine
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS = 1.0, 5.0
SLOTS_TRACE = 2  # warm slots behind the trace's gateway (three models)
WORKER_KEY = "bench-worker-key"
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
READY = re.compile(r"gateway on http://127\.0\.0\.1:(\d+)")


# -- the gateway process (python bench/platform_gateway.py --gateway-process SPEC.json) -------------


class AnchorProcess:
    """bench/anchors/torch_server.py as a replica's process: a PyTorch + transformers server."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pid = proc.pid
        self._proc = proc

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    async def stop(self, timeout_s: float) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            deadline = time.monotonic() + timeout_s
            while self._proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.kill()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class AnchorStarter(Starter):
    """Starts the anchor server for a model folder (``ModelConfig.source``) and waits for /health."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.replicas: list[Replica] = []

    async def start(self, model: Any) -> Replica:
        t0 = time.perf_counter()
        port = free_port()
        script = ROOT / "bench" / "anchors" / "torch_server.py"
        proc = subprocess.Popen(
            [sys.executable, str(script), model.source, "--port", str(port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        replica = Replica(model.name, AnchorProcess(proc), port, "cold_boot")
        self.replicas.append(replica)
        while True:
            if proc.poll() is not None:
                from zerostart.platform.errors import StartError

                raise StartError(model.name, f"anchor exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.005)
        replica.total_ms = (time.perf_counter() - t0) * 1e3
        return replica

    async def close(self) -> None:
        for r in self.replicas:
            await r.stop(5.0)


def gateway_process(spec_path: str) -> None:
    """Run one gateway for the benchmark until SIGTERM (the spec says which starter)."""
    from zerostart.platform.gateway import serve
    from zerostart.platform.pool import WarmPool
    from zerostart.platform.replica import ColdBootStarter
    from zerostart.platform.starter import PathStarter
    from zerostart.platform_toml import load

    spec = json.loads(Path(spec_path).read_text())
    config = load(spec["config"])
    env, key, kind = spec["env"], spec["worker_key"], spec["starter"]
    starter: Any
    if kind == "anchor":
        starter = AnchorStarter(env)
    elif kind == "cold_boot":
        starter = ColdBootStarter(env=env, worker_key=key)
    else:
        pool = WarmPool({"cpu": spec.get("slots", 1)}, env=env) if kind != "snapshot" else None
        starter = PathStarter(
            pool,
            cold=ColdBootStarter(env=env, worker_key=key),
            snapshots=kind == "snapshot",
            snapshot_store=spec.get("snapshot_store"),
            worker_key=key,
        )
    asyncio.run(serve(config, starter, worker_key=key))


# -- the client side ---------------------------------------------------------------------------


class Gateway:
    def __init__(
        self,
        work: Path,
        name: str,
        toml: str,
        starter: str,
        env: dict[str, str],
        src: Path = ROOT / "src",
        **spec: Any,
    ) -> None:
        """``src``: the zerostart sources the gateway and its workers run (another checkout's
        to compare with it in the same run)."""
        env = {**env, "PYTHONPATH": str(src)}
        cfg = work / f"{name}.toml"
        cfg.write_text("[gateway]\nport = 0\n" + toml)
        spec_path = work / f"{name}.json"
        full = {
            "config": str(cfg),
            "starter": starter,
            "env": env,
            "worker_key": WORKER_KEY,
            **spec,
        }
        spec_path.write_text(json.dumps(full))
        self.log = open(work / f"{name}.log", "w+b")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--gateway-process", str(spec_path)],
            stderr=self.log,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(src)},
        )
        deadline = time.monotonic() + 60
        self.port = 0
        while not self.port:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gateway {name} did not start: {self.text()[-2000:]}")
            if m := READY.search(self.text()):
                self.port = int(m.group(1))
            time.sleep(0.02)

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        return call(self.port, method, path, body)

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/status")[2]  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return str(self.call("GET", "/metrics")[2])

    def wait_zero(self, model: str, pool: bool = False, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = self.status()
            ready_slots = (s.get("starter") or {}).get("pool") or {}
            slot_ok = not pool or ready_slots.get("cpu", {}).get("ready", 0) >= 1
            if s["models"][model]["state"] == "zero" and slot_ok:
                return
            time.sleep(0.05)
        raise SystemExit(f"{model} did not reach zero: {self.status()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    return request_json(port, method, path, body, headers, timeout=120)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q))


def model_block(name: str, source: str, **keys: Any) -> str:
    lines = [f"[models.{name}]", f'bundle = "{source}"'] + [f"{k} = {v!r}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


# -- 1. added latency ----------------------------------------------------------------------------


def added_latency(
    work: Path, bundle: Path, env: dict[str, str], n: int, src: Path = ROOT / "src"
) -> dict[str, Any]:
    toml = "[pool]\ncpu = 0\n" + model_block(
        "embed", str(bundle), min_replicas=1, idle_timeout=3600
    )
    gw = Gateway(work, "latency", toml, "cold_boot", env, src)
    try:
        deadline = time.monotonic() + 60
        while gw.status()["models"]["embed"]["state"] != "ready":
            if time.monotonic() > deadline:
                raise SystemExit("no replica")
            time.sleep(0.05)
        replica = gw.status()["models"]["embed"]["replicas"][0]["port"]
        direct = http.client.HTTPConnection("127.0.0.1", replica, timeout=30)
        via = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        auth = {"authorization": f"Bearer {WORKER_KEY}", "content-type": "application/json"}
        body = json.dumps(BODY).encode()
        out: dict[str, Any] = {"requests_each": n}
        for label, method, path, data in (
            ("health", "GET", "/health", None),
            ("embed", "POST", "/embed", body),
        ):
            times: dict[str, list[float]] = {"direct": [], "gateway": []}
            cpu0 = cpu_seconds(gw.proc.pid)
            for i in range(n + 50):  # the first 50 of each warm connections and caches
                order = (("direct", direct, path), ("gateway", via, "/models/embed" + path))
                for which, conn, p in order if i % 2 else order[::-1]:
                    t0 = time.perf_counter()
                    conn.request(method, p, body=data, headers=auth)
                    resp = conn.getresponse()
                    resp.read()
                    dt = time.perf_counter() - t0
                    if resp.status != 200:
                        raise SystemExit(f"{which} {p}: HTTP {resp.status}")
                    if i >= 50:
                        times[which].append(dt * 1e3)
            row: dict[str, Any] = {
                w: {
                    "p50_ms": round(pct(t, 50), 4),
                    "p99_ms": round(pct(t, 99), 4),
                    "mean_ms": round(statistics.fmean(t), 4),
                }
                for w, t in times.items()
            }
            # the gateway process's own CPU per forwarded request: what the neighbours of a
            # loaded machine change least (clock ticks of 10 ms over n + 50 requests)
            row["gateway_cpu_ms_per_request"] = round(
                (cpu_seconds(gw.proc.pid) - cpu0) * 1e3 / (n + 50), 4
            )
            row["added_p50_ms"] = round(row["gateway"]["p50_ms"] - row["direct"]["p50_ms"], 4)
            row["added_p99_ms"] = round(row["gateway"]["p99_ms"] - row["direct"]["p99_ms"], 4)
            out[label] = row
            print(
                f"  {label}: direct p50 {row['direct']['p50_ms']:.3f} ms, via gateway {row['gateway']['p50_ms']:.3f} ms -> added p50 {row['added_p50_ms']:.3f} ms, p99 {row['added_p99_ms']:.3f} ms; gateway CPU {row['gateway_cpu_ms_per_request']:.3f} ms/request",
                flush=True,
            )
        out["target_added_p50_ms"], out["target_added_p99_ms"] = (
            TARGET_ADDED_P50_MS,
            TARGET_ADDED_P99_MS,
        )
        h = out["health"]
        out["meets_target"] = (
            h["added_p50_ms"] <= TARGET_ADDED_P50_MS and h["added_p99_ms"] <= TARGET_ADDED_P99_MS
        )
        direct.close()
        via.close()
        return out
    finally:
        gw.stop()


# -- 2. first answer from zero, per start path ---------------------------------------------------


def take_snapshot(bundle: Path, store: Path, env: dict[str, str]) -> str | None:
    """A CRIU snapshot of the warmed worker named ``embed``; the reason when it cannot be taken."""
    if os.geteuid() != 0:
        return "needs root (CRIU)"
    try:
        from zerostart.snapshot import criu_version, snapshot

        criu_version()
        cmd = [sys.executable, "-m", "zerostart.serve", str(bundle), "--port", str(free_port())]
        # No extra warm-up request: the worker runs its first batch before it listens, and
        # with the worker key set, an unauthenticated warm-up request would get 401.
        snapshot("embed", cmd, store=store, env={**env, "API_KEY": WORKER_KEY})
    except Exception as exc:  # reported, not raised: the other paths still run
        return f"{type(exc).__name__}: {exc}"
    return None


def from_zero(
    work: Path,
    bundle: Path,
    hf_dir: Path,
    env: dict[str, str],
    runs: int,
    only: set[str] | None = None,
    baseline: Path | None = None,
    src: Path = ROOT / "src",
) -> dict[str, Any]:
    """``only``: these paths; ``baseline``: another checkout's ``src``, whose gateways run the
    same paths interleaved with ours (``PATH@baseline`` in the result); ``src``: ours (a copy
    on the same file system as the baseline's, so that imports cost alike)."""
    store = work / "snapshots"
    skipped = {}
    if (only is None or "snapshot" in only) and (reason := take_snapshot(bundle, store, env)):
        skipped["snapshot"] = reason
    common = "[autoscaler]\ntick = 0.1\n[pool]\ncpu = 0\n"
    paths: dict[str, Gateway] = {}
    specs = {
        "warm_slot": ("warm_slot", str(bundle), {"slots": 1}),
        "cold_boot": ("cold_boot", str(bundle), {}),
        "snapshot": ("snapshot", str(bundle), {"snapshot_store": str(store)}),
        "anchor_torch": ("anchor", str(hf_dir), {}),
    }
    record: dict[str, dict[str, list[Any]]] = {}
    reference = None
    sources = {"": src} | ({"@baseline": baseline} if baseline is not None else {})
    try:
        for path, (starter, source, spec) in specs.items():
            if path in skipped or (only is not None and path not in only):
                continue
            toml = common + model_block("embed", source, idle_timeout=0.3, max_replicas=1)
            for tag, src in sources.items():
                name = path + tag
                gw = Gateway(work, f"zero-{path}{tag[1:]}", toml, starter, env, src, **spec)
                paths[name] = gw
                record[name] = {"ms": [], "wait_ms": [], "header": [], "phases": []}
        for i in range(runs):
            order = list(paths.items())
            for name, gw in order if i % 2 == 0 else order[::-1]:  # ABBA: no path always first
                path = name.partition("@")[0]
                for other, other_gw in paths.items():  # a pool still refilling loads the machine
                    if other != name and other.startswith("warm_slot"):
                        other_gw.wait_zero("embed", pool=True)
                gw.wait_zero("embed", pool=path == "warm_slot")
                t0 = time.perf_counter()
                code, headers, answer = gw.call("POST", "/models/embed/embed", BODY)
                ms = (time.perf_counter() - t0) * 1e3
                if code != 200:
                    raise SystemExit(f"{path}: HTTP {code} {answer}")
                vec = np.array(answer)
                if reference is None:
                    reference = vec
                tol = ATOL_ANCHOR if path == "anchor_torch" else ATOL_OURS
                if not np.allclose(vec, reference, atol=tol):
                    raise SystemExit(
                        f"{path}: the answer differs from the first one by {np.abs(vec - reference).max()}"
                    )
                cold = headers.get("zerostart-cold-start", "none")
                want = "cold_boot" if path == "anchor_torch" else path
                if not cold.startswith(want):
                    raise SystemExit(
                        f"{path}: wanted a {want} start, header says {cold!r}: {gw.status()}"
                    )
                r = record[name]
                r["ms"].append(ms)
                r["wait_ms"].append(float(cold.split("wait_ms=")[1].split(";")[0]))
                r["header"].append(cold)
                r["phases"].append(gw.status()["models"]["embed"]["last_start"]["phases_ms"])
                print(f"  {i + 1}/{runs} {name}: {ms:.1f} ms ({cold})", flush=True)
    finally:
        for gw in paths.values():
            gw.stop()
    out: dict[str, Any] = {"runs": runs, "paths": {}}
    for path, r in record.items():
        names = list(dict.fromkeys(k for p in r["phases"] for k in p))
        out["paths"][path] = {
            "first_answer_ms": {
                "median": round(statistics.median(r["ms"]), 2),
                "min": round(min(r["ms"]), 2),
                "max": round(max(r["ms"]), 2),
                "n": len(r["ms"]),
            },
            "gateway_wait_ms_median": round(statistics.median(r["wait_ms"]), 2),
            "start_phases_ms_median": {
                k: round(statistics.median(p[k] for p in r["phases"] if k in p), 3) for k in names
            },
        }
    for path, reason in skipped.items():
        out["paths"][path] = {"skipped": reason}
    anchor = out["paths"].get("anchor_torch", {}).get("first_answer_ms", {}).get("median")
    cold = out["paths"].get("cold_boot", {}).get("first_answer_ms", {}).get("median")
    for row in out["paths"].values():
        if "first_answer_ms" in row:
            m = row["first_answer_ms"]["median"]
            if cold:
                row["speedup_over_cold_boot"] = round(cold / m, 2)
            if anchor:
                row["speedup_over_anchor"] = round(anchor / m, 2)
    return out


# -- 3. trace replay --------------------------------------------------------------------------------


def make_trace(
    models: list[tuple[str, str]], seconds: float, seed: int
) -> list[tuple[float, str, str]]:
    """(time s, model, route): per model, bursts of 5-40 requests over 0.2-2 s, gaps of 3-8 s."""
    rng = random.Random(seed)
    trace = []
    for name, route in models:
        t = rng.uniform(0, 3)
        while t < seconds:
            n, spread = rng.randint(5, 40), rng.uniform(0.2, 2.0)
            trace += [(t + rng.uniform(0, spread), name, route) for _ in range(n)]
            t += spread + rng.uniform(3.0, 8.0)
    return sorted(trace)


def replay(
    work: Path, bundles: dict[str, Path], env: dict[str, str], seconds: float, seed: int
) -> dict[str, Any]:
    routes = {"embed": "embed", "sst2": "predict", "ner": "tokens"}
    toml = "[autoscaler]\ntick = 0.1\n" + "".join(
        model_block(m, str(b), idle_timeout=2.0) for m, b in bundles.items()
    )
    trace = make_trace(list(routes.items()), seconds, seed)
    gw = Gateway(work, "trace", toml, "warm_slot", env, slots=SLOTS_TRACE)
    results: list[tuple[str, int, float, str]] = []
    lock = threading.Lock()
    try:
        gw.wait_zero("embed", pool=True)

        def one(model: str, route: str) -> None:
            t0 = time.perf_counter()
            code, headers, _ = gw.call("POST", f"/models/{model}/{route}", BODY)
            with lock:
                results.append(
                    (
                        model,
                        code,
                        (time.perf_counter() - t0) * 1e3,
                        headers.get("zerostart-cold-start", ""),
                    )
                )

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            for at, model, route in trace:
                delay = start + at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, model, route)
        wall = time.perf_counter() - start
        metrics = gw.metrics()
    finally:
        gw.stop()
    lat = [ms for _, code, ms, _ in results if code == 200]
    errors = [r for r in results if r[1] != 200]

    def total(name: str, **labels: str) -> float:
        s = 0.0
        for line in metrics.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                s += float(line.rsplit(" ", 1)[1])
        return s

    up, idle = (
        total("zerostart_gateway_replica_seconds_total", state="up"),
        total("zerostart_gateway_replica_seconds_total", state="idle"),
    )
    cold_starts = {
        p: int(total("zerostart_gateway_cold_starts_total", path=p))
        for p in ("snapshot", "warm_slot", "cold_boot")
    }
    waited = [ms for _, code, ms, c in results if code == 200 and c not in ("", "none")]
    return {
        "models": list(routes),
        "requests": len(results),
        "errors": len(errors),
        "trace_seconds": round(wall, 1),
        "idle_timeout_s": 2.0,
        "latency_ms": {
            "p50": round(pct(lat, 50), 2),
            "p99": round(pct(lat, 99), 2),
            "max": round(max(lat), 2),
        },
        "latency_of_requests_that_waited_for_a_start_ms": {
            "n": len(waited),
            "p50": round(pct(waited, 50), 2) if waited else None,
        },
        "cold_starts": cold_starts,
        "replica_seconds": {"up": round(up, 1), "idle": round(idle, 1)},
        "always_on_anchor": {
            "what": "one replica per model kept up for the whole trace",
            "replica_seconds_up": round(wall * len(routes), 1),
            "replica_seconds_idle_at_most": round(wall * len(routes), 1),
        },
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--gateway-process":
        gateway_process(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--latency-requests", type=int, default=2000)
    ap.add_argument("--trace-seconds", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--blas-threads", type=int, default=1, help="0: inherit the environment")
    ap.add_argument("--only", default="latency,zero,trace")
    ap.add_argument("--paths", default="", help="zero: these start paths only (comma-separated)")
    ap.add_argument(
        "--baseline-src",
        default="",
        help="zero: also run each path from this checkout's src/, interleaved (PATH@baseline)",
    )
    ap.add_argument("--src", default=str(ROOT / "src"), help="the src/ our gateways run")
    ap.add_argument("--out", default="platform", help="result name in bench/results/")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    if args.blas_threads > 0:
        env.update({v: str(args.blas_threads) for v in BLAS_VARS})
    embed = bundle_dir("minilm-embed")
    result: dict[str, Any] = {
        "machine": machine_description(),
        "load_average_before": list(os.getloadavg()),
    }
    result["worker_env"] = {k: env.get(k) for k in BLAS_VARS}
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="zs-platform-bench-") as tmp:
        work = Path(tmp)
        if "latency" in only:
            print("gateway added latency (warm replica):", flush=True)
            result["added_latency"] = added_latency(
                work, embed, env, args.latency_requests, Path(args.src).resolve()
            )
        if "zero" in only:
            print("request -> first answer at zero replicas:", flush=True)
            result["first_answer_from_zero"] = from_zero(
                work,
                embed,
                model_dir("minilm-embed"),
                env,
                args.runs,
                set(args.paths.split(",")) if args.paths else None,
                Path(args.baseline_src).resolve() if args.baseline_src else None,
                Path(args.src).resolve(),
            )
        if "trace" in only:
            print("bursty trace replay:", flush=True)
            bundles = {
                "embed": embed,
                "sst2": bundle_dir("minilm-sst2"),
                "ner": bundle_dir("rampart-ner"),
            }
            result["trace"] = replay(work, bundles, env, args.trace_seconds, args.seed)
    result["load_average_after"] = list(os.getloadavg())
    for path, row in result.get("first_answer_from_zero", {}).get("paths", {}).items():
        if "first_answer_ms" in row:
            print(
                f"{path:22s} median {row['first_answer_ms']['median']:8.1f} ms  "
                f"({row.get('speedup_over_cold_boot')}x cold boot)"
            )
        else:
            print(f"{path:13s} skipped: {row['skipped']}")
    if "trace" in result:
        t = result["trace"]
        print(
            f"trace: {t['requests']} requests, {t['errors']} errors, p50 {t['latency_ms']['p50']} ms, p99 {t['latency_ms']['p99']} ms, cold starts {t['cold_starts']}, replica-s up {t['replica_seconds']['up']} idle {t['replica_seconds']['idle']} (always-on: {t['always_on_anchor']['replica_seconds_up']})"
        )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
