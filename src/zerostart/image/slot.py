"""The slot image: what a container slot of the warm pool runs (``zerostart.platform``).

An ordinary image of the canary bundle (``zerostart.engine.canary``) with the
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

SLOT_IMAGE_MODULES = ("zerostart.serve.slot", "zerostart.engine.canary")


def slot_image_dir(cache: Path) -> Path:
    """Where this zerostart version's slot image lives under ``cache``."""
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return cache / f"slot-image-{zerostart.__version__}-{py}"


def build_slot_image(cache: Path) -> Path:
    """The slot image's OCI layout folder, built into ``cache`` unless already there."""
    out = slot_image_dir(cache)
    if (out / "index.json").is_file():
        return out
    from zerostart.engine.canary import write_canary

    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".canary-{os.getpid()}"
    tmp = cache / f".{out.name}.{os.getpid()}"
    try:
        canary = write_canary(work)
        build_image(canary, tmp, BuildOptions(include=SLOT_IMAGE_MODULES))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
