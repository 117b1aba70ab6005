"""Cold start: process exec -> first correct HTTP answer, zerostart vs two anchors.

The anchors: PyTorch + transformers (bench/anchors/torch_server.py), and the
lean stack a careful user would pick, ONNX Runtime + `tokenizers` with the
same model exported to ONNX (bench/anchors/onnx_server.py; exported once into
.cache/onnx before any timing). Every server gets the same model (the
zerostart bundle is converted from the same Hugging Face folder) and the same
request, on the same machine, in the same run, interleaved (run i of every
stack before run i+1 of any). Median of --runs cold starts each, with the
page cache warm, then (as root) with the page cache dropped before every
start. Also the peak RSS of each server after its first answer, and
zerostart's own phase breakdown (``/info``).

    python bench/coldstart.py [--models minilm-sst2,minilm-embed,rampart-ner] [--runs 5]
        [--baseline-src OTHER_CHECKOUT/src]

``--baseline-src`` adds a fourth stack, interleaved with the others: the zerostart
worker of another checkout (e.g. main before a change), serving a bundle that
checkout converted itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, bundle_dir, model_dir, peak_rss_mib, write_result
from zerostart.benchmark import (
    drop_page_cache,
    free_port,
    get_json,
    machine_description,
    sample_request,
    stop_process,
    time_cold_start,
    worker_command,
)
from zerostart.bundle.manifest import Manifest
from zerostart.engine.native import cpu_flags

TORCH_SERVER = ROOT / "bench" / "anchors" / "torch_server.py"
ONNX_SERVER = ROOT / "bench" / "anchors" / "onnx_server.py"
ONNX_CACHE = ROOT / ".cache" / "onnx"
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
EXPORT_TIMEOUT_S = 600


def onnx_file(name: str, src: Path) -> Path:
    """The model exported to ONNX once (torch, outside any timing)."""
    out = ONNX_CACHE / f"{name}.onnx"
    if not out.exists():
        ONNX_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.onnx")
        subprocess.run(
            [sys.executable, str(ONNX_SERVER), "--export", str(src), str(tmp)],
            check=True,
            timeout=EXPORT_TIMEOUT_S,
            capture_output=True,
        )
        tmp.rename(out)
    return out


def baseline_bundle(src_dir: Path, name: str, model: Path) -> Path:
    """``model`` converted by the checkout at ``src_dir`` (its own kernels and layout)."""
    out = ROOT / ".cache" / "bench-bundles-baseline" / name
    if not (out / "manifest.json").exists():
        code = "import sys; from zerostart.model.convert import convert; convert(sys.argv[1], sys.argv[2])"
        env = dict(os.environ, PYTHONPATH=str(src_dir))
        subprocess.run(
            [sys.executable, "-c", code, str(model), str(out)],
            check=True,
            timeout=EXPORT_TIMEOUT_S,
            env=env,
            capture_output=True,
        )
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time every thread of ``pid`` has run so far (schedstat, ns resolution).

    Reported beside the wall time because this shared machine is often loaded far
    beyond its cores: CPU time moves much less with the load than wall time does.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def measure(stacks, path, body, check, runs: int, cold_cache: bool, baseline_src=None):  # type: ignore[no-untyped-def]
    """``stacks``: name -> (cmd_for_port, reads /info). Interleaved runs; None without root."""
    times: dict[str, list[float]] = {k: [] for k in stacks}
    rss: dict[str, list[float]] = {k: [] for k in stacks}
    cpu: dict[str, list[float]] = {k: [] for k in stacks}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in stacks}
    for _ in range(runs):
        for name, (cmd_for_port, with_info) in stacks.items():
            if cold_cache and not drop_page_cache():
                return None
            port = free_port()
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            if name == "zerostart_baseline":
                env["PYTHONPATH"] = str(baseline_src)
            seconds, _, proc = time_cold_start(
                cmd_for_port(port), port, path, body, check, env=env, keep=True
            )
            try:
                cpu[name].append(cpu_seconds(proc.pid))
                rss[name].append(peak_rss_mib(proc.pid))
                if with_info:
                    _, info = get_json(port, "/info")
                    phases[name].append(info["start"]["phases"])
            finally:
                stop_process(proc)
            times[name].append(seconds)
    out = {}
    for name in stacks:
        t = times[name]
        row = {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "runs_s": t,
            "peak_rss_mib": statistics.median(rss[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "cpu_runs_s": cpu[name],
        }
        if phases[name]:
            p = phases[name]
            row["phases_s"] = {k: statistics.median(x.get(k, 0.0) for x in p) for k in p[0]}
        out[name] = row
    return out


def reference_check(bundle, path, body):  # type: ignore[no-untyped-def]
    """What a correct answer is: the in-process pipeline's, computed once up front."""
    import numpy as np

    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle)
    job = pipe.prepare(path.strip("/"), body)
    want = job.finish(pipe.execute(job.encodings))
    if path == "/predict":
        return lambda a: isinstance(a, list) and a[0]["label"] == want[0]["label"]
    if path == "/tokens":
        return lambda a: (
            [(e["entity_group"], e["start"], e["end"]) for e in a]
            == [(e["entity_group"], e["start"], e["end"]) for e in want]
        )
    return lambda a: float(np.dot(np.asarray(a[0]), np.asarray(want[0]))) > 0.9999


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="minilm-sst2,minilm-embed,rampart-ner")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-cold-cache", action="store_true", help="skip the dropped-page-cache runs")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to run interleaved")
    ap.add_argument("--out", default="coldstart_cpu", help="result name under bench/results/")
    ap.add_argument(
        "--anchors",
        default="onnxruntime,pytorch",
        help="anchor stacks to run, comma-separated (default %(default)s)",
    )
    args = ap.parse_args()
    machine = machine_description()
    flags = cpu_flags()
    machine["cpu_flags"] = [f for f in CPU_FLAGS_OF_INTEREST if f in flags]
    result = {
        "benchmark": "coldstart",
        "machine": machine,
        "runs": args.runs,
        "targets": {"exec_to_answer_s": 0.060, "vs_pytorch": 50.0, "vs_onnxruntime": 7.0},
        "models": {},
    }
    for name in args.models.split(","):
        src = model_dir(name)
        bundle = bundle_dir(name)
        task = Manifest.load(bundle).task
        path, body, _ = sample_request(task)
        check = reference_check(bundle, path, body)
        anchors = set(args.anchors.split(","))  # "none": zerostart (and its baseline) only
        onnx = onnx_file(name, src) if "onnxruntime" in anchors else None
        stacks = {"zerostart": (lambda p: worker_command(bundle, p), True)}
        if "onnxruntime" in anchors:
            stacks["onnxruntime_tokenizers"] = (
                lambda p: [sys.executable, str(ONNX_SERVER), str(src), str(onnx), "--port", str(p)],
                False,
            )
        if "pytorch" in anchors:
            stacks["pytorch_transformers"] = (
                lambda p: [sys.executable, str(TORCH_SERVER), str(src), "--port", str(p)],
                False,
            )
        if args.baseline_src:
            result["baseline_src"] = "main before this change (--baseline-src)"
            base = baseline_bundle(args.baseline_src, name, src)
            stacks["zerostart_baseline"] = (lambda p, base=base: worker_command(base, p), True)
        row = {"task": task, "request": {"path": path, "body": body}}
        for cache in ("warm", "cold"):
            if cache == "cold" and args.no_cold_cache:
                continue
            got = measure(stacks, path, body, check, args.runs, cache == "cold", args.baseline_src)
            if got is None:
                print(f"{name}: cannot drop the page cache (not root?): cold-cache runs skipped")
                continue
            zs = got["zerostart"]
            summary = {}
            line = (
                f"{name:<14} page cache {cache}: zerostart {zs['median_s'] * 1e3:6.0f} ms "
                f"(CPU {zs['cpu_median_s'] * 1e3:.0f} ms, RSS {zs['peak_rss_mib']:.0f} MiB)"
            )
            for key, label in (
                ("onnxruntime_tokenizers", "onnxruntime"),
                ("pytorch_transformers", "pytorch"),
                ("zerostart_baseline", "baseline"),
            ):
                if key in got:
                    other = got[key]
                    summary[f"speedup_vs_{label}"] = other["median_s"] / zs["median_s"]
                    summary[f"cpu_ratio_vs_{label}"] = other["cpu_median_s"] / zs["cpu_median_s"]
                    line += (
                        f" | {label} {other['median_s'] * 1e3:6.0f} ms (CPU "
                        f"{other['cpu_median_s'] * 1e3:.0f} ms, RSS {other['peak_rss_mib']:.0f} MiB, "
                        f"{other['median_s'] / zs['median_s']:.2f}x)"
                    )
            row[f"page_cache_{cache}"] = {**got, **summary}
            print(line)
            for k, v in zs.get("phases_s", {}).items():
                was = got.get("zerostart_baseline", {}).get("phases_s", {}).get(k)
                before = f"  (baseline {was * 1e3:6.1f} ms)" if was is not None else ""
                print(f"    zerostart phase {k:<12} {v * 1e3:8.1f} ms{before}")
        result["models"][name] = row
    result["load_average_after"] = list(os.getloadavg())
    result["openblas_num_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
    write_result(args.out, result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
