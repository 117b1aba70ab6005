"""``zerostart push`` and ``zerostart pull``: argparse wiring for the registry client.

Kept apart from :mod:`zerostart.cli` so that module stays a list of commands;
the lead calls :func:`add_subcommands` there. The registry code is imported
only when a command runs, so ``zerostart --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from zerostart.errors import ZerostartError

PASSWORD_ENV = "ZEROSTART_REGISTRY_PASSWORD"


def _add_common(p: argparse.ArgumentParser) -> None:
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--insecure",
        dest="insecure",
        action="store_const",
        const=True,
        default=None,
        help="plain HTTP (the default for 127.0.0.1 / localhost only)",
    )
    tls.add_argument(
        "--tls", dest="insecure", action="store_const", const=False, help="force HTTPS"
    )
    p.add_argument(
        "--username",
        help=f"login name; the password comes from --password-stdin or ${PASSWORD_ENV} "
        "(default: credentials from `docker login`, ~/.docker/config.json)",
    )
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds each network call may wait (default 60)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _auth(args: argparse.Namespace) -> tuple[str, str] | None:
    if not args.username:
        if args.password_stdin:
            raise ZerostartError("--password-stdin needs --username")
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise ZerostartError(
            f"--username {args.username} given without a password",
            hint=f"pipe it with --password-stdin or set ${PASSWORD_ENV}",
        )
    return args.username, password


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from zerostart.progress import Progress

    opts: dict[str, Any] = {
        "insecure": args.insecure,
        "auth": _auth(args),
        "progress": None if args.quiet else Progress(),
    }
    if args.timeout is not None:
        opts["timeout_s"] = args.timeout
    return opts


def _cmd_push(args: argparse.Namespace) -> int:
    from zerostart.registry.client import push

    r = push(args.layout, args.reference, mount_from=args.mount_from, **_options(args))
    print(
        f"pushed {r.reference} {r.digest}: {r.blobs_uploaded} blobs uploaded "
        f"({r.bytes_uploaded / 1e6:.1f} MB), {r.blobs_skipped} already there, "
        f"{r.blobs_mounted} mounted, in {r.seconds:.2f} s"
    )
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from zerostart.registry.client import pull

    r = pull(args.reference, args.layout, **_options(args))
    print(
        f"pulled {r.reference} {r.digest} into {args.layout}: {r.blobs_downloaded} blobs "
        f"downloaded ({r.bytes_downloaded / 1e6:.1f} MB, digests verified), "
        f"{r.blobs_present} already present, in {r.seconds:.2f} s"
    )
    return 0


def add_subcommands(sub: Any) -> None:
    """Add ``push`` and ``pull`` to the ``zerostart`` subparsers (``add_subparsers()``)."""
    p = sub.add_parser(
        "push",
        help="push an OCI image layout to a registry",
        description=(
            "Upload an OCI image layout (zerostart build's output) to any OCI registry. "
            "Blobs the registry already holds are skipped, so re-running after a failure "
            "only sends what is missing."
        ),
    )
    p.add_argument("layout", help="OCI image layout folder")
    p.add_argument("reference", help="where to push, e.g. 127.0.0.1:5000/sst2:1")
    p.add_argument(
        "--mount-from",
        metavar="REPO",
        help="repository on the same registry to mount shared layers from (no upload)",
    )
    _add_common(p)
    p.set_defaults(func=_cmd_push)

    q = sub.add_parser(
        "pull",
        help="pull an image from a registry into an OCI image layout",
        description=(
            "Download an image into an OCI image layout, checking every blob's size and "
            "sha256 as it streams; nothing unverified is ever written under its digest."
        ),
    )
    q.add_argument("reference", help="what to pull, e.g. 127.0.0.1:5000/sst2:1")
    q.add_argument("layout", help="OCI image layout folder (created if missing)")
    _add_common(q)
    q.set_defaults(func=_cmd_pull)
