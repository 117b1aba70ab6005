"""Writing the slot health check's canary bundle (``zerostart.engine.canary``): build time.

The canary is a tiny BERT classifier whose weights are a closed formula, with
native CPU kernels like any converted bundle (the build of the default targets
that this CPU runs best, compiled once and cached by
``zerostart.kernels.cpu_build``), so the slot that checks it runs
``NativeCpuEngine`` and never imports numpy. Where no C compiler is at hand,
:func:`write_canary` falls back to a canary without kernels (the numpy
reference engine, a slot with numpy) and says so in the log.

Build-time module: numpy, and the C compiler through ``zerostart.kernels``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zerostart.bundle.manifest import (
    MANIFEST_NAME,
    TOKENIZER_TABLES_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    CpuKernelBuild,
    FileEntry,
    Manifest,
)
from zerostart.engine.canary import CANARY_VOCAB, canary_manifest
from zerostart.errors import ZerostartError
from zerostart.tokenize import write_wordpiece_tables

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("zerostart.model.canary")


def canary_tensors(manifest: Manifest | None = None) -> dict[str, np.ndarray]:
    """Every tensor of the canary in the engine layout, from a closed formula.

    Element ``i`` of tensor number ``k`` (in layout order) is ``u - 0.5`` with ``u`` the
    fraction ``((i + 7919 k) * 2654435761 mod 2**32) / 2**32`` (Knuth's multiplicative
    hash, TAOCP vol. 3, 6.4): integer arithmetic, so every numpy gives the same bits,
    and full-rank matrices (a smooth formula such as a sine of ``i`` gives rank-2
    matrices, and a model whose answer barely depends on its input). Matrices get
    scale 1, biases 0.2, layer-norm weights ``1 + 0.2 (u - 0.5)``.
    """
    import numpy as np

    from zerostart.bundle.layout import tensor_shapes

    m = manifest or canary_manifest()
    out: dict[str, np.ndarray] = {}
    for k, (name, shape) in enumerate(tensor_shapes(m).items()):
        i = np.arange(math.prod(shape), dtype=np.int64) + 7919 * k
        u = ((i * 2654435761) % (1 << 32)).astype(np.float64) / (1 << 32) - 0.5
        if name.endswith("norm.weight"):
            values = 1.0 + 0.2 * u
        elif len(shape) == 1:  # biases
            values = 0.2 * u
        else:
            values = u
        out[name] = values.astype(np.float32).reshape(shape)
    return out


def write_canary(folder: str | os.PathLike[str], cpu_archs: Sequence[str] | None = None) -> Path:
    """Write the canary bundle into ``folder`` (created; overwritten if there). Returns it.

    ``cpu_archs``: the native kernel builds to include (``zerostart convert --cpu-arch``
    names); None takes the default target this CPU runs best (one compile, cached), and
    falls back to no kernels, with a warning, when that compile cannot run (no gcc);
    ``()``: no kernels, the numpy reference engine runs the canary. Raises ConvertError
    when a named arch cannot be built.
    """

    from zerostart.bundle.layout import LAYOUT_VERSION
    from zerostart.bundle.weights import write_weights

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    manifest = canary_manifest()
    write_weights(
        root / WEIGHTS_NAME,
        canary_tensors(manifest),
        {"format": "np", "zerostart.layout": LAYOUT_VERSION},
    )
    (root / VOCAB_NAME).write_text("".join(t + "\n" for t in CANARY_VOCAB), encoding="utf-8")
    # the mapped vocabulary too, as convert writes it: the slot checks the loader bundles use
    write_wordpiece_tables(root / TOKENIZER_TABLES_NAME, CANARY_VOCAB)
    names = [WEIGHTS_NAME, VOCAB_NAME, TOKENIZER_TABLES_NAME]
    builds = _build_kernels(root, cpu_archs)
    if builds:
        from zerostart.engine.cpu_tuning import BUNDLE_TABLE

        # no build time in the manifest: the same canary bytes every time (a slot image's digest)
        builds = {arch: b._replace(build_s=0.0) for arch, b in builds.items()}
        manifest = manifest._replace(cpu_kernels=builds)
        names += [b.file for b in builds.values()] + [BUNDLE_TABLE]
    files = {name: _file_entry(root / name) for name in names}
    (root / MANIFEST_NAME).write_text(manifest.with_files(files).to_json(), encoding="utf-8")
    return root


def host_arch() -> str:
    """The default kernel target (``cpu_build.DEFAULT_ARCHS``) this CPU runs with the most
    features; EngineError when it runs none (not an x86-64 CPU). Runs the compiler."""
    from zerostart.engine.native import choose_build, cpu_flags
    from zerostart.kernels.cpu_build import DEFAULT_ARCHS, arch_features

    builds = {a: CpuKernelBuild(file="", features=arch_features(a)) for a in DEFAULT_ARCHS}
    return choose_build(builds, cpu_flags())


def _build_kernels(root: Path, cpu_archs: Sequence[str] | None) -> dict[str, CpuKernelBuild]:
    from zerostart.kernels.cpu_build import build_for_bundle

    def quiet(_what: str, _fraction: float) -> None:
        return None

    if cpu_archs is not None:
        return dict(build_for_bundle(root, list(cpu_archs), "float32", quiet)) if cpu_archs else {}
    try:
        return dict(build_for_bundle(root, [host_arch()], "float32", quiet))
    except ZerostartError as exc:  # no compiler, or a CPU none of the builds runs on
        log.warning(
            "canary without native kernels (%s): slots will run the numpy engine and import "
            "numpy; install gcc to give them the native one",
            exc,
        )
        return {}


def _file_entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    header = ""
    if path.name == WEIGHTS_NAME:
        n = int.from_bytes(data[:8], "little")
        header = hashlib.sha256(data[: 8 + n]).hexdigest()
    return FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), header_sha256=header)
