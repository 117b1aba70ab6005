"""The default image without weights, this checkout against another (sizes only, one run).

    python bench/image_lean.py [--model minilm-embed] [--baseline-src OTHER_CHECKOUT/src]
        [--out image_lean]

Builds ``zerostart build`` of the model's default bundle (every kernel build)
with this checkout, and with ``--baseline-src`` the same bundle with the other
checkout's builder (a subprocess with its ``src`` first on the path), and
records each image's runtime + application layers compressed and unpacked,
its largest files and its entrypoint. Sizes are deterministic (reproducible
layers), so one build each is enough; ``bench/image_size.py`` adds the anchors
and container start times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import bundle_dir, write_result
from zerostart.benchmark import machine_description

MB = 1e6
BUILD = r"""
import json, sys
from zerostart.image.build import build_image
from zerostart.image.inspect import inspect_image
built = build_image(sys.argv[1], sys.argv[2])
report = inspect_image(sys.argv[2])
layers = [la for la in report.layers if la.name != "model"]
cfg = json.load(open(built.image.path + "/index.json"))
print(json.dumps({
    "compressed_mb": round(sum(la.size for la in layers) / 1e6, 3),
    "unpacked_mb": round(sum(la.uncompressed_size for la in layers) / 1e6, 3),
    "layers": {la.name: [round(la.size / 1e6, 3), round(la.uncompressed_size / 1e6, 3)]
               for la in report.layers},
    "largest_files_mb": {f.path: round(f.size / 1e6, 3) for f in report.largest(10)
                         if not f.path.startswith("/model/")},
    "files": len(report.files),
}))
"""


def build(src: Path, bundle: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(bundle), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--baseline-src", type=Path)
    ap.add_argument("--out", default="image_lean")
    args = ap.parse_args()
    bundle = bundle_dir(args.model)
    here = Path(__file__).resolve().parents[1] / "src"
    result: dict[str, Any] = {
        "what": "zerostart build of the default bundle: runtime + application layers",
        "model": args.model,
        "targets_mb": {"compressed": 5.0, "unpacked": 12.0},
        "machine": machine_description(),
    }
    with tempfile.TemporaryDirectory(prefix="zs-image-lean-") as tmp:
        result["this_checkout"] = build(here, bundle, Path(tmp) / "new")
        if args.baseline_src:
            result["baseline"] = build(args.baseline_src, bundle, Path(tmp) / "old")
            result["baseline_src"] = "another checkout's builder (--baseline-src)"
    for name in ("baseline", "this_checkout"):
        if name in result:
            r = result[name]
            print(f"{name:14s} {r['compressed_mb']:6.2f} MB compressed {r['unpacked_mb']:6.2f} MB")
    write_result(args.out, result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
