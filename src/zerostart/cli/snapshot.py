"""``zerostart snapshot`` and ``zerostart restore``; wired into zerostart.cli by ``add_subcommands``.

Errors are raised as ``ZerostartError`` subclasses; the main CLI shows them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from zerostart.snapshot import (
        SnapshotError,
        Warmup,
        default_store,
        list_snapshots,
        remove_snapshot,
        snapshot,
    )

    store = Path(args.store) if args.store else default_store()
    if args.list:
        for name in list_snapshots(store):
            print(name)
        return 0
    if args.remove:
        freed = remove_snapshot(store, args.remove)
        print(f"removed {args.remove}: {freed / 1e6:.1f} MB freed")
        return 0
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not args.name or not command:
        raise SnapshotError("usage: zerostart snapshot --name NAME [--ready URL] -- COMMAND ...")
    warmup = None
    if args.warmup_path:
        body: Any = json.loads(args.warmup_body) if args.warmup_body else None
        warmup = Warmup(args.warmup_path, body, "POST" if body is not None else "GET")
    result = snapshot(
        args.name,
        command,
        ready_url=args.ready,
        warmup=warmup,
        store=store,
        leave_running=args.leave_running,
        ready_timeout_s=args.ready_timeout,
    )
    t = result.timings_s
    print(
        f"snapshot {result.name} -> {result.path}: {result.size_bytes / 1e6:.1f} MB of images "
        f"({result.dedup_saved_bytes / 1e6:.1f} MB shared with earlier snapshots)"
    )
    print("  " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items()))
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from zerostart.snapshot import check, restore

    if args.check:
        check(args.name, store=args.store, full=args.full_verify)
        print(f"snapshot {args.name} can be restored on this host")
        return 0
    result = restore(
        args.name,
        store=args.store,
        fallback=not args.no_fallback,
        full_verify=args.full_verify,
        lazy_pages=True if args.lazy_pages else None,
    )
    phases = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in result.timings_s.items())
    print(f"{result.mode} {result.name}: pid {result.pid}, {result.url} ({phases})")
    if result.reason:
        print(f"  not restored because: {result.reason}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``snapshot`` and ``restore`` to the main parser's subcommands."""
    p = sub.add_parser(
        "snapshot",
        help="boot a command, warm it up, and freeze it (CRIU)",
        description="zerostart snapshot --name N [--ready URL] -- COMMAND ...",
    )
    p.add_argument("--name", help="snapshot name (letters, digits, . _ -)")
    p.add_argument(
        "--ready", help="health URL that answers 200 when ready (default: from --port in COMMAND)"
    )
    p.add_argument("--warmup-path", help="request path to call once ready, e.g. /embed")
    p.add_argument("--warmup-body", help="JSON body for the warm-up request (POST); none: GET")
    p.add_argument(
        "--leave-running", action="store_true", help="keep the command running after the dump"
    )
    p.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds to wait for readiness"
    )
    p.add_argument(
        "--store",
        help="snapshot store folder (default $ZEROSTART_SNAPSHOTS, else "
        "/var/lib/zerostart/snapshots for root, else $XDG_STATE_HOME/zerostart/snapshots)",
    )
    p.add_argument("--list", action="store_true", help="list snapshots and exit")
    p.add_argument("--remove", metavar="NAME", help="delete a snapshot and its unshared images")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ... to run and freeze")
    p.set_defaults(func=_cmd_snapshot)

    r = sub.add_parser("restore", help="restore a snapshot (boots the command if it cannot)")
    r.add_argument("name")
    r.add_argument("--store", help="snapshot store folder")
    r.add_argument("--no-fallback", action="store_true", help="fail instead of booting the command")
    r.add_argument("--full-verify", action="store_true", help="hash every image and mapped file")
    r.add_argument(
        "--check", action="store_true", help="only check the snapshot can be restored here"
    )
    r.add_argument(
        "--lazy-pages",
        action="store_true",
        help="memory on first touch, the rest streamed behind (CRIU lazy-pages; default: "
        "$ZEROSTART_LAZY_PAGES=1 or off)",
    )
    r.set_defaults(func=_cmd_restore)
