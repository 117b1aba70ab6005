"""The mount daemon: ``python -m zerostart.imagefs REF MOUNTPOINT ...`` (started by :class:`LazyMount`).

Life of a mount::

    manifest + config (2 requests) -> every layer's footer + TOC (1 range request each,
    concurrently) -> merged index -> fuse init (mounted) -> one JSON line on stdout
    ("ready", timings, the image config) -> prefetch thread starts -> serve
    ... SIGTERM/SIGINT, or the parent gone -> unmount -> state file removed -> exit 0

A failure before the mount prints ``{"ready": false, "error": ...}`` and exits
1, so the parent shows the real reason. The daemon runs in its own session so
a Ctrl-C in the terminal reaches the container first; the parent then stops
the daemon. If the parent dies without doing so, the daemon notices (its
parent pid changes) and unmounts itself, so no orphaned mount is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError

log = logging.getLogger("zerostart.imagefs")

STATS_INTERVAL_S = 0.5
FUSE_MAX_TASKS = 32  # concurrent FUSE requests (each read may wait on the network)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zerostart.imagefs")
    p.add_argument("reference")
    p.add_argument("mountpoint")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--state", required=True, help="stats JSON file, rewritten twice a second")
    p.add_argument("--memory-bytes", type=int, required=True)
    p.add_argument("--disk-bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True, help="seconds per network request")
    p.add_argument("--attempts", type=int, required=True)
    p.add_argument("--backoff", type=float, required=True)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--no-prefetch", action="store_true")
    p.add_argument("--prefetch-streams", type=int, default=4, help="for a chunk profile")
    p.add_argument(
        "--record", help="write a chunk profile of the reads to this file at unmount (JSON)"
    )
    return p


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s imagefs %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    t0 = time.perf_counter()
    started = time.time()
    parent = os.getppid()
    try:
        import pyfuse3
        import trio

        from zerostart.imagefs._cache import ChunkCache
        from zerostart.imagefs._fetch import ChunkReader, RetryPolicy
        from zerostart.imagefs._fuse import ImageOperations
        from zerostart.imagefs._indexcache import index_image
        from zerostart.imagefs._profile import Recorder
        from zerostart.registry.ranges import BlobReader, RemoteImage

        t_import = time.perf_counter()
        cache_dir = Path(opts.cache_dir)
        reader = BlobReader(
            opts.reference, insecure=True if opts.insecure else None, timeout_s=opts.timeout
        )
        manifest_digest, manifest = reader.manifest()
        t_manifest = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:  # the config arrives while the TOCs do
            config = pool.submit(reader.config, manifest)
            layers, tree, cached = index_image(reader, manifest_digest, manifest, cache_dir)
            image = RemoteImage(opts.reference, manifest_digest, manifest, config.result())
        t_index = time.perf_counter()
        cache = ChunkCache(
            memory_bytes=opts.memory_bytes,
            disk_dir=cache_dir / "chunks",
            disk_bytes=opts.disk_bytes,
        )
        chunks = ChunkReader(reader, layers, cache, RetryPolicy(opts.attempts, opts.backoff))
        fuse_options = set(pyfuse3.default_options) | {
            "fsname=zerostart-imagefs",
            "subtype=zerostart",
            "ro",
            "allow_other",
        }
        recorder = Recorder(layers) if opts.record else None
        pyfuse3.init(ImageOperations(tree, chunks, recorder), opts.mountpoint, fuse_options)
    except (ZerostartError, OSError, RuntimeError) as exc:
        print(
            json.dumps({"ready": False, "error": str(exc), "type": type(exc).__name__}), flush=True
        )
        return 1
    t_mount = time.perf_counter()
    timings = {
        "import_ms": (t_import - t0) * 1e3,
        "manifest_ms": (t_manifest - t_import) * 1e3,  # the manifest alone
        "index_ms": (t_index - t_import) * 1e3,  # manifest + config + every TOC + merge
        "mount_ms": (t_mount - t_import) * 1e3,  # index + fuse init: the mount is usable
    }
    bytes_at_mount = reader.bytes_fetched
    state_path = Path(opts.state)
    layer_notes = [{"digest": la.digest, "size": la.size, "note": la.note} for la in layers]

    def stats() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "reference": opts.reference,
            "mountpoint": opts.mountpoint,
            "manifest_digest": image.manifest_digest,
            "started_at": started,
            "timings": timings,
            "records": tree.entries,  # every layer's files, folders and whiteouts
            "inodes": len(tree.nodes),  # made so far: only what was looked up
            "index": "cached" if cached else "built",
            "layers": layer_notes,
            "bytes_fetched": reader.bytes_fetched,
            "bytes_fetched_at_mount": bytes_at_mount,
            "requests": reader.requests,
            "cache": cache.stats(),
            "reads": chunks.stats(),
        }

    _write_json(state_path, stats())
    ready = {"ready": True, **timings, "manifest_digest": image.manifest_digest}
    ready["index"] = "cached" if cached else "built"
    ready |= {"config": image.config, "layers": layer_notes}
    print(json.dumps(ready), flush=True)
    log.info(
        "mounted %s at %s: index %.1f ms, mount %.1f ms, %d records; %s",
        opts.reference,
        opts.mountpoint,
        timings["index_ms"],
        timings["mount_ms"],
        tree.entries,
        "; ".join(la.note for la in layers),
    )
    if not opts.no_prefetch:
        threading.Thread(
            target=_prefetch,
            args=(tree, chunks, layers, opts.prefetch_streams, reader, manifest_digest),
            daemon=True,
        ).start()

    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        pyfuse3.terminate()
                        return

                async def write_stats() -> None:
                    while True:
                        await trio.to_thread.run_sync(_write_json, state_path, stats())
                        if os.getppid() != parent:
                            log.warning("the parent process is gone: unmounting")
                            pyfuse3.terminate()
                            return
                        await trio.sleep(STATS_INTERVAL_S)

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(write_stats)
                await pyfuse3.main(min_tasks=1, max_tasks=FUSE_MAX_TASKS)
                nursery.cancel_scope.cancel()

    status = 0
    try:
        trio.run(watch)
    except BaseException as exc:
        log.error("imagefs daemon failed: %r", exc)
        status = 1
    finally:
        chunks.stop()
        if recorder is not None:
            _write_profile(recorder, tree, Path(opts.record))
        pyfuse3.close(unmount=True)
        reader.close()
        state_path.unlink(missing_ok=True)
    return status


def _prefetch(
    tree: Any, chunks: Any, layers: list[Any], streams: int, reader: Any, manifest_digest: str
) -> None:
    """The image's chunk profile in its order when it carries one, else each layer's landmark region.

    Runs in its own thread after the mount is ready; a profile that is
    refused (zerostart/chunkprofile.py) or cannot be fetched is logged and the
    landmark region prefetched as for an image without one. An image with
    zTOC layers gets the span profile its index artifact carries
    (:func:`_prefetch_spans`) first.
    """
    from zerostart.imagefs._fetch import ChunkReadError
    from zerostart.imagefs._profile import load, plan

    if any(la.spans is not None for la in layers):
        _prefetch_spans(chunks, layers, streams, reader, manifest_digest)
        if not any(la.prefetch_end > 0 for la in layers):
            if chunks.prefetch_state["state"] == "none":  # no profile: reads come on demand
                chunks.prefetch_state.update(state="done", source="on demand")
            return

    try:
        profile = load(tree, lambda node: chunks.read(node, 0, node.size))
    except ChunkReadError as exc:
        log.warning("chunk profile could not be fetched (%s): prefetching by landmark", exc)
        profile = None
    if profile is not None:
        local = frozenset(la.index for la in layers if la.local_path is not None)
        todo = plan(tree, profile, local_layers=local)
        summary = todo.summary()
        chunks.prefetch_state["profile"] = summary
        log.info("chunk profile: %s", summary)
        if todo.extents:
            chunks.prefetch_chunks(todo.extents, streams)
            return
        log.warning("chunk profile names no chunk of this image: prefetching by landmark")
    extents = [
        x
        for la in layers
        if la.prefetch_end > 0
        for x in tree.extents_before(la.index, la.prefetch_end)
    ]
    chunks.prefetch(extents)


def _prefetch_spans(
    chunks: Any, layers: list[Any], streams: int, reader: Any, manifest_digest: str
) -> None:
    """The zTOC layers' spans the index artifact's span profile names, in its order.

    The profile is fetched here, after the mount is ready (three small
    requests: referrers, artifact manifest, profile), checked
    (:func:`zerostart.ztoc._profile.bind`: layer digests, span lists, span
    indexes) and its spans streamed by the chunk reader's profile prefetch,
    on-demand reads first. A profile that is refused, or cannot be fetched,
    is logged and kept in the stats (``profile_refused``); spans are then
    read on demand only.
    """
    from zerostart.imagefs._index import ImageIndexError
    from zerostart.imagefs._zran import find_profile, plan_spans
    from zerostart.registry.errors import RegistryError
    from zerostart.ztoc import SpanProfileError

    try:
        profile = find_profile(reader, manifest_digest)
        if profile is None:
            log.info("no span profile beside the zTOCs: spans are read on demand")
            return
        extents = plan_spans(profile, layers)
    except (SpanProfileError, ImageIndexError, RegistryError) as exc:
        log.warning("span profile refused, reading spans on demand: %s", exc)
        chunks.prefetch_state["profile_refused"] = str(exc)
        return
    summary = {
        "entries": len(profile.reads),
        "spans": len(extents),
        "bytes": sum(x.end - x.start for x in extents),
    }
    chunks.prefetch_state["profile"] = summary
    log.info("span profile: %s", summary)
    chunks.prefetch_chunks(extents, streams)


def _write_profile(recorder: Any, tree: Any, path: Path) -> None:
    try:
        n = recorder.write(tree, path)
        log.info("chunk profile: %d chunks recorded in %s", n, path)
    except OSError as exc:
        log.error("chunk profile: cannot write %s: %s", path, exc)
