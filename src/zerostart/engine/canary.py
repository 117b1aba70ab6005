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

The weights are a closed formula (:func:`canary_tensors`, no random number
generator whose stream could change between numpy versions), written in the
engine layout. :data:`KNOWN_LOGITS` is a checked constant: our CPU engine
computed it, and ``tests/unit/test_canary.py`` checks it against Hugging Face
transformers' ``BertForSequenceClassification`` (eager attention, float32)
loaded with the same weights, un-fused back into its own layout.

What it catches: a corrupted or truncated file on the node's disk or page
cache (the weights are read through mmap like a real model's), a broken numpy
or BLAS install, wrong arithmetic. What it cannot catch: a fault that only
shows up on a bigger model or after minutes of load.

Runtime module: standard library and numpy.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from zerostart.engine.layout import LAYOUT_VERSION, tensor_shapes
from zerostart.errors import EngineError
from zerostart.model.manifest import (
    MANIFEST_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    FileEntry,
    Manifest,
    ModelConfig,
    TokenizerSettings,
)
from zerostart.model.weights import write_weights

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


def write_canary(folder: str | os.PathLike[str]) -> Path:
    """Write the canary bundle into ``folder`` (created; overwritten if there). Returns it."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    manifest = canary_manifest()
    write_weights(
        root / WEIGHTS_NAME,
        canary_tensors(manifest),
        {"format": "np", "zerostart.layout": LAYOUT_VERSION},
    )
    (root / VOCAB_NAME).write_text("".join(t + "\n" for t in CANARY_VOCAB), encoding="utf-8")
    files = {name: _file_entry(root / name) for name in (WEIGHTS_NAME, VOCAB_NAME)}
    (root / MANIFEST_NAME).write_text(manifest.with_files(files).to_json(), encoding="utf-8")
    return root


def check_logits(logits: np.ndarray | list[np.ndarray]) -> None:
    """Raise EngineError unless ``logits`` ([2, 3]) match KNOWN_LOGITS within the tolerance."""
    got = np.asarray(logits, dtype=np.float64)
    want = np.asarray(KNOWN_LOGITS, dtype=np.float64)
    if got.shape != want.shape:
        raise EngineError(f"canary gave logits of shape {got.shape}, expected {want.shape}")
    err = np.abs(got - want)
    if not np.all(err <= KNOWN_ANSWER_ATOL):  # NaN compares False: caught here too
        worst = float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")
        raise EngineError(
            f"canary forward pass gave a wrong answer: max abs error {worst:.3g} "
            f"(allowed {KNOWN_ANSWER_ATOL}), got {np.round(got, 6).tolist()}",
            hint="this node's CPU, memory or zerostart install is faulty; do not serve from it",
        )


def _file_entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    header = ""
    if path.name == WEIGHTS_NAME:
        n = int.from_bytes(data[:8], "little")
        header = hashlib.sha256(data[: 8 + n]).hexdigest()
    return FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), header_sha256=header)
