"""Lazy images: command -> first correct answer, full pull vs ``run --lazy``, cold and warm.

    python bench/lazy.py [--rates 1000,100] [--images minilm,torch]

For each image (our MiniLM SST-2 image, and a PyTorch + transformers server
image built by bench/lazy_torch_image.py) and each link rate, with the real
registry (Debian's docker-registry) on loopback behind a throttling proxy
(tests/integration/fault_proxy.py: one token bucket for all connections, like
a link of that bandwidth; ``tc`` was not used because loopback is shared with
other engineers' tests on this machine):

(a) full pull + unpack + runc run: ``zerostart pull`` into an empty layout,
    unpack into an empty rootfs cache, ``runc run``, first answer;
(b) ``run --lazy``: empty imagefs cache, mount, ``runc run``, first answer;
(c) ``run --lazy`` with the imagefs disk cache left by (b).

Before each run the page cache is dropped (``echo 3 > /proc/sys/vm/drop_caches``)
and the local caches named above are empty. Time runs from the first line of
the command's work (pull or mount) to the first correct answer. Bytes are what
crossed the proxy (the "link") until the first answer, and in all (prefetch
may continue after the answer). A correct answer: the same as the one the
full-pull container gives, and for MiniLM also the same (1e-4) as the PyTorch
server's answer on the same model: two engines, one answer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the real registry + proxy helpers
sys.path.insert(0, str(ROOT / "bench"))

from fault_proxy import fault_proxy  # noqa: E402
from registry_server import running_registry  # noqa: E402

from common import bundle_dir, model_dir, write_result  # noqa: E402
from zerostart.benchmark import drop_page_cache, machine_description, post_json  # noqa: E402
from zerostart.container.lazy import LazyContainer  # noqa: E402
from zerostart.container.runtime import Container  # noqa: E402
from zerostart.procs import free_port  # noqa: E402
from zerostart.registry.client import pull, push  # noqa: E402

TEXT = "a wonderful, heartfelt film"
ROUTE = "/predict"  # bench/lazy_shared.py asks "/" (each model's own route)
READY_TIMEOUT_S = 900.0
ANSWER_TIMEOUT_S = 300.0
WORK = ROOT / ".cache" / "bench-lazy"


def _scores(answer: Any) -> dict[str, float]:
    return {a["label"]: float(a["score"]) for a in answer}


def _same(a: Any, b: Any, tol: float) -> bool:
    sa, sb = _scores(a), _scores(b)
    return sa.keys() == sb.keys() and all(abs(sa[k] - sb[k]) <= tol for k in sa)


def _first_answer(port: int) -> Any:
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        try:
            status, answer = post_json(port, ROUTE, {"inputs": TEXT}, timeout=ANSWER_TIMEOUT_S)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if status != 200:
            raise RuntimeError(f"{ROUTE} answered {status}: {answer}")
        return answer


def run_full(ref: str, work: Path, proxy: Any) -> dict[str, Any]:
    layout, cache = work / "pulled", work / "rootfs-cache"
    for p in (layout, cache):
        shutil.rmtree(p, ignore_errors=True)
    dropped = drop_page_cache()
    sent0 = proxy.bytes_sent
    t0 = time.perf_counter()
    pulled = pull(ref, layout)
    t_pull = time.perf_counter() - t0
    c = Container(str(layout), port=free_port(), cache_dir=cache, ready_timeout_s=READY_TIMEOUT_S)
    try:
        c.start()
        t_ready = time.perf_counter() - t0
        answer = _first_answer(c.port)
        seconds = time.perf_counter() - t0
        sent = proxy.bytes_sent - sent0
    finally:
        c.stop()
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "seconds_to_first_answer": seconds,
        "pull_seconds": t_pull,
        "ready_seconds": t_ready,
        "bytes_at_first_answer": sent,
        "bytes_total": sent,
        "pulled_bytes": pulled.bytes_downloaded,
        "page_cache_dropped": dropped,
        "answer": answer,
    }


def run_lazy(ref: str, cache: Path, proxy: Any, *, warm: bool) -> dict[str, Any]:
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    dropped = drop_page_cache()
    sent0, requests0 = proxy.bytes_sent, proxy.requests
    t0 = time.perf_counter()
    c = LazyContainer(
        ref, port=free_port(), ready_timeout_s=READY_TIMEOUT_S, mount_options={"cache_dir": cache}
    )
    try:
        c.start()
        t_ready = time.perf_counter() - t0
        answer = _first_answer(c.port)
        seconds = time.perf_counter() - t0
        sent = proxy.bytes_sent - sent0
        requests = proxy.requests - requests0
        time.sleep(0.6)  # the daemon's stats are rewritten twice a second
        stats = c.stats()
        info = c.mount_info
    finally:
        c.stop()
    return {
        "seconds_to_first_answer": seconds,
        "ready_seconds": t_ready,
        "mount_ms": info["mount_ms"],
        "index_ms": info["index_ms"],
        "daemon_import_ms": info["import_ms"],
        "bytes_at_first_answer": sent,
        "bytes_total": proxy.bytes_sent - sent0,
        "requests_at_first_answer": requests,  # every HTTP request through the link
        "requests_total": proxy.requests - requests0,
        "cache": {k: stats["cache"][k] for k in ("memory_hits", "disk_hits", "misses")},
        "registry_fetches": stats["reads"]["registry_fetches"],
        "prefetch_at_answer": stats["reads"]["prefetch"],
        "layers": [la["note"] for la in info["layers"]],
        "page_cache_dropped": dropped,
        "answer": answer,
    }


def mount_times(ref: str, work: Path, n: int = 7) -> dict[str, Any]:
    """Mount (index ready) straight from the loopback registry, no proxy: ``n`` cold mounts."""
    from zerostart.imagefs.mount import LazyMount

    rows = []
    for i in range(n):
        cache = work / f"mount-cache-{i}"
        m = LazyMount(ref, work / "mount-point", cache_dir=cache, prefetch=False)
        info = m.start()
        m.stop()
        shutil.rmtree(cache, ignore_errors=True)
        rows.append({k: info[k] for k in ("manifest_ms", "index_ms", "mount_ms", "import_ms")})
    ms = sorted(r["mount_ms"] for r in rows)
    return {"runs": rows, "median_mount_ms": ms[len(ms) // 2], "min_mount_ms": ms[0]}


def build_images(names: list[str]) -> dict[str, dict[str, Any]]:
    from zerostart.image.build import build_image

    images: dict[str, dict[str, Any]] = {}
    WORK.mkdir(parents=True, exist_ok=True)
    if "minilm" in names:
        out = WORK / "minilm-image"
        if not (out / "index.json").exists():
            build_image(bundle_dir("minilm-sst2"), out)
        images["minilm"] = {"layout": out, "repo": "zerostart/minilm-sst2", "about": {}}
    if "torch" in names:
        from lazy_torch_image import build_torch_image

        out = WORK / "torch-image"
        meta = WORK / "torch-image.json"
        if not (out / "index.json").exists() or not meta.exists():
            venv_python = str(Path(sys.executable).parent / "python")
            about = build_torch_image(out, venv_python, model_dir("minilm-sst2"))
            meta.write_text(json.dumps(about, indent=1))
        about = json.loads(meta.read_text())
        images["torch"] = {"layout": out, "repo": "bench/torch-server", "about": about}
    for img in images.values():
        blobs = sorted((img["layout"] / "blobs/sha256").iterdir())
        manifest_sizes = json.loads((img["layout"] / "index.json").read_text())["manifests"][0]
        digest = manifest_sizes["digest"].split(":")[1]
        manifest = json.loads((img["layout"] / "blobs/sha256" / digest).read_text())
        img["compressed_bytes"] = sum(la["size"] for la in manifest["layers"])
        img["blobs"] = len(blobs)
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1000,100", help="link rates in Mbit/s (default 1000,100)")
    ap.add_argument("--images", default="minilm,torch", help="minilm,torch")
    ap.add_argument("--out", default="lazy", help="bench/results/NAME.json")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C: containers stopped, mounts and the registry cleaned up
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rates = [float(r) for r in args.rates.split(",")]
    names = args.images.split(",")
    before = machine_description()
    images = build_images(names)
    results: dict[str, Any] = {}
    with running_registry(WORK / "registry") as reg:
        for name, img in images.items():
            push(str(img["layout"]), f"{reg.address}/{img['repo']}:1")
            results[name] = {
                "compressed_bytes": img["compressed_bytes"],
                "about": img["about"],
                "mount_direct": mount_times(f"{reg.address}/{img['repo']}:1", WORK),
                "rates": {},
            }
            print(
                f"{name:7s} mount (index ready), loopback registry without proxy: median "
                f"{results[name]['mount_direct']['median_mount_ms']:.1f} ms, min "
                f"{results[name]['mount_direct']['min_mount_ms']:.1f} ms",
                flush=True,
            )
            for rate in rates:
                with fault_proxy(reg.address, rate_bytes_per_s=rate * 1e6 / 8) as proxy:
                    ref = f"{proxy.address}/{img['repo']}:1"
                    cache = WORK / f"imagefs-cache-{name}"
                    row = {
                        "full_pull": run_full(ref, WORK, proxy),
                        "lazy_cold": run_lazy(ref, cache, proxy, warm=False),
                        "lazy_warm": run_lazy(ref, cache, proxy, warm=True),
                    }
                    shutil.rmtree(cache, ignore_errors=True)
                full = row["full_pull"]
                for kind in ("lazy_cold", "lazy_warm"):
                    r = row[kind]
                    r["correct"] = _same(r["answer"], full["answer"], 1e-6)
                    r["speedup_vs_full_pull"] = (
                        full["seconds_to_first_answer"] / r["seconds_to_first_answer"]
                    )
                    r["fraction_of_image_bytes"] = (
                        r["bytes_at_first_answer"] / img["compressed_bytes"]
                    )
                results[name]["rates"][f"{rate:g}Mbit"] = row
                print(
                    f"{name:7s} {rate:6g} Mbit/s: full pull {full['seconds_to_first_answer']:7.2f}s "
                    f"{full['bytes_at_first_answer'] / 1e6:7.1f} MB | lazy cold "
                    f"{row['lazy_cold']['seconds_to_first_answer']:7.2f}s "
                    f"{row['lazy_cold']['bytes_at_first_answer'] / 1e6:7.1f} MB "
                    f"(x{row['lazy_cold']['speedup_vs_full_pull']:.2f}) | lazy warm "
                    f"{row['lazy_warm']['seconds_to_first_answer']:7.2f}s "
                    f"(x{row['lazy_warm']['speedup_vs_full_pull']:.2f}) | mount "
                    f"{row['lazy_cold']['mount_ms']:.1f} ms",
                    flush=True,
                )
    if "minilm" in results and "torch" in results:
        for rate, row in results["minilm"]["rates"].items():
            torch_row = results["torch"]["rates"].get(rate)
            if torch_row:
                row["same_answer_as_pytorch"] = _same(
                    row["full_pull"]["answer"], torch_row["full_pull"]["answer"], 1e-4
                )
    write_result(
        args.out,
        {
            "benchmark": "lazy images: command -> first correct answer, full pull vs run --lazy",
            "link": "loopback registry behind a token-bucket HTTP proxy at the stated rate",
            "machine_before": before,
            "machine_after": machine_description(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
