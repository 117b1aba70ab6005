"""The canary: a tiny BERT classifier with a known answer, for a slot's CPU health check.

A warm slot must prove, before it takes work, that this process computes what
the engine is supposed to compute: the bundle is read and mapped, the
tokenizer encodes, numpy's BLAS multiplies, and the forward pass, pooler and
classifier give the right numbers. The check (``zerostart.serve.slot``) loads
the canary bundle written by ``zerostart.model.canary.write_canary`` through the same code path
as a real model (``Pipeline.load`` then ``Pipeline.execute``) and compares the
logits of :data:`CANARY_INPUTS` with :data:`KNOWN_LOGITS`. Running it also
pays the first-call costs of that code path, so a slot's first real request
does not.

The canary carries native CPU kernels like a converted bundle (the build of
the default targets that this CPU runs best, compiled once and cached by
``zerostart.kernels.cpu_build``), so the slot runs ``NativeCpuEngine`` and
never imports numpy: the process a model is later assigned to is the lean
worker. Where no C compiler is at hand, ``write_canary`` falls back to a
canary without kernels (the numpy reference engine, a slot with numpy) and
says so in the log.

The weights are a closed formula (``zerostart.model.canary.canary_tensors``, no random number
generator whose stream could change between numpy versions), written in the
engine layout. :data:`KNOWN_LOGITS` is a checked constant: our CPU engine
computed it, and ``tests/unit/test_canary.py`` checks it against Hugging Face
transformers' ``BertForSequenceClassification`` (eager attention, float32)
loaded with the same weights, un-fused back into its own layout.

What it catches: a corrupted or truncated file on the node's disk or page
cache (the weights are read through mmap like a real model's), a broken
kernel build, wrong arithmetic. What it cannot catch: a fault that only shows
up on a bigger model or after minutes of load.

Runtime module: standard library only (the slot imports it). Writing the
canary is build-time work, beside ``convert``: ``zerostart.model.canary``
(numpy and the C compiler).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from zerostart.bundle.manifest import Manifest, ModelConfig, TokenizerSettings
from zerostart.errors import EngineError

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
