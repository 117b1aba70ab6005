"""How long the lazy filesystem's index takes for a PyTorch-sized layer (36,600 entries).

A synthetic eStargz layer shaped like the PyTorch + transformers server image's
biggest layer (site-packages: ~2,300 folders, ~33,000 files, ~1,300 symlinks,
modification times spread over a few hundred packages) is written with our own
eStargz writer; its bytes are served from memory by a stand-in for the registry
reader (no network), so the numbers are the index alone: tail + TOC read,
validated, turned into layer entries and written as the layer's binary index
(first mount), or that file mapped and checked (later mount); no inode is made
until a lookup (imagefs/_tree.py). bench/mount_index.py times whole FUSE
mounts against the previous code.

    PYTHONPATH=src python bench/imagefs_index.py [--entries 36600] [--runs 7] [--save]

Compares, in the same run, the first mount on a node (the TOC fetched, parsed
and validated, the layer's index written) with a later mount of the same
image (the index kept by the first per layer digest, mapped and checked:
src/zerostart/imagefs/_indexcache.py). Wall and CPU time are both recorded: on
a shared machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result
from zerostart.benchmark import machine_description
from zerostart.estargz import Writer
from zerostart.imagefs._indexcache import index_image

MANIFEST = "sha256:" + "5a" * 32  # any digest: the key of the kept index


class MemoryReader:
    """What `open_layers` needs of `registry.ranges.BlobReader`: byte ranges of blobs in memory."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.requests = 0
        self.bytes_fetched = 0

    def read(self, digest: str, start: int, end: int) -> bytes:
        self.requests += 1
        self.bytes_fetched += end - start
        return self.blobs[digest][start:end]


def synthetic_layer(entries: int) -> tuple[bytes, dict[str, Any]]:
    out = io.BytesIO()
    w = Writer(out)
    dirs = max(1, entries // 16)
    made = 0
    for d in range(dirs):
        info = tarfile.TarInfo(f"usr/lib/python3/site-packages/pkg{d % 300}/sub{d}")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000 + (d % 300) * 86400
        if d < 300:
            parent = tarfile.TarInfo(f"usr/lib/python3/site-packages/pkg{d}")
            parent.type, parent.mode, parent.mtime = tarfile.DIRTYPE, 0o755, info.mtime
            if d == 0:
                for p in ("usr", "usr/lib", "usr/lib/python3", "usr/lib/python3/site-packages"):
                    top = tarfile.TarInfo(p)
                    top.type, top.mode = tarfile.DIRTYPE, 0o755
                    w.add(top)
                    made += 1
            w.add(parent)
            made += 1
        w.add(info)
        made += 1
    i = 0
    while made < entries:
        d = i % dirs
        base = f"usr/lib/python3/site-packages/pkg{d % 300}/sub{d}/m{i}"
        if i % 25 == 24:
            info = tarfile.TarInfo(base + ".so")
            info.type, info.linkname = tarfile.SYMTYPE, f"m{i - 1}.py"
            w.add(info)
        else:
            payload = (b"x = %d\n" % i) * (1 + i % 7)
            info = tarfile.TarInfo(base + ".py")
            info.size, info.mode, info.mtime = (
                len(payload),
                0o644,
                1_600_000_000 + (d % 300) * 86400,
            )
            w.add(info, payload)
        made += 1
        i += 1
    w.add_landmark(prefetch=False)
    blob = w.close()
    data = out.getvalue()
    desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": blob.digest,
        "size": len(data),
        "annotations": blob.annotations(),
    }
    return data, desc


def time_index(
    reader: MemoryReader, desc: dict[str, Any], cache: Path
) -> tuple[float, float, bool]:
    """(wall ms, CPU ms, whether the kept index served) of indexing the image once."""
    t0, c0 = time.perf_counter(), time.process_time()
    _, tree, cached = index_image(reader, MANIFEST, {"layers": [desc]}, cache)  # type: ignore[arg-type]
    assert tree.entries > 0
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=36_600)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--save", action="store_true", help="write bench/results/imagefs_index.json")
    opts = ap.parse_args()
    data, desc = synthetic_layer(opts.entries)
    reader = MemoryReader({desc["digest"]: data})
    first, later, first_cpu, later_cpu = [], [], [], []
    index_bytes = 0
    for _ in range(opts.runs):  # interleaved: a fresh cache folder, then the same one again
        with tempfile.TemporaryDirectory() as tmp:
            ms, cpu, cached = time_index(reader, desc, Path(tmp))
            assert not cached
            first.append(ms)
            first_cpu.append(cpu)
            ms, cpu, cached = time_index(reader, desc, Path(tmp))
            assert cached
            later.append(ms)
            later_cpu.append(cpu)
            index_bytes = sum(p.stat().st_size for p in (Path(tmp) / "index").rglob("*.lix"))
    load = os.getloadavg()
    result = {
        "machine": machine_description(),
        "load_average": load,
        "entries": opts.entries,
        "blob_bytes": len(data),
        "index_file_bytes": index_bytes,
        "runs": opts.runs,
        "first_mount_index_ms": first,
        "later_mount_index_ms": later,
        "first_mount_index_cpu_ms": first_cpu,
        "later_mount_index_cpu_ms": later_cpu,
        "first_median_ms": statistics.median(first),
        "later_median_ms": statistics.median(later),
        "first_median_cpu_ms": statistics.median(first_cpu),
        "later_median_cpu_ms": statistics.median(later_cpu),
    }
    print(
        f"{opts.entries} entries: index on a first mount {result['first_median_ms']:.1f} ms "
        f"(CPU {result['first_median_cpu_ms']:.1f}), on a later mount "
        f"{result['later_median_ms']:.1f} ms (CPU {result['later_median_cpu_ms']:.1f}): "
        f"{result['first_median_ms'] / result['later_median_ms']:.1f}x; index file "
        f"{index_bytes / 1e6:.1f} MB; median of {opts.runs}, load {load[0]:.1f}"
    )
    if opts.save:
        write_result("imagefs_index", result)


if __name__ == "__main__":
    main()
