"""The PyTorch + transformers server image, as another tool would push it, started through a zTOC.

    python bench/zran_torch.py [--rate-mbit 100] [--span-mib 1] [--repeats 1]

The image is bench/lazy.py's (bench/lazy_torch_image.py: 1.4 GB unpacked,
36,000 files), unpacked by ``umoci unpack`` and put into a new one-layer
image by ``umoci insert`` (plain ``tar+gzip`` by umoci's pgzip, the config's
entrypoint and environment copied), pushed by ``skopeo``: zerostart's
builder never wrote it. Two repositories hold it: one indexed by
``zerostart index`` only, one indexed and given a span profile recorded by
one lazy start (prefetch off, to the first answer; ``add_profile``). The
eStargz image zerostart built (landmark prefetch) runs in the same rounds as
the anchor the issue names ("within 20 % of the rebuilt eStargz image").

Each round, interleaved, caches empty and page cache dropped, behind the
token-bucket proxy of bench/lazy.py: full pull + unpack + runc of the umoci
image; ``run --lazy`` of it through the zTOC without and with the profile;
``run --lazy`` of the eStargz image. Time is command -> first correct
``/predict`` (the same answer as the full pull), bytes what crossed the proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from fault_proxy import fault_proxy  # noqa: E402
from foreign_images import skopeo_push  # noqa: E402
from registry_server import running_registry  # noqa: E402

from common import write_result  # noqa: E402
from lazy import _first_answer, _same, build_images, run_full, run_lazy  # noqa: E402
from zerostart.benchmark import drop_page_cache, machine_description  # noqa: E402
from zerostart.container.lazy import LazyContainer  # noqa: E402
from zerostart.imagefs.zindex import add_profile, index_image  # noqa: E402
from zerostart.procs import free_port  # noqa: E402
from zerostart.registry.client import push  # noqa: E402
from zerostart.ztoc import decode_profile  # noqa: E402

WORK = ROOT / ".cache" / "bench-zran-torch"
TOOL_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 900.0


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=TOOL_TIMEOUT_S)


def umoci_copy(src: Path, out: Path) -> dict[str, Any]:
    """``src``'s files and start command in a new one-layer image made by umoci (tag ``1``)."""
    index = json.loads((src / "index.json").read_text())
    tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    manifest = json.loads((src / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((src / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    bundle = WORK / "bundle"
    for p in (bundle, out):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    _run(["umoci", "unpack", "--image", f"{src}:{tag}", str(bundle)])
    _run(["umoci", "init", "--layout", str(out)])
    _run(["umoci", "new", "--image", f"{out}:1"])
    _run(["umoci", "insert", "--image", f"{out}:1", str(bundle / "rootfs"), "/"])
    c = config.get("config", {})
    cmd = ["umoci", "config", "--image", f"{out}:1"]
    for arg in c.get("Entrypoint") or []:
        cmd += ["--config.entrypoint", arg]
    for env in c.get("Env") or []:
        cmd += ["--config.env", env]
    if c.get("User"):
        cmd += ["--config.user", c["User"]]
    if c.get("WorkingDir"):
        cmd += ["--config.workingdir", c["WorkingDir"]]
    _run(cmd)
    _run(["umoci", "gc", "--layout", str(out)])
    shutil.rmtree(bundle, ignore_errors=True)
    layer = max((out / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    return {"seconds": round(time.perf_counter() - t0, 1), "layer_bytes": layer.stat().st_size}


def record(ref: str, path: Path) -> dict[str, Any]:
    """One lazy start with the recorder on (prefetch off), to the first answer."""
    cache = WORK / "record-cache"
    shutil.rmtree(cache, ignore_errors=True)
    drop_page_cache()
    t0 = time.perf_counter()
    options = {"cache_dir": cache, "record": path, "prefetch": False}
    c = LazyContainer(ref, port=free_port(), ready_timeout_s=READY_TIMEOUT_S, mount_options=options)
    try:
        c.start()
        _first_answer(c.port)
        seconds = time.perf_counter() - t0
    finally:
        c.stop()
    shutil.rmtree(cache, ignore_errors=True)
    return {"seconds_to_first_answer": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    ap.add_argument("--span-mib", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="zran_torch")
    args = ap.parse_args()
    load_before = list(os.getloadavg())
    WORK.mkdir(parents=True, exist_ok=True)
    estargz = build_images(["torch"])["torch"]
    layout = WORK / "umoci-layout"
    made = umoci_copy(estargz["layout"], layout)
    print(f"umoci image: {made}", flush=True)
    out: dict[str, Any] = {"umoci_image": made, "estargz_bytes": estargz["compressed_bytes"]}
    rounds: list[dict[str, Any]] = []
    with running_registry(WORK / "registry") as reg:
        plain, profiled = f"{reg.address}/bench/torch-umoci:1", f"{reg.address}/bench/torch-prof:1"
        ours = f"{reg.address}/bench/torch-estargz:1"
        push(str(estargz["layout"]), ours)
        for ref in (plain, profiled):
            skopeo_push(layout, "1", ref)
            r = index_image(ref, span_bytes=round(args.span_mib * 2**20))
            out["index"] = r.layers[0] | {"seconds": r.seconds}
        path = WORK / "torch-spans.json"
        out["recording_start"] = record(profiled, path)
        added = add_profile(profiled, path.read_bytes())
        out["profile"] = {
            "spans": len(decode_profile(path.read_bytes()).reads),
            "json_bytes": added.layers[0]["profile_bytes"],
        }
        print(f"index {out['index']}, profile {out['profile']}", flush=True)
        with fault_proxy(reg.address, rate_bytes_per_s=args.rate_mbit * 1e6 / 8) as proxy:

            def via(ref: str) -> str:
                return ref.replace(reg.address, proxy.address)

            for _ in range(args.repeats):
                cache = WORK / "imagefs-cache"
                row = {"full_pull": run_full(via(plain), WORK, proxy)}
                row["ztoc"] = run_lazy(via(plain), cache, proxy, warm=False)
                row["ztoc_profile"] = run_lazy(via(profiled), cache, proxy, warm=False)
                row["estargz_landmark"] = run_lazy(via(ours), cache, proxy, warm=False)
                want = row["full_pull"].pop("answer")
                for kind in ("ztoc", "ztoc_profile", "estargz_landmark"):
                    row[kind]["correct"] = _same(row[kind].pop("answer"), want, 1e-6)
                print(
                    " | ".join(
                        f"{k} {v['seconds_to_first_answer']:.1f}s "
                        f"{v['bytes_at_first_answer'] / 1e6:.1f}MB"
                        for k, v in row.items()
                    ),
                    flush=True,
                )
                rounds.append(row)
    write_result(
        args.out,
        {
            "what": "PyTorch + transformers server image re-made by umoci, lazily through a zTOC",
            "link": f"loopback docker-registry behind a token bucket at {args.rate_mbit:g} Mbit/s",
            "span_bytes": round(args.span_mib * 2**20),
            "machine": machine_description(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            **out,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
