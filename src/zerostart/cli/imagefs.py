"""``zerostart imagefs stats · mount · add-profile``: the lazy image filesystem from the command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def format_stats(s: dict[str, Any]) -> str:
    """A few lines a person reads: what was fetched, from which tier, how far prefetch got."""
    cache, reads = s.get("cache", {}), s.get("reads", {})
    pre = reads.get("prefetch", {})
    total = pre.get("total_bytes", 0)
    done = pre.get("done_bytes", 0)
    t = s.get("timings", {})
    lines = [
        f"imagefs {s.get('reference')} at {s.get('mountpoint')} (pid {s.get('pid')})",
        f"  index {t.get('index_ms', 0):.1f} ms, mounted {t.get('mount_ms', 0):.1f} ms; "
        f"{s.get('inodes', 0)} inodes looked up of {s.get('records', 0)} records "
        f"in {len(s.get('layers', []))} layers",
        f"  fetched {_mb(s.get('bytes_fetched', 0))} in {s.get('requests', 0)} requests "
        f"({_mb(s.get('bytes_fetched_at_mount', 0))} to mount)",
        f"  chunk hits: memory {cache.get('memory_hits', 0)}, disk {cache.get('disk_hits', 0)}, "
        f"registry {reads.get('registry_fetches', 0)} fetches; cache holds "
        f"{_mb(cache.get('memory_bytes', 0))} in memory, {_mb(cache.get('disk_bytes', 0))} on disk "
        f"({cache.get('disk_evictions', 0)} evicted)",
        f"  prefetch {pre.get('state', 'none')}: {_mb(done)} of {_mb(total)}"
        + (f" ({pre['source']})" if pre.get("source") else ""),
    ]
    p = pre.get("profile") or {}
    if "spans" in p:  # a span profile beside a zTOC image's index (docs/lazy-images.md)
        lines.append(f"  span profile: {p['spans']} spans ({_mb(p['bytes'])})")
    elif p:
        lines.append(
            f"  chunk profile: {p['chunks']} chunks ({_mb(p['bytes'])}) of {p['entries']} entries; "
            f"skipped {p['skipped_missing']} missing, {p['skipped_offset']} past the end"
        )
    if pre.get("profile_refused"):
        lines.append(f"  span profile refused: {pre['profile_refused']}")
    for layer in s.get("layers", []):
        lines.append(f"  layer {layer['digest'][:19]}: {layer['note']}")
    problems = {
        k: reads.get(k, 0) for k in ("retries", "digest_mismatches", "failed_reads") if reads.get(k)
    }
    if problems:
        lines.append("  problems: " + ", ".join(f"{k} {v}" for k, v in problems.items()))
    lines += [f"  error: {e}" for e in reads.get("errors", [])]
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    from zerostart.imagefs.mount import live_stats

    mounts = live_stats()
    if args.json:
        print(json.dumps(mounts, indent=2))
    elif not mounts:
        print("no imagefs mounts on this host")
    else:
        print("\n".join(format_stats(s) for s in mounts))
    return 0


def _cmd_mount(args: argparse.Namespace) -> int:
    from zerostart.imagefs.mount import LazyMount

    mount = LazyMount(
        args.reference,
        Path(args.mountpoint).resolve(),
        prefetch=not (args.no_prefetch or args.record),
        insecure=args.insecure,
        record=Path(args.record).resolve() if args.record else None,
    )
    if args.cache_dir:
        mount.cache_dir = Path(args.cache_dir)
    info = mount.start()
    print(
        f"mounted {args.reference} at {args.mountpoint} (index {info['index_ms']:.1f} ms, "
        f"mount {info['mount_ms']:.1f} ms); Ctrl-C unmounts",
        file=sys.stderr,
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while mount.alive():
            time.sleep(0.5)
        print(f"imagefs daemon exited ({mount.returncode}): {mount.log_tail(500)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        stats = mount.stats()
        mount.stop()
        if stats:
            print(format_stats(stats), file=sys.stderr)


def _cmd_add_profile(args: argparse.Namespace) -> int:
    from zerostart.chunkprofile import decode
    from zerostart.image.profile import add_profile_layer

    profile = decode(Path(args.profile).read_bytes())
    digest = add_profile_layer(args.layout, profile)
    print(f"{args.layout}: chunk profile of {len(profile.reads)} chunks added; manifest {digest}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``imagefs`` (``stats``, ``mount``, ``add-profile``) on the main parser's sub-parsers."""
    p = sub.add_parser(
        "imagefs",
        help="lazy image filesystem: stats of live mounts, or mount an image by hand",
        description="Images mounted from their registry (`zerostart run REF --lazy` mounts one).",
    )
    verbs = p.add_subparsers(dest="imagefs_command", metavar="VERB", required=True)
    s = verbs.add_parser(
        "stats", help="bytes fetched, cache hits per tier, prefetch progress, errors"
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_stats)
    m = verbs.add_parser("mount", help="mount REF read-only at DIR until Ctrl-C")
    m.add_argument("reference", help="host:port/name:tag")
    m.add_argument("mountpoint")
    m.add_argument("--cache-dir", help="chunk cache folder (default $ZEROSTART_CACHE/imagefs)")
    m.add_argument("--no-prefetch", action="store_true")
    m.add_argument(
        "--record",
        metavar="FILE",
        help="write a chunk profile of the reads to FILE at unmount (prefetch is off)",
    )
    m.add_argument("--insecure", action="store_true", help="plain HTTP to a non-loopback registry")
    m.set_defaults(func=_cmd_mount)
    a = verbs.add_parser(
        "add-profile",
        help="put a recorded chunk profile on top of an image (OCI layout) as a layer of its own",
    )
    a.add_argument("layout", help="OCI layout folder (as `zerostart build` writes it)")
    a.add_argument(
        "profile", help="the profile: `imagefs mount --record` or `run --record-profile`"
    )
    a.set_defaults(func=_cmd_add_profile)
