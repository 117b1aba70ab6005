"""Shared bits of the benchmark scripts: model folders, bundles, result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUNDLES = ROOT / ".cache" / "bench-bundles"
RESULTS = ROOT / "bench" / "results"


def model_dir(name: str) -> Path:
    path = MODELS / name
    if not (path / "config.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tools" / "make_models.py"),
                "--out",
                str(MODELS),
                "--only",
                name,
            ],
            check=True,
        )
    return path


def bundle_dir(name: str, device: str = "cpu") -> Path:
    """Convert models/NAME once per (name, device) into .cache/bench-bundles."""
    from zerostart.model.convert import convert

    out = BUNDLES / f"{name}-{device}"
    src = model_dir(name)
    if not (out / "manifest.json").exists():
        BUNDLES.mkdir(parents=True, exist_ok=True)
        convert(src, out, device=device)
    return out


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
