"""Chunks shared across images: what a second image's lazy start fetches when a first one ran.

    python bench/lazy_shared.py [--rate 1000]

Two images built by ``zerostart build`` for two different models (MiniLM
SST-2 and the Rampart NER model: different weights and vocabularies, the same
interpreter, numpy, httptools and zerostart files) are pushed to the real
registry on loopback behind the throttling proxy (bench/lazy.py's set-up).
Three lazy starts, page cache dropped before each, to the first correct answer:

(a) image B with an empty imagefs cache (what B costs alone);
(b) image A with an empty cache;
(c) image B with the cache (b) left: only the chunks A did not have cross the link.

The imagefs cache is content-addressed (a chunk's key is its sha256, see
docs/imagefs.md), so (c) - (a) is the saving. Bytes are what crossed the proxy
until the first answer; the JSON also records the chunk cache's hits.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from fault_proxy import fault_proxy  # noqa: E402
from registry_server import running_registry  # noqa: E402

import lazy  # noqa: E402
from common import bundle_dir, write_result  # noqa: E402
from zerostart.benchmark import machine_description  # noqa: E402
from zerostart.image.build import build_image  # noqa: E402
from zerostart.registry.client import push  # noqa: E402

IMAGES = {"A": "minilm-sst2", "B": "rampart-ner"}


def _layout(model: str) -> Path:
    out = lazy.WORK / f"{model}-image"
    if not (out / "index.json").exists():
        build_image(bundle_dir(model), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="link rate in Mbit/s")
    opts = ap.parse_args()
    layouts = {k: _layout(m) for k, m in IMAGES.items()}
    lazy.TEXT = "My name is Sarah Johnson and I live in Springfield."
    lazy.ROUTE = "/"
    work = lazy.WORK / "shared"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with running_registry(work / "registry") as registry:
        for key, layout in layouts.items():
            push(layout, f"{registry.address}/bench/{IMAGES[key]}:1")
        with fault_proxy(registry.address, rate_bytes_per_s=opts.rate * 1e6 / 8) as proxy:
            refs = {k: f"{proxy.address}/bench/{m}:1" for k, m in IMAGES.items()}
            cache = work / "cache"
            runs: dict[str, Any] = {}
            runs["B_alone"] = lazy.run_lazy(refs["B"], cache, proxy, warm=False)
            runs["A_first"] = lazy.run_lazy(refs["A"], cache, proxy, warm=False)
            runs["B_after_A"] = lazy.run_lazy(refs["B"], cache, proxy, warm=True)
    for r in runs.values():
        r.pop("answer", None)
    alone, after = (
        runs["B_alone"]["bytes_at_first_answer"],
        runs["B_after_A"]["bytes_at_first_answer"],
    )
    result = {
        "machine": machine_description(),
        "rate_mbit_s": opts.rate,
        "images": IMAGES,
        "runs": runs,
        "B_bytes_alone": alone,
        "B_bytes_after_A": after,
        "saved_fraction": 1 - after / alone if alone else None,
    }
    print(
        f"B ({IMAGES['B']}) alone: {alone / 1e6:.1f} MB before its first answer; after A "
        f"({IMAGES['A']}) ran on the node: {after / 1e6:.1f} MB "
        f"({100 * (1 - after / alone):.0f} % saved by shared chunks)"
    )
    write_result("lazy_shared", result)


if __name__ == "__main__":
    main()
