"""``zerostart index REF``: index an existing image's gzip layers for lazy starts (zTOC artifact).

The work is in :mod:`zerostart.imagefs.zindex`; this module is argparse wiring
and the one-line report. Imported by the CLI only.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zerostart.cli.registry import _auth
    from zerostart.imagefs.zindex import add_profile, index_image

    if args.add_profile:
        p = add_profile(
            args.reference,
            Path(args.add_profile).read_bytes(),
            insecure=args.insecure,
            auth=_auth(args),
        )
        if args.json:
            print(json.dumps(p.__dict__, indent=1))
            return 0
        (info,) = p.layers
        print(
            f"span profile of {info['profile_reads']} spans ({info['profile_bytes']} bytes) "
            f"added beside the zTOCs of {p.reference} ({p.manifest_digest}, unchanged): "
            f"index artifact {p.artifact_digest}; `run --lazy` prefetches those spans in order"
        )
        return 0
    r = index_image(
        args.reference,
        span_bytes=args.span_mib * 1024 * 1024 if args.span_mib else args.span_bytes,
        insecure=args.insecure,
        auth=_auth(args),
    )
    if args.json:
        print(json.dumps(r.__dict__, indent=1))
        return 0
    where = "tag-schema fallback tag" if r.fallback_tag else "referrers API"
    print(f"indexed {r.reference} ({r.manifest_digest}, unchanged) in {r.seconds:.2f} s")
    for layer in r.layers:
        if "skipped" in layer:
            print(f"  layer {layer['digest'][:19]}: skipped ({layer['skipped']})")
        else:
            print(
                f"  layer {layer['digest'][:19]}: {layer['entries']} entries, "
                f"{layer['checkpoints']} spans, zTOC {layer['ztoc_bytes'] / 1e3:.1f} kB "
                f"for {layer['size'] / 1e6:.1f} MB"
            )
    print(f"index artifact {r.artifact_digest}, listed by the {where}; `run --lazy` uses it")
    return 0


def add_subcommands(sub: Any) -> None:
    """Add ``index`` to the ``zerostart`` subparsers."""
    from zerostart.cli.registry import _add_common
    from zerostart.ztoc import DEFAULT_SPAN_BYTES

    p = sub.add_parser(
        "index",
        help="index an image's gzip layers so `run --lazy` can start it lazily (SOCI-style)",
        description=(
            "For an image zerostart did not build (plain tar+gzip or tar+zstd layers), build a "
            "zTOC per "
            "layer (tar entries and gzip checkpoints every span) and push it to the registry "
            "as an OCI artifact whose subject is the image (referrers API, or the "
            "sha256-<hex> fallback tag). The image itself, and its digest, do not change."
        ),
    )
    p.add_argument("reference", help="the image, e.g. 127.0.0.1:5000/app:1")
    span = p.add_mutually_exclusive_group()
    span.add_argument(
        "--span-bytes",
        type=int,
        default=DEFAULT_SPAN_BYTES,
        help=f"compressed bytes between checkpoints (default {DEFAULT_SPAN_BYTES}; SOCI: 4 MiB)",
    )
    span.add_argument("--span-mib", type=int, help="the same in MiB")
    p.add_argument(
        "--add-profile",
        metavar="FILE",
        help="instead of indexing: put a span profile recorded by `run REF --lazy "
        "--record-profile FILE` beside the existing zTOCs (a new index artifact; the image "
        "is unchanged), so that lazy starts prefetch the spans a start reads, in order",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(p)
    p.set_defaults(func=_cmd_index)
