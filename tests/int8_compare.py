"""int8 bundles against the same model's float32 bundle, on the serving engines.

Shared by the family tests (DeBERTa, ModernBERT): both engines answer the same
right-padded batch through ``run`` (``NativeCpuEngine.run``'s contract); the
int8 answer must stay within a stated fraction of the largest logit (with the
same argmax), or, for embeddings, above a cosine similarity on every real token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Bounds; the values measured on the tiny random models are in each test's comment.
INT8_RELATIVE_ERROR = 0.02
INT8_MIN_COSINE = 0.999


def assert_int8_tracks_float32(
    f32_engine: Any, q8_engine: Any, task: str, ids: np.ndarray, mask: np.ndarray
) -> float:
    """Run both engines on ``ids`` [B, T] (``mask`` marks the real tokens); assert the
    bounds; return the measured figure (relative logit error, or the worst cosine)."""
    b, t = ids.shape
    lengths = [int(n) for n in mask.sum(axis=1)]
    flat = ids.reshape(-1).tolist()
    ref = np.frombuffer(f32_engine.run(flat, None, lengths, t), np.float32)
    got = np.frombuffer(q8_engine.run(flat, None, lengths, t), np.float32)
    width = ref.size // (b if task == "sequence-classification" else b * t)
    ref, got = ref.reshape(-1, width), got.reshape(-1, width)
    if task != "sequence-classification":  # padding rows are not answers
        keep = mask.reshape(-1).astype(bool)
        ref, got = ref[keep], got[keep]
    if task == "embeddings":
        r, g = ref.astype(np.float64), got.astype(np.float64)
        cos = (r * g).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(g, axis=1)
        worst = float(cos.min())
        assert worst >= INT8_MIN_COSINE, worst
        return worst
    relative = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
    assert relative <= INT8_RELATIVE_ERROR, relative
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
    return relative
