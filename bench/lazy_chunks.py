"""Chunk profiles and the chunk size: bytes and requests before the first answer, per chunk size.

    python bench/lazy_chunks.py [--sizes 256,1024,4096] [--rate 100] [--image torch]

For each eStargz chunk size (KiB) the PyTorch + transformers server image
(bench/lazy_torch_image.py; or our MiniLM image with ``--image minilm``) is
built, pushed to the real registry on loopback, and started once lazily with
the mount recording a chunk profile (``LazyMount(record=...)``, prefetch off,
no throttle): what the start read, chunk by chunk, until the first answer.
The profile is added to the image as a layer of its own
(``zerostart.image.profile.add_profile_layer``) and pushed as a second tag.

Then, behind the token-bucket proxy at ``--rate`` Mbit/s (bench/lazy.py's
link), page cache dropped and the imagefs cache empty before each start:

* full pull + unpack + runc, once (the 4 MiB image; the anchor);
* per chunk size: ``run --lazy`` of the image without a profile (today's
  landmark prefetch of whole files) and of the profiled image.

Bytes and requests are what crossed the proxy until the first correct answer.
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
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from fault_proxy import fault_proxy  # noqa: E402
from registry_server import running_registry  # noqa: E402

import lazy  # noqa: E402
from common import bundle_dir, model_dir, write_result  # noqa: E402
from zerostart import chunkprofile  # noqa: E402
from zerostart.benchmark import machine_description  # noqa: E402
from zerostart.container.lazy import LazyContainer  # noqa: E402
from zerostart.image.profile import add_profile_layer  # noqa: E402
from zerostart.procs import free_port  # noqa: E402
from zerostart.registry.client import push  # noqa: E402

WORK = lazy.WORK / "chunks"


def _build(image: str, kib: int) -> tuple[Path, dict[str, Any]]:
    out = WORK / f"{image}-{kib}k"
    meta = WORK / f"{image}-{kib}k.json"
    if not (out / "index.json").exists() or not meta.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        if image == "torch":
            from lazy_torch_image import build_torch_image

            venv_python = str(Path(sys.executable).parent / "python")
            about = build_torch_image(
                out, venv_python, model_dir("minilm-sst2"), chunk_size=kib * 1024
            )
        else:
            from zerostart.image.build import BuildOptions, build_image

            build_image(bundle_dir("minilm-sst2"), out, BuildOptions(chunk_size=kib * 1024))
            about = {"chunk_size": kib * 1024}
        meta.write_text(json.dumps(about, indent=1))
    return out, json.loads(meta.read_text())


def _record(ref: str, work: Path) -> chunkprofile.Profile:
    """One lazy start to the first answer on the loopback registry, the mount recording."""
    path, cache = work / "profile.json", work / "record-cache"
    shutil.rmtree(cache, ignore_errors=True)
    c = LazyContainer(
        ref,
        port=free_port(),
        ready_timeout_s=lazy.READY_TIMEOUT_S,
        mount_options={"cache_dir": cache, "prefetch": False, "record": path},
    )
    try:
        c.start()
        lazy._first_answer(c.port)
    finally:
        c.stop()
    shutil.rmtree(cache, ignore_errors=True)
    return chunkprofile.decode(path.read_bytes())


def plan_cost(layout: Path, profile: chunkprofile.Profile) -> dict[str, Any]:
    """What the mount's profile prefetch fetches for ``profile`` on ``layout``, computed offline.

    The same code the daemon runs (the TOCs merged into the index, the profile
    planned on it, the chunks grouped into range requests by
    ``ChunkReader._runs``), without a registry: bytes and requests of the
    prefetch, deterministic, for the curve over chunk size.
    """
    from zerostart.estargz import read_toc
    from zerostart.imagefs._cache import ChunkCache
    from zerostart.imagefs._fetch import ChunkReader, Layer
    from zerostart.imagefs._layers import entries_from_toc
    from zerostart.imagefs._profile import plan
    from zerostart.imagefs._tree import merge
    from zerostart.oci import read_oci_layout

    image = read_oci_layout(layout)
    layers, entries = [], []
    for i, la in enumerate(image.layers):
        toc = read_toc(la.path)
        layers.append(Layer(i, la.digest, la.size))
        entries.append(entries_from_toc(i, dict(toc.files), toc.chunks))
    todo = plan(merge(entries), profile)
    runs = ChunkReader(None, layers, ChunkCache())._runs(todo.extents)  # type: ignore[arg-type]
    return {
        **todo.summary(),
        "requests": len(runs),
        "fetched_bytes": sum(xs[-1].end - xs[0].start for _, xs in runs),
    }


def _compressed(layout: Path) -> int:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    return sum(la["size"] for la in manifest["layers"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024,4096", help="chunk sizes in KiB")
    ap.add_argument("--rate", type=float, default=100.0, help="link rate in Mbit/s")
    ap.add_argument("--image", default="torch", choices=("torch", "minilm"))
    ap.add_argument("--no-full-pull", action="store_true")
    ap.add_argument("--out", default="lazy_chunks")
    ap.add_argument(
        "--reuse-profiles",
        action="store_true",
        help="use the profiles an earlier run recorded (same images) instead of recording",
    )
    ap.add_argument(
        "--plan-only",
        action="store_true",
        help="recompute each size's offline prefetch plan (bytes, requests) from the kept "
        "profiles into an existing result, without a registry",
    )
    opts = ap.parse_args()
    if opts.plan_only:
        _replan(opts)
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sizes = [int(s) for s in opts.sizes.split(",")]
    before = machine_description()
    built = {kib: _build(opts.image, kib) for kib in sizes}
    work = WORK / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: dict[str, Any] = {}
    full: dict[str, Any] | None = None
    with running_registry(work / "registry") as reg:
        repo = f"bench/{opts.image}-chunks"
        for kib, (layout, about) in built.items():
            push(layout, f"{reg.address}/{repo}:{kib}k")
            t0 = time.perf_counter()
            kept = WORK / f"profile-{kib}k.json"  # for --plan-only and --reuse-profiles
            if opts.reuse_profiles and kept.exists():
                profile = chunkprofile.decode(kept.read_bytes())
            else:
                profile = _record(f"{reg.address}/{repo}:{kib}k", work)
                kept.write_bytes(profile.encode())
            record_s = time.perf_counter() - t0
            profiled = work / f"profiled-{kib}k"
            shutil.rmtree(profiled, ignore_errors=True)
            shutil.copytree(layout, profiled)
            add_profile_layer(profiled, profile)
            push(profiled, f"{reg.address}/{repo}:{kib}k-profiled")
            shutil.rmtree(profiled)
            rows[f"{kib}KiB"] = {
                "chunk_size": kib * 1024,
                "compressed_bytes": _compressed(layout),
                "about": about,
                "profile_chunks": len(profile.reads),
                "profile_json_bytes": len(profile.encode()),
                "record_seconds": record_s,
                "plan": plan_cost(layout, profile),
            }
            print(f"{kib:5d} KiB: profile of {len(profile.reads)} chunks", flush=True)
        with fault_proxy(reg.address, rate_bytes_per_s=opts.rate * 1e6 / 8) as proxy:
            if not opts.no_full_pull:
                kib = 4096 if 4096 in built else sizes[-1]
                full = lazy.run_full(f"{proxy.address}/{repo}:{kib}k", work, proxy)
                print(f"full pull: {full['seconds_to_first_answer']:.2f} s", flush=True)
            for kib in sizes:
                row = rows[f"{kib}KiB"]
                cache = work / "imagefs-cache"
                for kind, tag in (("landmark", f"{kib}k"), ("profile", f"{kib}k-profiled")):
                    r = lazy.run_lazy(f"{proxy.address}/{repo}:{tag}", cache, proxy, warm=False)
                    shutil.rmtree(cache, ignore_errors=True)
                    r["fraction_of_image_bytes"] = (
                        r["bytes_at_first_answer"] / row["compressed_bytes"]
                    )
                    if full is not None:
                        r["correct"] = lazy._same(r["answer"], full["answer"], 1e-6)
                        r["speedup_vs_full_pull"] = (
                            full["seconds_to_first_answer"] / r["seconds_to_first_answer"]
                        )
                    row[kind] = r
                    print(
                        f"{kib:5d} KiB {kind:8s}: {r['seconds_to_first_answer']:6.2f} s, "
                        f"{r['bytes_at_first_answer'] / 1e6:6.1f} MB "
                        f"({100 * r['fraction_of_image_bytes']:.0f} %), "
                        f"{r['requests_at_first_answer']} requests",
                        flush=True,
                    )
    write_result(
        opts.out,
        {
            "benchmark": "chunk profiles: lazy start to first answer per eStargz chunk size",
            "image": opts.image,
            "link": f"loopback registry behind a token-bucket HTTP proxy at {opts.rate:g} Mbit/s",
            "machine_before": before,
            "machine_after": machine_description(),
            "full_pull": full,
            "sizes": rows,
        },
    )


def _replan(opts: argparse.Namespace) -> None:
    path = ROOT / "bench" / "results" / f"{opts.out}.json"
    result = json.loads(path.read_text())
    for kib in (int(s) for s in opts.sizes.split(",")):
        layout, _ = _build(opts.image, kib)
        profile = chunkprofile.decode((WORK / f"profile-{kib}k.json").read_bytes())
        result["sizes"][f"{kib}KiB"]["plan"] = cost = plan_cost(layout, profile)
        print(f"{kib:5d} KiB: {cost}", flush=True)
    result["plan_machine"] = machine_description()
    write_result(opts.out, result)


if __name__ == "__main__":
    main()
