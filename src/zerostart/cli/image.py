"""``zerostart build · inspect · run``: argparse wiring for the image subcommands.

The lead's ``zerostart.cli`` calls :func:`add_subcommands` with its
sub-parser action; each command imports the image machinery only when it
runs, so ``zerostart --help`` stays instant. Errors are raised, never
printed here: ``zerostart.cli.main`` shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from zerostart.container.runtime import Container

DEFAULT_TOP = 15


def _progress(quiet: bool) -> Any:
    if quiet:
        return None
    from zerostart.progress import Progress

    return Progress()


def _cmd_build(args: argparse.Namespace) -> int:
    from zerostart.image.build import BuildOptions, build_image
    from zerostart.image.inspect import format_report, inspect_image, summary_line

    options = BuildOptions(
        device=args.device,
        arch=args.arch,
        format=args.format,
        compression=args.compression,
        tag=args.tag,
        include=tuple(args.include or ()),
        exclude=tuple(args.exclude or ()),
        strip_debug=not args.no_strip,
        drop_openssl=not args.keep_openssl,
        keep_sources=args.keep_sources,
        blas=args.blas,
        **({"python": args.python} if args.python else {}),
    )
    t0 = time.perf_counter()
    result = build_image(args.bundle, args.output, options, progress=_progress(args.quiet))
    elapsed = time.perf_counter() - t0
    layers = ", ".join(
        f"{la.name} {la.size / 1e6:.1f} MB ({la.uncompressed_size / 1e6:.1f} MB unpacked, {la.file_count} files)"
        for la in result.layers
    )
    print(f"built {args.output} ({options.format}) in {elapsed:.1f}s: {layers}")
    print(f"trace: {result.trace_path}")
    if result.blas is not None:
        saved = f", {result.blas.saved_bytes / 1e6:.1f} MB saved" if result.blas.saved_bytes else ""
        print(f"BLAS: {result.blas.blas} ({result.blas.reason}{saved})")
        if result.blas.warning:
            print(f"warning: {result.blas.warning}", file=sys.stderr)
    if options.format == "oci":
        report = inspect_image(args.output)
        if not args.quiet:  # the table is `zerostart inspect`'s; -q keeps the summary lines
            print(format_report(report, top=args.top))
        print(f"biggest: {summary_line(report)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from zerostart.image.inspect import format_report, inspect_image

    report = inspect_image(args.image)
    if args.json:
        print(json.dumps(report.to_dict(top=args.top), indent=2))
    else:
        print(format_report(report, top=args.top))
    return 0


def _start_snapshot(args: argparse.Namespace) -> Container:
    from zerostart.container.snapshot_run import run_with_snapshot

    run = run_with_snapshot(
        args.image,
        port=args.port,
        host=args.host,
        runtime=args.runtime,
        store=args.snapshot_store,
    )
    t = run.timings_s
    if run.mode == "restored":
        print(
            f"restored in {t['total'] * 1e3:.0f} ms from snapshot {run.name} "
            f"(runc restore to /health {t['restore_to_health'] * 1e3:.0f} ms)",
            file=sys.stderr,
        )
    else:
        print(f"not restored because: {run.reason}", file=sys.stderr)
        print(f"booted in {t['boot_to_health']:.2f}s", file=sys.stderr)
        if run.snapshot_error:
            print(f"snapshot not taken: {run.snapshot_error}", file=sys.stderr)
        elif "checkpoint" in t:
            print(
                f"snapshot {run.name} taken ({run.size_bytes / 1e6:.1f} MB, warm-up "
                f"{t['warmup']:.2f}s, checkpoint {t['checkpoint']:.2f}s); the next run restores it",
                file=sys.stderr,
            )
    return run.container


def _cmd_run(args: argparse.Namespace) -> int:
    from zerostart.container.runtime import Container

    if args.lazy:
        return _run_lazy(args)
    if args.snapshot:
        container = _start_snapshot(args)
        ready = "snapshot mode"
    else:
        container = Container(args.image, port=args.port, host=args.host, runtime=args.runtime)
        ready_s = container.start()
        ready = f"{ready_s:.2f}s from `{container.runtime_name} run` to /health"
    print(
        f"{args.image} answering on http://{args.host}:{args.port} ({ready}); Ctrl-C stops it",
        file=sys.stderr,
    )
    try:
        if args.check:
            failures = _check_warmup(args.image, args.port)
            for line in failures:
                print(f"check failed: {line}", file=sys.stderr)
            print(f"check: {'FAILED' if failures else 'all warm-up answers match the trace'}")
            return 1 if failures else 0
        return _wait_for_exit(container)
    finally:
        final = container.stop()
        print(f"stopped (exit status {final})", file=sys.stderr)


def _wait_for_exit(container: Container) -> int:
    """Wait for the container to exit on its own; SIGTERM and Ctrl-C end the wait (status 0).

    The caller's ``finally`` stops the container and cleans up in every case.
    """
    from zerostart.cli._signals import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            status = container.wait()
        print(f"container exited with status {status}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        return 0


def _run_lazy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zerostart.cli.imagefs import format_stats
    from zerostart.container.lazy import LazyContainer

    options: dict[str, Any] = {"prefetch": not args.no_prefetch, "insecure": args.insecure}
    if args.imagefs_cache:
        options["cache_dir"] = Path(args.imagefs_cache)
    if args.record_profile:  # the reads' own order: nothing prefetched while recording
        options |= {"record": Path(args.record_profile).resolve(), "prefetch": False}
    t0 = time.perf_counter()
    container = LazyContainer(
        args.image, port=args.port, host=args.host, runtime=args.runtime, mount_options=options
    )
    try:
        ready_s = container.start()
        info = container.mount_info
        print(
            f"{args.image} mounted lazily (index {info['index_ms']:.1f} ms, mounted "
            f"{info['mount_ms']:.1f} ms after the daemon's start); answering on "
            f"http://{args.host}:{args.port} {time.perf_counter() - t0:.2f}s after the command "
            f"({ready_s:.2f}s from `{container.runtime_name} run` to /health); Ctrl-C stops it",
            file=sys.stderr,
        )
        for layer in info.get("layers", []):
            print(f"  layer {layer['digest'][:19]}: {layer['note']}", file=sys.stderr)
        if args.check:
            print("check: --check replays a local build trace; not available with --lazy")
            return 2
        return _wait_for_exit(container)
    finally:
        stats = container.stats()
        final = container.stop()
        if stats:
            print(format_stats(stats), file=sys.stderr)
        print(f"stopped (exit status {final}); unmounted and cleaned up", file=sys.stderr)
        if args.record_profile:
            print(_profile_hint(args.image, Path(args.record_profile)), file=sys.stderr)


def _profile_hint(image: str, path: Path) -> str:
    """What to do with a recorded profile: a span profile goes beside the zTOCs, a chunk
    profile into the image (docs/imagefs.md, docs/lazy-images.md)."""
    from zerostart.ztoc import PROFILE_FORMAT

    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return f"no profile was written to {path} (see the imagefs log)"
    if PROFILE_FORMAT.encode() in head:
        return (
            f"span profile written to {path}: put it beside the image's zTOCs with "
            f"`zerostart index {image} --add-profile {path}`"
        )
    return (
        f"chunk profile written to {path}: add it to the image with "
        f"`zerostart imagefs add-profile LAYOUT {path}` and push again"
    )


def _check_warmup(image: str, port: int) -> list[str]:
    """Replay the build's successful warm-up requests; compare answers (floats to 1e-5)."""
    from zerostart.errors import ImageError
    from zerostart.warmup import TRACE_NAME, recorded_requests, replay

    recorded = recorded_requests(image)
    if recorded is None:
        raise ImageError(
            f"{image} has no {TRACE_NAME}: nothing recorded to check against",
            hint="--check needs an image built by `zerostart build`",
        )
    return replay(port, recorded)


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``build``, ``inspect`` and ``run`` on the main parser's sub-parsers."""
    b = sub.add_parser(
        "build",
        help="build a minimal OCI image of a bundle (no Docker daemon)",
        description=(
            "Start the worker on the bundle, send warm-up requests to every route, record every "
            "module, file and library it touched (audit hook + memory maps + ELF DT_NEEDED "
            "closure) and write exactly those into deterministic layers: runtime, application, "
            "model. The trace is saved next to the image for review."
        ),
    )
    b.add_argument("bundle", help="bundle folder made by `zerostart convert`")
    b.add_argument(
        "-o",
        "--output",
        required=True,
        help="OCI layout folder (or .tar with --format docker-archive)",
    )
    b.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="device the image serves on (default: the bundle's)",
    )
    b.add_argument(
        "--arch", help="GPU architecture the image targets, e.g. sm_86 (recorded as a label)"
    )
    b.add_argument(
        "--format",
        choices=["oci", "docker-archive"],
        default="oci",
        help="output format (default oci)",
    )
    b.add_argument(
        "--compression",
        choices=["estargz", "gzip", "zstd", "none"],
        default="estargz",
        help="layer format: estargz (default; gzip with a table of contents, lazily pullable), "
        "plain gzip, zstd (needs `zstandard`) or none",
    )
    b.add_argument(
        "--tag", default="latest", help="tag recorded in the layout's index (default latest)"
    )
    b.add_argument(
        "--include",
        action="append",
        metavar="PATH|MODULE",
        help="also ship this host file/folder/glob or Python module (what a warm-up cannot reach); repeatable",
    )
    b.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="never ship host paths matching this glob (e.g. '*/_ssl.*'); repeatable",
    )
    b.add_argument(
        "--no-strip", action="store_true", help="keep debug sections of native libraries"
    )
    b.add_argument(
        "--keep-sources",
        action="store_true",
        help="ship the interpreter's and libraries' .py files beside their .pyc (4.6 MB)",
    )
    b.add_argument(
        "--keep-openssl",
        action="store_true",
        help="ship _ssl/_hashlib and OpenSSL (5.4 MB) even though a loopback worker needs no TLS",
    )
    b.add_argument(
        "--blas",
        choices=["auto", "minimal", "openblas"],
        default="auto",
        help="numpy's BLAS in the image: auto (default) takes zerostart's minimal BLAS (60 KB) "
        "instead of numpy's OpenBLAS (28 MB) for GPU bundles and every CPU bundle with native "
        "kernels (they carry their own products; only --cpu-arch none keeps OpenBLAS); see docs/image.md",
    )
    b.add_argument("--python", help="interpreter of the build environment (default: this one)")
    b.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="largest files to list (default 15)"
    )
    b.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output and no size table (`zerostart inspect` prints it)",
    )
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser(
        "inspect", help="size table of an image: layers, largest files and what pulled them in"
    )
    i.add_argument("image", help="OCI layout folder")
    i.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="largest files to list (default 15)"
    )
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_cmd_inspect)

    r = sub.add_parser(
        "run",
        help="run an image with an OCI runtime (runc/crun) on this host's loopback",
        description=(
            "Unpack the image (cached), write an OCI runtime config (read-only root, non-root user, "
            "no capabilities, host network namespace bound to --host) and start it with runc or "
            "crun, whichever works here. Waits for /health; Ctrl-C or SIGTERM stops it cleanly."
        ),
    )
    r.add_argument("image", help="OCI layout folder, or with --lazy a registry reference")
    r.add_argument("--port", type=int, default=8080, help="port on --host (default 8080)")
    r.add_argument(
        "--lazy",
        action="store_true",
        help="IMAGE is a registry reference (host:port/name:tag): mount it with imagefs and "
        "start at once, fetching file chunks on first read (eStargz layers; others are "
        "fetched whole)",
    )
    r.add_argument(
        "--imagefs-cache",
        metavar="DIR",
        help="with --lazy: chunk cache folder (default $ZEROSTART_CACHE/imagefs)",
    )
    r.add_argument(
        "--no-prefetch",
        action="store_true",
        help="with --lazy: do not prefetch the files the build trace saw the worker read",
    )
    r.add_argument(
        "--record-profile",
        metavar="FILE",
        help="with --lazy: record which chunks the container reads, in order, into FILE when "
        "it stops (prefetch is off while recording; see docs/imagefs.md, chunk profiles)",
    )
    r.add_argument(
        "--insecure", action="store_true", help="with --lazy: plain HTTP to a non-loopback registry"
    )
    r.add_argument(
        "--host", default="127.0.0.1", help="address the worker binds (default 127.0.0.1)"
    )
    r.add_argument("--runtime", help="runc or crun (default: the first that works, probed once)")
    r.add_argument(
        "--check",
        action="store_true",
        help="replay the build's warm-up requests, compare the answers, stop, exit 1 on a mismatch",
    )
    r.add_argument(
        "--snapshot",
        action="store_true",
        help="restore the warmed-up container from its snapshot (runc + CRIU); without one, boot, "
        "warm up, snapshot it and keep serving",
    )
    r.add_argument(
        "--snapshot-store",
        metavar="DIR",
        help="where snapshots live (default $ZEROSTART_SNAPSHOTS, else "
        "/var/lib/zerostart/snapshots for root, else $XDG_STATE_HOME/zerostart/snapshots)",
    )
    r.set_defaults(func=_cmd_run)
