"""An image another tool built, started lazily through its zTOC: bytes and time against a full pull.

    python bench/zran_index.py [--spans 0.25,0.5,1,2,4,8] [--rate-mbit 100] [--repeats 2]
    python bench/zran_index.py --profile --spans 1 --skip-shapes --out zran_profile

The image: a python:slim-like root (Debian's python3.11, its whole standard
library, the libraries it links, a small HTTP server and 8 MB of data;
tests/integration/foreign_images.py), made into a one-layer image by
``umoci`` (pgzip) and pushed by ``skopeo``; zerostart never rewrites it.
The registry (Debian's docker-registry) sits on loopback behind the
token-bucket proxy of bench/lazy.py (tests/integration/fault_proxy.py).

For each span size: ``zerostart index`` (time, zTOC size, checkpoints, the
spans' real compressed length against the target: checkpoints wait for a
byte-aligned block boundary, ztoc/_build.py); then, interleaved with full
pulls, cold starts with empty caches and the page cache dropped:

(a) full pull + unpack + runc run, to the first correct ``GET /answer``;
(b) ``run --lazy`` through the zTOC, to the same answer;
(c) with ``--profile``: ``run --lazy`` of the same image in another repository
    whose index artifact also carries a span profile recorded by one lazy
    start of it (``LazyMount(record=...)``, then ``add_profile``): the
    recorded spans are prefetched in order, on-demand reads first.

Bytes are what crossed the proxy before the answer. Also measured: resuming
a span from its checkpoint with Python's zlib (``decompressobj(wbits=-15,
zdict=window)``, what the mount does) against zlib's ``inflatePrime`` +
``inflateSetDictionary`` through ctypes, on the same spans; and the span
lengths the same tar gets when compressed by GNU gzip -6 instead of pgzip.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from fault_proxy import fault_proxy  # noqa: E402
from foreign_images import (  # noqa: E402
    expected_answer,
    python_rootfs,
    skopeo_push,
    umoci_image,
    zstd_image,
)
from registry_server import running_registry  # noqa: E402

from common import write_result  # noqa: E402
from zerostart.benchmark import drop_page_cache, machine_description  # noqa: E402
from zerostart.container.lazy import LazyContainer  # noqa: E402
from zerostart.container.runtime import Container  # noqa: E402
from zerostart.imagefs.zindex import add_profile, index_image  # noqa: E402
from zerostart.procs import free_port  # noqa: E402
from zerostart.registry.client import pull  # noqa: E402
from zerostart.warmup import WarmupRequest, send  # noqa: E402
from zerostart.ztoc import Ztoc, decode_profile, inflate_span  # noqa: E402
from zerostart.ztoc._build import Z_OK, _ZStream, build, libz  # noqa: E402

WORK = ROOT / ".cache" / "bench-zran"
READY_TIMEOUT_S = 600.0


def _answer(port: int) -> Any:
    status, answer = send(port, WarmupRequest("GET", "/answer", None))
    if status != 200:
        raise RuntimeError(f"/answer: {status} {answer}")
    return answer


def run_full(ref: str, proxy: Any) -> dict[str, Any]:
    layout, cache = WORK / "pulled", WORK / "rootfs-cache"
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
        answer = _answer(c.port)
        seconds = time.perf_counter() - t0
        sent = proxy.bytes_sent - sent0
    finally:
        c.stop()
    return {
        "seconds_to_first_answer": round(seconds, 3),
        "pull_seconds": round(t_pull, 3),
        "bytes_at_first_answer": sent,
        "pulled_bytes": pulled.bytes_downloaded,
        "page_cache_dropped": dropped,
        "answer": answer,
    }


def run_lazy(ref: str, proxy: Any, record: Path | None = None) -> dict[str, Any]:
    """A cold lazy start to the first answer; ``record``: write its span profile there
    (prefetch off while recording, as ``run --lazy --record-profile`` does)."""
    cache = WORK / "imagefs-cache"
    shutil.rmtree(cache, ignore_errors=True)
    dropped = drop_page_cache()
    sent0 = proxy.bytes_sent
    t0 = time.perf_counter()
    options: dict[str, Any] = {"cache_dir": cache}
    if record is not None:
        options |= {"record": record, "prefetch": False}
    c = LazyContainer(ref, port=free_port(), ready_timeout_s=READY_TIMEOUT_S, mount_options=options)
    try:
        c.start()
        answer = _answer(c.port)
        seconds = time.perf_counter() - t0
        sent = proxy.bytes_sent - sent0
        time.sleep(0.6)  # the daemon rewrites its stats twice a second
        stats, info = c.stats(), c.mount_info
    finally:
        c.stop()
    return {
        "seconds_to_first_answer": round(seconds, 3),
        "index_ms": round(info["index_ms"], 1),
        "mount_ms": round(info["mount_ms"], 1),
        "bytes_at_first_answer": sent,
        "bytes_at_mount": stats["bytes_fetched_at_mount"],
        "span_fetches": stats["reads"]["registry_fetches"],
        "prefetch": stats["reads"]["prefetch"],
        "layers": [la["note"] for la in info["layers"]],
        "page_cache_dropped": dropped,
        "answer": answer,
    }


def _resume_ctypes(z: Ztoc, i: int, raw: bytes) -> bytes:
    """Span ``i`` through zlib's inflatePrime + inflateSetDictionary (zran.c's way)."""
    lib = libz()
    cp = z.checkpoints[i]
    length = z.span_end(i) - cp.out_offset
    strm = _ZStream()
    wbits = 31 if cp.member_start else -15
    lib.inflateInit2_(ctypes.byref(strm), wbits, lib.zlibVersion(), ctypes.sizeof(strm))
    try:
        k = cp.in_bits % 8
        data = raw[1:] if k else raw
        if k:
            lib.inflatePrime(ctypes.byref(strm), 8 - k, raw[0] >> k)
        if cp.window:
            lib.inflateSetDictionary(ctypes.byref(strm), cp.window, len(cp.window))
        inbuf = ctypes.create_string_buffer(data, len(data))
        out = ctypes.create_string_buffer(length)
        strm.next_in, strm.avail_in = ctypes.addressof(inbuf), len(data)
        strm.next_out, strm.avail_out = ctypes.addressof(out), length
        ret = lib.inflate(ctypes.byref(strm), 0)
        if ret not in (Z_OK, 1) or strm.avail_out:
            raise RuntimeError(f"inflate {ret}")
        return out.raw
    finally:
        lib.inflateEnd(ctypes.byref(strm))


def _resume_python(z: Ztoc, i: int, raw: bytes) -> bytes:
    cp = z.checkpoints[i]
    d = zlib.decompressobj(31 if cp.member_start else -15, zdict=cp.window)
    return d.decompress(raw, z.span_end(i) - cp.out_offset)


def resume_costs(blob: bytes, z: Ztoc) -> dict[str, Any]:
    """ms per 4 MiB of output: inflate alone both ways, and the mount's inflate_span (+ sha256)."""
    times: dict[str, list[float]] = {"python_zdict": [], "ctypes_setdict": [], "inflate_span": []}
    for i, cp in enumerate(z.checkpoints):
        start, end = z.span_range(i)
        raw, length = blob[start:end], z.span_end(i) - cp.out_offset
        want = _resume_python(z, i, raw)
        for _ in range(3):
            for name, fn in (
                ("python_zdict", lambda: _resume_python(z, i, raw)),
                ("ctypes_setdict", lambda: _resume_ctypes(z, i, raw)),
                ("inflate_span", lambda: inflate_span(cp, raw, length)),
            ):
                t0 = time.perf_counter()
                got = fn()
                times[name].append((time.perf_counter() - t0) / length * 4 * 2**20 * 1e3)
                assert got == want and len(got) == length
    return {f"{k}_ms_per_4MiB_out": round(statistics.median(v), 2) for k, v in times.items()}


def span_shape(z: Ztoc) -> dict[str, Any]:
    sizes = [z.span_range(i)[1] - z.span_range(i)[0] for i in range(len(z.checkpoints))][:-1]
    return {
        "target_bytes": z.span_bytes,
        "spans": len(z.checkpoints),
        "mean_compressed_bytes": round(statistics.mean(sizes)) if sizes else None,
        "max_compressed_bytes": max(sizes) if sizes else None,
        "mean_over_target": round(statistics.mean(sizes) / z.span_bytes, 3) if sizes else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", default="0.25,0.5,1,2,4,8", help="span sizes in MiB")
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also start each span size's image with a recorded span profile beside its zTOCs "
        "(recorded by one lazy start, pushed by add_profile), interleaved with the others",
    )
    ap.add_argument("--skip-shapes", action="store_true", help="skip the resume/span-shape part")
    ap.add_argument(
        "--zstd",
        action="store_true",
        help="recompress the layer with pzstd (tar+zstd, many frames)",
    )
    ap.add_argument("--out", default="zran_index", help="result name under bench/results/")
    args = ap.parse_args()
    load_before = list(os.getloadavg())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = python_rootfs(WORK / "root", full_stdlib=True)
    umoci_image(WORK / "root", WORK / "layout", "1")
    layout = WORK / "layout"
    if args.zstd:  # the same tar as a multi-frame zstd layer (pzstd -1): spans at frame starts
        layout = WORK / "layout-zstd"
        zstd_image(WORK / "layout", "1", layout)
        args.skip_shapes = True  # the resume/shape part measures gzip
    want = expected_answer(data)
    spans = [float(s) for s in args.spans.split(",")]
    out: dict[str, Any] = {"spans": {}, "full": []}
    rate = args.rate_mbit * 1e6 / 8
    with (
        running_registry(WORK / "registry") as reg,
        fault_proxy(reg.address, rate_bytes_per_s=rate) as proxy,
    ):
        refs = {}
        for mib in spans:
            ref = f"{reg.address}/foreign/py{round(mib * 1024)}k:1"
            skopeo_push(layout, "1", ref)
            r = index_image(ref, span_bytes=round(mib * 2**20))
            (layer,) = r.layers
            refs[mib] = ref.replace(reg.address, proxy.address)
            out["spans"][mib] = {"index": layer | {"seconds": r.seconds}, "lazy": []}
            out["image_bytes"] = layer["size"]
            out["unpacked_bytes"] = layer["uncompressed"]
            if args.profile:  # the same image in a repository of its own, with a profile
                out["spans"][mib] |= record_profile(reg.address, proxy, mib, layout)
                out["spans"][mib]["lazy_profile"] = []
        for _ in range(args.repeats):
            full = run_full(refs[spans[0]], proxy)
            assert full.pop("answer") == want
            out["full"].append(full)
            for mib in spans:
                lazy = run_lazy(refs[mib], proxy)
                assert lazy.pop("answer") == want
                out["spans"][mib]["lazy"].append(lazy)
                if args.profile:
                    ref = _profiled(reg.address, mib).replace(reg.address, proxy.address)
                    lazy = run_lazy(ref, proxy)
                    assert lazy.pop("answer") == want
                    out["spans"][mib]["lazy_profile"].append(lazy)
    if args.skip_shapes:
        _write(args, load_before, out)
        return
    blob_path = next(p for p in (WORK / "layout/blobs/sha256").iterdir() if p.stat().st_size > 1e6)
    blob = blob_path.read_bytes()
    z4 = build(io.BytesIO(blob), 4 << 20)
    out["resume_4MiB_spans"] = resume_costs(blob, z4)
    out["span_shape"] = {"umoci_pgzip": span_shape(z4)}
    tar = gzip.decompress(blob)
    gnu = subprocess.run(["gzip", "-6", "-n", "-c"], input=tar, capture_output=True, check=True)
    out["span_shape"]["gnu_gzip_6"] = span_shape(build(io.BytesIO(gnu.stdout), 4 << 20))
    out["span_shape"]["python_zlib_9"] = span_shape(
        build(io.BytesIO(gzip.compress(tar, 9, mtime=0)), 4 << 20)
    )
    _write(args, load_before, out)


def _profiled(registry: str, mib: float) -> str:
    return f"{registry}/foreign/py{round(mib * 1024)}k-profile:1"


def record_profile(registry: str, proxy: Any, mib: float, layout: Path) -> dict[str, Any]:
    """Push, index, record one lazy start's span profile, add it beside the zTOCs."""
    ref = _profiled(registry, mib)
    skopeo_push(layout, "1", ref)
    index_image(ref, span_bytes=round(mib * 2**20))
    path = WORK / f"profile-{round(mib * 1024)}k.json"
    rec = run_lazy(ref.replace(registry, proxy.address), proxy, record=path)
    rec.pop("answer")
    added = add_profile(ref, path.read_bytes())
    profile = decode_profile(path.read_bytes())
    return {
        "recording_start": rec,
        "profile": {
            "spans": len(profile.reads),
            "json_bytes": added.layers[0]["profile_bytes"],
            "add_profile_seconds": added.seconds,
        },
    }


def _write(args: argparse.Namespace, load_before: list[float], out: dict[str, Any]) -> None:
    result = {
        "what": "an umoci-built python:slim-like image, indexed by `zerostart index`, cold starts",
        "layer": "tar+zstd, recompressed by pzstd -1" if args.zstd else "tar+gzip (umoci, pgzip)",
        "link": f"loopback docker-registry behind a token bucket at {args.rate_mbit:g} Mbit/s",
        "machine": machine_description(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        **out,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
