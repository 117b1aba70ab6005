"""Boot vs restore from a snapshot, exec -> first correct answer, on CPU.

    python bench/snapshot.py [--runs 5] [--model models/minilm-embed] [--out bench/results/snapshot_cpu.json]

For (a) the zerostart worker and (b) the PyTorch + transformers anchor server
on the same model: boot N times (median), snapshot once after a warm-up
request, restore N times (median; the clock starts before the restore call,
which includes the manifest/digest/host checks, and stops when the first
/embed answer has been read and checked against the booted answer), and as
many restores with CRIU lazy-pages (memory on first touch), interleaved. Also the
snapshot's size and time to take it, the cost of the fast and the full digest
check, and what compressing the page images would save and cost.
Needs root and CRIU (scripts/install_criu.sh).

    python bench/snapshot.py --container [--runs 5] [--out bench/results/snapshot_container_cpu.json]

On a GPU (CRIU + the CUDA driver's checkpoint API, which zerostart.snapshot
uses for any process that maps libcuda)::

    python bench/snapshot.py --bundle GPU_BUNDLE --torch-model HF_FOLDER --device cuda --out F

``--bundle`` takes a converted bundle instead of converting ``--model``; the
request and its check follow the bundle's task (zerostart.benchmark.sample_request).

``--container`` measures only the image path instead: the bundle's image
(``zerostart build``) booted with ``zerostart run`` (runc) against the same
image restored with ``zerostart run --snapshot``, each from the call to the
first correct /embed answer (the restore's clock includes reading the layout,
the manifest/digest/host checks and ``runc restore``). Needs runc too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.benchmark import (
    free_port,
    machine_description,
    sample_request,
    summarize,
    time_cold_start,
)
from zerostart.snapshot import Warmup, check, restore, snapshot
from zerostart.snapshot._criu import version as criu_version
from zerostart.snapshot._process import http_request

REPO = Path(__file__).resolve().parents[1]
TEXT = {
    "inputs": "My name is Clara Schmidt and I live at 12 Rue de Rivoli in Paris; I love this film."
}
ATOL = 1e-5


def _is_embedding(answer: Any) -> bool:
    return isinstance(answer, list) and len(answer) == 1 and len(answer[0]) > 8


def _same_answer(a: Any, b: Any) -> bool:
    """JSON values equal, numbers within ATOL: a restored process answers as the booted one."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_answer(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_answer(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(a - b) <= ATOL
    return bool(a == b)


def _bench_one(
    label: str,
    make_cmd: Any,
    runs: int,
    store: Path,
    env: dict[str, str],
    request: tuple[str, Any, Any] = ("/embed", TEXT, _is_embedding),
) -> dict[str, Any]:
    print(f"== {label}", flush=True)
    route, body, is_answer = request
    boots, reference = [], None
    for i in range(runs):
        port = free_port()
        seconds, answer, _ = time_cold_start(
            make_cmd(port), port, route, body, is_answer, env=env, timeout_s=300
        )
        boots.append(seconds)
        reference = reference if reference is not None else answer
        print(f"  boot {i + 1}/{runs}: {seconds * 1e3:.0f} ms", flush=True)
    port = free_port()
    taken = snapshot(
        label,
        make_cmd(port),
        warmup=Warmup(route, body),
        store=store,
        env=env,
        ready_timeout_s=300,
    )
    print(
        f"  snapshot: {taken.size_bytes / 1e6:.1f} MB in {taken.timings_s['total']:.2f} s "
        f"(dump {taken.timings_s['criu_dump']:.2f} s)",
        flush=True,
    )
    restores, phases, lazy_restores, lazy_phases = [], [], [], []
    for i in range(runs):  # eager and lazy-pages restores interleaved
        for lazy in (False, True):
            t0 = time.perf_counter()
            result = restore(label, store=store, fallback=False, lazy_pages=lazy)
            status, got = http_request(f"http://127.0.0.1:{port}{route}", "POST", body)
            elapsed = time.perf_counter() - t0
            result.stop()
            if status != 200 or not _same_answer(json.loads(got), reference):
                raise SystemExit(
                    f"{label}: restored answer differs from the booted one (HTTP {status}, lazy {lazy})"
                )
            (lazy_restores if lazy else restores).append(elapsed)
            (lazy_phases if lazy else phases).append(result.timings_s)
            kind = "lazy restore" if lazy else "restore"
            print(f"  {kind} {i + 1}/{runs}: {elapsed * 1e3:.0f} ms {result.timings_s}", flush=True)
    fast, full = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        check(label, store=store)
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        check(label, store=store, full=True)
        full.append(time.perf_counter() - t0)
    boot_s, restore_s, lazy_s = summarize(boots), summarize(restores), summarize(lazy_restores)
    return {
        "boot_s": boot_s,
        "restore_s": restore_s,
        "speedup": boot_s["median"] / restore_s["median"],
        "restore_phases_s": phases[len(phases) // 2],
        "lazy_pages_restore_s": lazy_s,
        "lazy_pages_speedup_over_restore": restore_s["median"] / lazy_s["median"],
        "lazy_pages_restore_phases_s": lazy_phases[len(lazy_phases) // 2],
        "snapshot_bytes": taken.size_bytes,
        "snapshot_take_s": taken.timings_s,
        "mapped_files": len(taken.manifest.mapped_files),
        "mapped_bytes": sum(f.size for f in taken.manifest.mapped_files),
        "check_fast_s": min(fast),
        "check_full_s": min(full),
        "compression": _compression(taken.path / "images"),
    }


def _compression(images: Path) -> dict[str, float]:
    """zlib level 1 over the page images: how much smaller, and what inflating costs at restore."""
    raw = b"".join(p.read_bytes() for p in sorted(images.glob("pages-*.img")))
    t0 = time.perf_counter()
    packed = zlib.compress(raw, 1)
    pack_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    zlib.decompress(packed)
    unpack_s = time.perf_counter() - t0
    return {
        "pages_bytes": len(raw),
        "zlib1_bytes": len(packed),
        "ratio": len(raw) / max(len(packed), 1),
        "compress_s": pack_s,
        "decompress_s": unpack_s,
    }


def _bench_container(bundle: Path, work: Path, runs: int) -> dict[str, Any]:
    """Container boot (``zerostart run``) vs restore (``zerostart run --snapshot``), median of N."""
    from zerostart.container.runtime import Container
    from zerostart.container.snapshot_run import run_with_snapshot
    from zerostart.image.build import build_image

    t0 = time.perf_counter()
    image = build_image(bundle, work / "image").image.path
    build_s = time.perf_counter() - t0
    store = work / "container-store"
    port = free_port()  # one port: a snapshot restores the socket it was taken with

    def first_answer(port: int) -> np.ndarray:
        status, body = http_request(f"http://127.0.0.1:{port}/embed", "POST", TEXT)
        answer = np.array(json.loads(body))
        if status != 200 or not _is_embedding(answer.tolist()):
            raise SystemExit(f"container answered HTTP {status}: {body[:200]!r}")
        return answer

    boots, reference = [], None
    for i in range(runs):
        t0 = time.perf_counter()
        container = Container(image, port=port)
        container.start()
        answer = first_answer(port)
        boots.append(time.perf_counter() - t0)
        container.stop()
        reference = answer if reference is None else reference
        print(f"  container boot {i + 1}/{runs}: {boots[-1] * 1e3:.0f} ms", flush=True)
    t0 = time.perf_counter()
    taken = run_with_snapshot(image, port=port, store=store)
    first_answer(port)
    take_total_s = time.perf_counter() - t0
    taken.container.stop()
    if taken.snapshot_error:
        raise SystemExit(f"no container snapshot: {taken.snapshot_error}")
    print(
        f"  snapshot: {taken.size_bytes / 1e6:.1f} MB, checkpoint {taken.timings_s['checkpoint']:.2f} s",
        flush=True,
    )
    restores, phases = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        run = run_with_snapshot(image, port=port, store=store)
        answer = first_answer(port)
        restores.append(time.perf_counter() - t0)
        run.container.stop()
        if run.mode != "restored":
            raise SystemExit(f"container not restored: {run.reason}")
        assert reference is not None
        if not np.allclose(answer, reference, atol=ATOL):
            raise SystemExit("restored container's answer differs from the booted one")
        phases.append(run.timings_s)
        print(f"  container restore {i + 1}/{runs}: {restores[-1] * 1e3:.0f} ms", flush=True)
    boot_s, restore_s = summarize(boots), summarize(restores)
    return {
        "what": "zerostart run IMAGE (runc) vs zerostart run IMAGE --snapshot, call -> first correct /embed",
        "build_s": build_s,
        "boot_s": boot_s,
        "restore_s": restore_s,
        "speedup": boot_s["median"] / restore_s["median"],
        "restore_phases_s": phases[len(phases) // 2],
        "snapshot_bytes": taken.size_bytes,
        "snapshot_take_s": taken.timings_s,
        "snapshot_take_total_s": take_total_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=str(REPO / "models" / "minilm-embed"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "snapshot_cpu.json"))
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--bundle", help="a converted bundle (GPU too) instead of converting --model")
    ap.add_argument("--torch-model", help="HF folder the PyTorch server loads (default --model)")
    ap.add_argument(
        "--device", default="cpu", help="cpu or cuda: names the results, torch's device"
    )
    ap.add_argument(
        "--container",
        action="store_true",
        help="only the image path: runc boot vs runc restore (default --out ..._container_cpu.json)",
    )
    args = ap.parse_args()
    if args.container and args.out == ap.get_default("out"):
        args.out = str(REPO / "bench" / "results" / "snapshot_container_cpu.json")
    from zerostart.model.convert import convert

    work = Path(
        tempfile.mkdtemp(
            prefix="zs-snapbench-", dir=REPO / ".cache" if (REPO / ".cache").exists() else None
        )
    )
    if args.bundle:
        bundle = Path(args.bundle).resolve()
    else:
        bundle = work / "bundle"
        convert(args.model, bundle)
    from zerostart.bundle.manifest import Manifest

    task_request = sample_request(Manifest.load(bundle).task)
    torch_model = args.torch_model or args.model
    store = work / "store"
    path = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]  # keep what the caller added
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), "HF_HUB_OFFLINE": "1"}
    results: dict[str, Any] = {
        "machine": machine_description(),
        "criu": criu_version(),
        "runs": args.runs,
        "model": bundle.name if args.bundle else Path(args.model).name,
        "device": args.device,
        "request": TEXT,
    }
    if args.container:
        results["container_cpu"] = r = _bench_container(bundle, work, args.runs)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"container: boot {r['boot_s']['median'] * 1e3:.0f} ms, restore "
            f"{r['restore_s']['median'] * 1e3:.0f} ms (x{r['speedup']:.1f}), snapshot "
            f"{r['snapshot_bytes'] / 1e6:.0f} MB; wrote {args.out}"
        )
        return
    zs_key, torch_key = f"zerostart_{args.device}", f"torch_{args.device}"
    results[zs_key] = _bench_one(
        "zerostart",
        lambda p: [sys.executable, "-m", "zerostart.serve", str(bundle), "--port", str(p)],
        args.runs,
        store,
        env,
        task_request,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # kept if torch fails
    if not args.skip_torch:
        torch_request = task_request
        if Path(torch_model, "1_Pooling").exists() or "embed" in Path(torch_model).name:
            torch_request = ("/embed", TEXT, _is_embedding)
        results[torch_key] = _bench_one(
            "torch",
            lambda p: [
                sys.executable,
                str(REPO / "bench" / "anchors" / "torch_server.py"),
                torch_model,
                "--port",
                str(p),
                "--device",
                args.device,
            ],
            args.runs,
            store,
            env,
            torch_request,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for key in (zs_key, torch_key):
        if key in results:
            r = results[key]
            print(
                f"{key}: boot {r['boot_s']['median'] * 1e3:.0f} ms, restore {r['restore_s']['median'] * 1e3:.0f} ms "
                f"(x{r['speedup']:.1f}), lazy-pages restore "
                f"{r['lazy_pages_restore_s']['median'] * 1e3:.0f} ms, snapshot {r['snapshot_bytes'] / 1e6:.0f} MB"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
