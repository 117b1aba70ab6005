"""Cold start: process exec -> first correct HTTP answer, zerostart vs PyTorch + transformers.

Both servers get the same model (the zerostart bundle is converted from the
same Hugging Face folder) and the same request, on the same machine, in the
same run. Median of --runs cold starts each, with the page cache warm, then
(as root) with the page cache dropped before every start. Also the peak RSS
of each server after its first answer, and zerostart's own phase breakdown.

    python bench/coldstart.py [--models minilm-sst2,minilm-embed,rampart-ner] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from zerostart.model.manifest import Manifest

TORCH_SERVER = ROOT / "bench" / "anchors" / "torch_server.py"


def measure(cmd_for_port, path, body, check, runs: int, cold_cache: bool, with_info: bool):  # type: ignore[no-untyped-def]
    times, rss, phases = [], [], []
    for _ in range(runs):
        if cold_cache and not drop_page_cache():
            return None
        port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        seconds, _, proc = time_cold_start(
            cmd_for_port(port), port, path, body, check, env=env, keep=True
        )
        try:
            rss.append(peak_rss_mib(proc.pid))
            if with_info:
                _, info = get_json(port, "/info")
                phases.append(info["start"]["phases"])
        finally:
            stop_process(proc)
        times.append(seconds)
    out = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs_s": times,
        "peak_rss_mib": statistics.median(rss),
    }
    if phases:
        out["phases_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
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
    args = ap.parse_args()
    result = {
        "benchmark": "coldstart",
        "machine": machine_description(),
        "runs": args.runs,
        "models": {},
    }
    for name in args.models.split(","):
        src = model_dir(name)
        bundle = bundle_dir(name)
        task = Manifest.load(bundle).task
        path, body, _ = sample_request(task)
        check = reference_check(bundle, path, body)
        row = {"task": task, "request": {"path": path, "body": body}}
        for cache in ("warm", "cold"):
            if cache == "cold" and args.no_cold_cache:
                continue
            zs = measure(
                lambda p: worker_command(bundle, p),
                path,
                body,
                check,
                args.runs,
                cache == "cold",
                True,
            )
            if zs is None:
                print(f"{name}: cannot drop the page cache (not root?): cold-cache runs skipped")
                continue
            pt = measure(
                lambda p: [sys.executable, str(TORCH_SERVER), str(src), "--port", str(p)],
                path,
                body,
                check,
                args.runs,
                cache == "cold",
                False,
            )
            assert pt is not None
            ratio = pt["median_s"] / zs["median_s"]
            row[f"page_cache_{cache}"] = {
                "zerostart": zs,
                "pytorch_transformers": pt,
                "speedup": ratio,
            }
            print(
                f"{name:<14} page cache {cache}: zerostart {zs['median_s'] * 1e3:7.0f} ms "
                f"(RSS {zs['peak_rss_mib']:.0f} MiB) | PyTorch+transformers {pt['median_s'] * 1e3:7.0f} ms "
                f"(RSS {pt['peak_rss_mib']:.0f} MiB) | {ratio:5.1f}x faster (target >= 20x)"
            )
            for k, v in zs.get("phases_s", {}).items():
                print(f"    zerostart phase {k:<12} {v * 1e3:8.1f} ms")
        result["models"][name] = row
    write_result("coldstart_cpu", result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
