"""The slot image: what a container slot of the warm pool runs (``zerostart.platform``).

An ordinary image of the canary bundle (``zerostart.model.canary``) with the
slot and canary modules included, so ``python -m zerostart.serve --slot`` runs
in it and its own ``/model`` is the canary its health check loads. Built once
per zerostart version and Python into a cache folder (a few seconds: the trace
of a tiny model). Build-time module.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import zerostart
from zerostart.image.build import BuildOptions, build_image

# The slot and canary modules, and what the engine loads on a real model but not on
# the tiny canary the trace runs: the thread pool of the native CPU kernels'
# multi-threaded products (a model served in a container slot would otherwise fail
# its first large batch with ModuleNotFoundError).
SLOT_IMAGE_MODULES = (
    "zerostart.serve.slot",
    "zerostart.engine.canary",
    "concurrent.futures.thread",
    "concurrent.futures._base",
    "concurrent.futures",
    "concurrent",
    "queue",
    "_queue",
    "heapq",
    "_heapq",
)


# Prints every zerostart module a slot's _preload imports (the standard library modules they
# need are the worker's, which the trace sees, plus SLOT_IMAGE_MODULES).
PRELOAD_PROBE = r"""
import json, sys
sys.modules["ssl"] = None  # as the worker's entry point does
from zerostart.serve.slot import _preload
_preload("cpu")
print(json.dumps(sorted(name for name in list(sys.modules) if name.startswith("zerostart."))))
"""
PROBE_TIMEOUT_S = 120.0


def preload_modules() -> tuple[str, ...]:
    """The zerostart modules ``zerostart.serve.slot._preload`` imports, by name.

    The image's trace runs the canary as a plain worker, which imports only what
    a WordPiece model needs; a slot imports every tokenizer kind up front (an
    assigned model may bring any), so those modules must be in the image even
    though the trace never loaded them. Asked of a fresh interpreter, so the
    list follows the code.
    """
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        from zerostart.errors import ImageError

        raise ImageError(f"listing the slot's preloaded modules failed: {done.stderr[-2000:]}")
    return tuple(json.loads(done.stdout.splitlines()[-1]))


def slot_image_dir(cache: Path) -> Path:
    """Where the slot image of this zerostart source and Python lives under ``cache``.

    Keyed by a digest of zerostart's own modules and the include list, not by the
    version alone: an editable install changes code without changing the version,
    and a stale slot image would serve the old code.
    """
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return cache / f"slot-image-{zerostart.__version__}-{py}-{_source_digest()}"


def _source_digest() -> str:
    import hashlib

    root = Path(zerostart.__file__).parent
    h = hashlib.sha256(repr(SLOT_IMAGE_MODULES).encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def build_slot_image(cache: Path) -> Path:
    """The slot image's OCI layout folder, built into ``cache`` unless already there."""
    out = slot_image_dir(cache)
    if (out / "index.json").is_file():
        return out
    from zerostart.model.canary import write_canary

    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".canary-{os.getpid()}"
    tmp = cache / f".{out.name}.{os.getpid()}"
    try:
        canary = write_canary(work)
        include = tuple(dict.fromkeys((*SLOT_IMAGE_MODULES, *preload_modules())))
        build_image(canary, tmp, BuildOptions(include=include))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
