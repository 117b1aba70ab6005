"""The serving path's heads on float32 buffers: sentence vectors and token scores.

The engine's outputs reach the routes as float32 ``memoryview``s (see
``zerostart.pipeline``). ``Heads`` turns them into answers without numpy: on
the bundle's native kernels (``zs_pool_vector``, ``zs_softmax_rows`` in
kernels/cpu/zs_cpu.c) when the worker has them, in plain Python otherwise (a
GPU worker: its outputs are a few vectors). The formulas are
sentence-transformers' (CLS token or mean of the tokens, then
``torch.nn.functional.normalize``: x / max(||x||, 1e-12)) and transformers'
token-classification softmax; ``zerostart.tasks.pool``/``normalize`` are the
numpy reference the tests hold them to.

Matryoshka: ``dims`` keeps the first ``dims`` values of the pooled vector and
normalises those, as sentence-transformers' ``truncate_dim`` does.

Runtime module: standard library only.
"""

from __future__ import annotations

import ctypes
import math
from array import array
from typing import TYPE_CHECKING

from zerostart.errors import EngineError, InputError

if TYPE_CHECKING:
    from zerostart.engine.native import NativeKernels

POOLING_MODES = ("cls", "mean")
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default
_POOL_CODES = {"cls": 0, "mean": 1}  # zs_pool_vector's modes


def address(view: memoryview) -> int:
    """The address of a writable, C-contiguous buffer's first byte (kept alive by the caller)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def all_finite(view: memoryview) -> bool:
    """No NaN or infinity among float32 values (any shape).

    One pass in C: the sum of finite float32 values cannot overflow a double, and
    NaN or infinity makes it non-finite.
    """
    return math.isfinite(sum(view.cast("B").cast("f")))


def non_finite(what: str, index: int) -> EngineError:
    """The error for a NaN or infinity in an answer (HTTP 424, TEI's Backend)."""
    return EngineError(
        f"the model produced a non-finite {what} (NaN or infinity) for input {index}; "
        "its weights are probably broken (`zerostart convert` reports non-finite tensors)"
    )


class Heads:
    """Pooling, normalisation and softmax for one worker; ``kernels`` None: plain Python."""

    def __init__(self, kernels: NativeKernels | None) -> None:
        self.kernels = kernels

    def sentence_vector(
        self,
        states: memoryview,
        mode: str,
        *,
        normalize: bool,
        dims: int | None = None,
        index: int = 0,
    ) -> memoryview:
        """One sequence's final states [tokens, hidden] -> its float32 vector [dims].

        ``dims`` None keeps ``hidden``. Raises InputError for an unknown mode or a
        ``dims`` outside [1, hidden], EngineError naming input ``index`` when the
        vector holds NaN or infinity.
        """
        if mode not in _POOL_CODES:
            raise InputError(
                f"unknown pooling mode {mode!r}; expected one of: {', '.join(POOLING_MODES)}"
            )
        shape = states.shape or (len(states),)
        tokens, hidden = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
        dims = hidden if dims is None else dims
        if not 1 <= dims <= hidden:
            raise InputError(f"dimensions must be in [1, {hidden}], got {dims}")
        if self.kernels is not None and tokens > 0:
            out = array("f", bytes(4 * dims))
            code = self.kernels.pool_vector(
                address(states), tokens, hidden, _POOL_CODES[mode], int(normalize), dims,
                out.buffer_info()[0],
            )  # fmt: skip
            if code == -1:
                raise non_finite("hidden state", index)
            if code:
                raise EngineError(f"zs_pool_vector refused {tokens} x {hidden} -> {dims}")
            return memoryview(out)
        return memoryview(_python_vector(states, tokens, hidden, mode, normalize, dims, index))

    def token_scores(self, logits: memoryview) -> list[list[float]]:
        """Softmax of every row of logits [tokens, labels], as nested lists of floats."""
        tokens, labels = logits.shape or (0, 0)
        if self.kernels is not None and tokens > 0:
            out = array("f", bytes(4 * tokens * labels))
            self.kernels.softmax_rows(address(logits), out.buffer_info()[0], tokens, labels)
            flat = out.tolist()
            return [flat[r * labels : (r + 1) * labels] for r in range(tokens)]
        from zerostart.tasks._heads import softmax

        rows: list[list[float]] = logits.tolist()  # type: ignore[assignment]
        return [softmax(row) for row in rows]


def _python_vector(
    states: memoryview, tokens: int, hidden: int, mode: str, normalize: bool, dims: int, index: int
) -> array[float]:
    flat = states.cast("B").cast("f")
    if mode == "cls" or tokens == 1:
        vector = list(flat[:dims])
    else:
        sums = [0.0] * dims
        for t in range(tokens):
            sums = [a + b for a, b in zip(sums, flat[t * hidden : t * hidden + dims], strict=True)]
        vector = [s / tokens for s in sums]
    if not math.isfinite(sum(vector)):
        raise non_finite("hidden state", index)
    if normalize:
        norm = math.sqrt(math.fsum(v * v for v in vector))
        scale = 1.0 / max(norm, NORMALIZE_EPS)
        vector = [v * scale for v in vector]
    return array("f", vector)
