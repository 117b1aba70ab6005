"""The order a warmed-up worker read its image's files in: eStargz's prioritized files.

A lazily pulled layer is fast when the files a start needs lie together at
its front (one range request prefetches them) and in the order they are
needed (the first answer does not wait on the last byte of the prefetch).
The trace names host paths; this module turns them into image paths:

    1. the interpreter (the kernel execs it first)
    2. shared libraries the worker mapped that are not extension modules
       (ld.so maps these before or with the code that needs them), sorted
    3. the modules loaded during interpreter start-up, in their order
    4. every ``open``, ``import`` (an extension module, mapped at that moment)
       and ``dlopen`` of the warm-up, interleaved as they happened
    5. whatever else was mapped (an extension the events cannot place)

A Python source stands for the pyc the image ships for it (the worker reads
that one: the image's pycs are unchecked-hash, never compared to sources).
Host paths outside the image (``/proc``, scratch files) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from zerostart.image.closure import MODEL_DIR, RUNTIME, Closure
from zerostart.image.layers import pyc_path
from zerostart.image.trace import Trace


def _is_extension(path: str) -> bool:
    base = os.path.basename(path)
    return "/lib-dynload/" in path or ".cpython-" in base or base.endswith(".abi3.so")


def read_order(
    trace: Trace, closure: Closure, *, bundle: str | os.PathLike[str], keep_sources: bool = False
) -> list[str]:
    """Image paths of regular files in the order the traced worker read them (no duplicates)."""
    dests: dict[str, str] = {}  # host realpath -> image path the worker reads
    for f in closure.files.values():
        if f.source is None:
            continue
        dest = f.dest
        if f.compile_pyc:
            sourceless = f.layer == RUNTIME and not keep_sources
            dest = pyc_path(dest, closure.cache_tag, sourceless=sourceless)
        dests.setdefault(os.path.realpath(f.source), dest)
    bundle_root = os.path.realpath(bundle)

    def image_path(host: str) -> str | None:
        real = os.path.realpath(host)
        if real.endswith(".pyc") and "__pycache__" in real:
            head, name = os.path.split(real)
            real = os.path.join(os.path.dirname(head), name.split(".", 1)[0] + ".py")
        if real in dests:
            return dests[real]
        if real.startswith(bundle_root + os.sep) and "__pycache__" not in real:
            return MODEL_DIR + "/" + os.path.relpath(real, bundle_root).replace(os.sep, "/")
        return None

    extensions = [p for p in trace.mapped if _is_extension(p)]
    by_stem: dict[str, list[str]] = {}
    for p in extensions:
        by_stem.setdefault(os.path.basename(p).split(".", 1)[0], []).append(p)

    def extension_for(module: str) -> str | None:
        *package, stem = module.split(".")
        for p in by_stem.get(stem, ()):
            head = os.path.dirname(p)
            if (package and head.endswith("/" + "/".join(package))) or (
                not package and head.endswith("/lib-dynload")
            ):
                return p
        return None

    def dlopened(name: str) -> str | None:
        if "/" in name:
            return name
        return next((p for p in trace.mapped if os.path.basename(p) == name), None)

    hosts: list[str] = [trace.python["executable"]]
    hosts += sorted(p for p in trace.mapped if not _is_extension(p))
    hosts += [file for _, file in trace.startup_modules if file]
    for kind, value in trace.events:
        found = {"open": lambda v: v, "import": extension_for, "dlopen": dlopened}[kind](value)
        if found is not None:
            hosts.append(found)
    hosts += extensions
    return _unique(p for p in map(image_path, hosts) if p is not None)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
