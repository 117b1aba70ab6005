"""Mount to "index ready" for a PyTorch-sized image (36,600 files), cold and warm, against the previous code.

The image is synthetic, shaped like the PyTorch + transformers server image of
bench/lazy_torch_image.py (36,600 entries; its TOC is what a mount reads): an
OS layer (~3,000 entries under usr/ and etc/) and a site-packages layer
(~33,600 entries: 300 packages, ~2,300 folders, .py files, one .so symlink in
25), written by zerostart's own layer writer (image/layers.py) as eStargz and
pushed to a loopback registry (Debian's docker-registry). File bodies are a
few bytes: the mount reads only the TOCs, so the bodies' size does not change
what is measured, and the image builds in seconds instead of the real one's
minutes of pip installs (which need the network this machine lacks).

For each code path, interleaved, ``--runs`` times: a fresh cache folder
(cold: every TOC fetched, parsed, validated, indexed and kept), then the same
folder again (warm: the kept index). A code path is a ``src`` folder: this
tree's, and the previous one (``git archive BASE src``; default: the commit
before the per-layer index). Each mount runs in a child process whose
PYTHONPATH is that folder (``LazyMount`` hands it to the daemon). Recorded
per mount, from the daemon's ready line: ``index_ms`` (manifest, config and
every layer's index), ``mount_ms`` (index + FUSE init: the mount is usable),
``import_ms`` (the daemon's own imports: pyfuse3, trio), and the child's wall
time from ``start()`` to ready; then one deep lookup + read (a file half way through the layer) (the first
lookup pays the lazy merge of each folder on the path).

    PYTHONPATH=src python bench/mount_index.py [--runs 5] [--base 32e5b90] [--save]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

BASE = "32e5b90"  # main before the per-layer index: the per-manifest marshal cache
SITE = "/usr/lib/python3.11/site-packages"
OS_ENTRIES = 3_000


def _site_packages(entries: int, prefix: str) -> list[Any]:
    from zerostart.image.layers import Entry

    out: list[Any] = []
    dirs = max(1, entries // 16)
    for d in range(dirs):
        out.append(Entry(f"{prefix}/pkg{d % 300}/sub{d}", "dir"))
    i = 0
    while len(out) < entries:
        d = i % dirs
        base = f"{prefix}/pkg{d % 300}/sub{d}/m{i}"
        if i % 25 == 24:
            out.append(Entry(base + ".so", "symlink", target=f"m{i - 1}.py"))
        else:
            out.append(Entry(base + ".py", "file", data=(b"x = %d\n" % i) * (1 + i % 7)))
        i += 1
    return out


def _os_layer(entries: int) -> list[Any]:
    from zerostart.image.layers import Entry

    out: list[Any] = []
    for i in range(entries):
        folder = ("usr/bin", "usr/lib/x86_64-linux-gnu", "usr/share/doc", "etc")[i % 4]
        out.append(Entry(f"/{folder}/f{i}", "file", data=b"%d\n" % i, executable=i % 4 == 0))
    return out


def deep_file(total: int) -> str:
    """A .py file about half way through the site-packages layer (its image path, no ``/``)."""
    n = total - OS_ENTRIES
    dirs = max(1, n // 16)
    i = (n - dirs) // 2
    i -= 1 if i % 25 == 24 else 0
    d = i % dirs
    return f"{SITE[1:]}/pkg{d % 300}/sub{d}/m{i}.py"


def build(layout: Path, total: int) -> tuple[int, int]:
    """Write the OCI layout; returns (tar entries written, regular files)."""
    from zerostart.image.layers import write_layer
    from zerostart.image.oci import ImageConfig, write_oci_layout

    blobs = layout.parent / ".blobs"
    entries = [_os_layer(OS_ENTRIES), _site_packages(total - OS_ENTRIES, SITE)]
    layers = [write_layer(name, e, blobs) for name, e in zip(("os", "site"), entries, strict=True)]
    write_oci_layout(layout, ImageConfig(entrypoint=("/bin/true",)), layers, {})
    return sum(map(len, entries)), sum(la.file_count for la in layers)


def child(ref: str, cache: Path, mnt: Path, deep: str) -> dict[str, Any]:
    """One mount with whatever ``zerostart`` is on sys.path; its timings."""
    from zerostart.imagefs.mount import LazyMount

    m = LazyMount(ref, mnt, cache_dir=cache, prefetch=False, log_path=mnt.with_suffix(".log"))
    t0 = time.perf_counter()
    info = m.start()
    wall = (time.perf_counter() - t0) * 1e3
    try:
        t1 = time.perf_counter()
        size = os.stat(mnt / deep).st_size
        data = (mnt / deep).read_bytes()
        first_lookup_read = (time.perf_counter() - t1) * 1e3
        assert len(data) == size > 0
        t2 = time.perf_counter()
        listed = len(os.listdir((mnt / deep).parent.parent))
        list_ms = (time.perf_counter() - t2) * 1e3
    finally:
        m.stop()
    keys = ("import_ms", "manifest_ms", "index_ms", "mount_ms")
    return {
        **{k: info[k] for k in keys},
        "index": info.get("index"),
        "start_to_ready_wall_ms": wall,
        "deep_lookup_and_read_ms": first_lookup_read,
        "list_folder_ms": list_ms,
        "listed": listed,
    }


def _run(src: Path, ref: str, cache: Path, mnt: Path, deep: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", ref, str(cache), str(mnt), deep],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"mount with {src} failed: {out.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = (
        "mount_ms",
        "index_ms",
        "import_ms",
        "start_to_ready_wall_ms",
        "deep_lookup_and_read_ms",
    )
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--entries", type=int, default=36_600)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--base", default=BASE, help="git revision of the previous code path")
    ap.add_argument("--save", action="store_true", help="write bench/results/mount_index.json")
    opts = ap.parse_args()
    if opts.child:
        ref, cache, mnt, deep = opts.child
        print(json.dumps(child(ref, Path(cache), Path(mnt), deep)))
        return

    from registry_server import running_registry

    from common import write_result
    from zerostart.benchmark import machine_description
    from zerostart.registry.client import push

    work = Path(tempfile.mkdtemp(prefix="zs-mount-index-"))
    try:
        base_src = work / "base"
        base_src.mkdir()
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", opts.base, "src"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=tar, check=True, timeout=60)
        paths = {"previous": base_src / "src", "this": ROOT / "src"}
        t0 = time.perf_counter()
        entries, files = build(work / "layout", opts.entries)
        build_s = time.perf_counter() - t0
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {
            k: {"cold": [], "warm": []} for k in paths
        }
        with running_registry(work / "registry") as registry:
            ref = f"{registry.address}/bench/torch-shaped:1"
            push(work / "layout", ref)
            for run in range(opts.runs):
                for name, src in paths.items():
                    cache = work / f"cache-{name}-{run}"
                    for phase in ("cold", "warm"):
                        mnt = work / f"mnt-{name}-{run}-{phase}"
                        r = _run(src, ref, cache, mnt, deep_file(opts.entries))
                        assert r["index"] == ("built" if phase == "cold" else "cached"), r
                        rows[name][phase].append(r)
                        print(
                            name,
                            phase,
                            {k: round(v, 1) for k, v in r.items() if isinstance(v, float)},
                        )
                    shutil.rmtree(cache, ignore_errors=True)
        load = os.getloadavg()
        summary = {
            name: {p: _summary(v) for p, v in phases.items()} for name, phases in rows.items()
        }
        result = {
            "machine": machine_description(),
            "load_average": load,
            "image": {
                "entries": entries,
                "regular_files": files,
                "layers": 2,
                "shape": "synthetic PyTorch site-packages + OS layer (bench/mount_index.py)",
                "build_s": build_s,
            },
            "base_revision": opts.base,
            "revision": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            ).stdout.strip(),
            "runs": opts.runs,
            "median": summary,
            "rows": rows,
        }
        for name in paths:
            s = summary[name]
            print(
                f"{name:8s} cold mount {s['cold']['mount_ms']:7.1f} ms (index {s['cold']['index_ms']:.1f}),"
                f" warm mount {s['warm']['mount_ms']:6.1f} ms (index {s['warm']['index_ms']:.1f});"
                f" deep lookup+read warm {s['warm']['deep_lookup_and_read_ms']:.1f} ms"
            )
        print(f"{entries} entries, median of {opts.runs}, load {load[0]:.1f}")
        if opts.save:
            write_result("mount_index", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
