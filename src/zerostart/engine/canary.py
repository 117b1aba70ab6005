"""The canary: a tiny BERT classifier with a known answer, for a slot's CPU health check.

A warm slot must prove, before it takes work, that this process computes what
the engine is supposed to compute: the bundle is read and mapped, the
tokenizer encodes, numpy's BLAS multiplies, and the forward pass, pooler and
classifier give the right numbers. The check (``zerostart.serve.slot``) loads
the canary bundle written by :func:`write_canary` through the same code path
as a real model (``Pipeline.load`` then ``Pipeline.execute``) and compares the
logits of :data:`CANARY_INPUTS` with :data:`KNOWN_LOGITS`. Running it also
pays the first-call costs of that code path, so a slot's first real request
does not.

The canary carries native CPU kernels like a converted bundle (the build of
the default targets that this CPU runs best, compiled once and cached by
``zerostart.kernels.cpu_build``), so the slot runs ``NativeCpuEngine`` and
never imports numpy: the process a model is later assigned to is the lean
worker. Where no C compiler is at hand, :func:`write_canary` falls back to a
canary without kernels (the numpy reference engine, a slot with numpy) and
says so in the log.

The weights are a closed formula (:func:`canary_tensors`, no random number
generator whose stream could change between numpy versions), written in the
engine layout. :data:`KNOWN_LOGITS` is a checked constant: our CPU engine
computed it, and ``tests/unit/test_canary.py`` checks it against Hugging Face
transformers' ``BertForSequenceClassification`` (eager attention, float32)
loaded with the same weights, un-fused back into its own layout.

What it catches: a corrupted or truncated file on the node's disk or page
cache (the weights are read through mmap like a real model's), a broken
kernel build, wrong arithmetic. What it cannot catch: a fault that only shows
up on a bigger model or after minutes of load.

Runtime module (the slot's side: the constants and :func:`check_logits`):
standard library only. Writing the canary (:func:`canary_tensors`,
:func:`write_canary`) is build-time work and imports numpy and the compiler
driver when called.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zerostart.errors import EngineError, ZerostartError
from zerostart.model.manifest import (
    MANIFEST_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    CpuKernelBuild,
    FileEntry,
    Manifest,
    ModelConfig,
    TokenizerSettings,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("zerostart.engine.canary")

CANARY_VOCAB = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "##s",
    "a",
    "cat",
    "sat",
    "on",
    "mat",
    ".",
)
CANARY_LABELS = ("no", "yes", "maybe")
# Two inputs of different lengths: a pair (token types 0 and 1) and a short single text,
# so padding, the attention mask and the token-type embeddings all take part.
CANARY_INPUTS: tuple[str | tuple[str, str], ...] = (
    ("the quick brown fox", "jumps over the lazy dogs."),
    "a cat sat",
)
# Logits [2 inputs, 3 labels] of the canary on CANARY_INPUTS. Source: zerostart's CPU
# engine (float32); checked against transformers' BertForSequenceClassification on the
# same weights by tests/unit/test_canary.py (max abs difference there ~1e-6).
KNOWN_LOGITS = (
    (1.662794, -1.770023, 0.775432),
    (1.815380, -1.869604, 0.763474),
)
# float32 forward passes differ by ~1e-6 between BLAS builds and thread counts; a corrupted
# weight or a wrong kernel moves the logits by far more (tests/unit/test_canary.py).
KNOWN_ANSWER_ATOL = 1e-4


def canary_manifest() -> Manifest:
    """The canary's manifest (without file digests): BERT, 2 layers, hidden 32, 4 heads."""
    return Manifest(
        architecture="bert",
        task="sequence-classification",
        config=ModelConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            vocab_size=len(CANARY_VOCAB),
            max_position_embeddings=512,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            hidden_act="gelu",
        ),
        tokenizer=TokenizerSettings(),
        max_length=512,  # long enough for an image build's warm-up texts (a slot image)
        labels=CANARY_LABELS,
        source={"name": "zerostart-canary"},
    )


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

    from zerostart.engine.layout import tensor_shapes

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
    from dataclasses import replace

    from zerostart.engine.layout import LAYOUT_VERSION
    from zerostart.model.weights import write_weights

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    manifest = canary_manifest()
    write_weights(
        root / WEIGHTS_NAME,
        canary_tensors(manifest),
        {"format": "np", "zerostart.layout": LAYOUT_VERSION},
    )
    (root / VOCAB_NAME).write_text("".join(t + "\n" for t in CANARY_VOCAB), encoding="utf-8")
    names = [WEIGHTS_NAME, VOCAB_NAME]
    builds = _build_kernels(root, cpu_archs)
    if builds:
        from zerostart.engine.cpu_tuning import BUNDLE_TABLE

        # no build time in the manifest: the same canary bytes every time (a slot image's digest)
        builds = {arch: replace(b, build_s=0.0) for arch, b in builds.items()}
        manifest = replace(manifest, cpu_kernels=builds)
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


def check_logits(logits: Sequence[Sequence[float]]) -> None:
    """Raise EngineError unless ``logits`` ([2, 3]: rows of floats, e.g. the pipeline's
    float32 memoryviews) match KNOWN_LOGITS within KNOWN_ANSWER_ATOL. Plain Python: the
    slot that calls it imports no numpy."""
    rows = [[float(x) for x in row] for row in logits]
    shape = (len(rows), *sorted({len(r) for r in rows}))
    want_shape = (len(KNOWN_LOGITS), len(KNOWN_LOGITS[0]))
    if shape != want_shape:
        raise EngineError(f"canary gave logits of shape {shape}, expected {want_shape}")
    errors = [
        abs(g - w)
        for got, want in zip(rows, KNOWN_LOGITS, strict=True)
        for g, w in zip(got, want, strict=True)
    ]
    if not all(e <= KNOWN_ANSWER_ATOL for e in errors):  # NaN compares False: caught here too
        finite = [e for e in errors if math.isfinite(e)]
        worst = max(finite) if finite else math.nan
        shown = [[round(g, 6) for g in row] for row in rows]
        raise EngineError(
            f"canary forward pass gave a wrong answer: max abs error {worst:.3g} "
            f"(allowed {KNOWN_ANSWER_ATOL}), got {shown}",
            hint="this node's CPU, memory or zerostart install is faulty; do not serve from it",
        )


def _file_entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    header = ""
    if path.name == WEIGHTS_NAME:
        n = int.from_bytes(data[:8], "little")
        header = hashlib.sha256(data[: 8 + n]).hexdigest()
    return FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), header_sha256=header)
