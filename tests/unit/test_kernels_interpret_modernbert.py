"""ModernBERT's Triton kernels against the numpy reference, on the CPU (Triton's interpreter).

Each kernel of ``zerostart.kernels.triton_modernbert`` is checked against the
functions of ``zerostart.engine.modernbert_ref`` at T = 1, 40 and 127 (a ragged
batch), with windows smaller and larger than T; then ``CudaEngine.forward`` on
a tiny ModernBERT (the engine itself on tests/fake_libcuda.py, every launch run
by the interpreter: tests/interpret_engine.py) is checked against
``ModernBertReference.forward``. As in ``test_kernels_interpret.py``,
``TRITON_INTERPRET=1`` must be set before the kernels are decorated, so the checks run in one child process (this
file is also a script) whose per-case lines the tests read. Tolerances are fp16
ones: activations are rounded to fp16 between kernels.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interpret_child import case_line, run_interpreted

CASES = ("ln_nobias", "rotary", "gemm_geglu", "attention_band", "band_skips", "mean_pool")
# The whole forward is slow in the interpreter (~8 ms a program): one small point by
# default, every task at T = 1/40/127 with ZEROSTART_FULL_PARITY=1 (docs/testing.md).
FULL = os.environ.get("ZEROSTART_FULL_PARITY") == "1"
FORWARD_CASES = ("forward",) + (
    ("full_embeddings", "full_seqcls_cls", "full_seqcls_mean", "full_tokcls") if FULL else ()
)
LENGTHS = (1, 40, 127)
BLOCK = 16  # every block size of the interpreted launches (tl.dot needs >= 16)
rng = np.random.default_rng(0)


def _t(torch: Any, a: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a))


def _ln_nobias(torch: Any, k: Any) -> float:
    from zerostart.engine.modernbert_ref import layer_norm

    worst = 0.0
    rows, h, vocab = 7, 48, 30
    x = (rng.standard_normal((vocab, h)) * 3 + 1).astype(np.float16)
    w = rng.standard_normal(h).astype(np.float16)
    ids = rng.integers(0, vocab, rows).astype(np.int32)
    for gather in (0, 1):
        y = torch.full((rows, h), float("nan")).half()
        k.ln_nobias[(rows,)](_t(torch, x), _t(torch, ids), _t(torch, w), y, h, 1e-5, GATHER=gather, BLOCK_H=64)  # fmt: skip
        src = x[ids] if gather else x[:rows]
        ref = layer_norm(src.astype(np.float32), w.astype(np.float32), 1e-5)
        worst = max(worst, float(np.abs(y.float().numpy() - ref).max()))
    assert worst < 1e-2, worst
    return worst


def _rotary(torch: Any, k: Any) -> float:
    from zerostart.engine.modernbert_ref import rope_tables, rotate

    worst = 0.0
    nh, d = 2, 32
    h = nh * d
    for t in LENGTHS:
        for theta in (160_000.0, 10_000.0):
            b = 2
            qkv = rng.standard_normal((b * t, 3 * h)).astype(np.float16)
            cos, sin = rope_tables(theta, d, t)
            got = _t(torch, qkv.copy())
            k.rotary[(-(-t // 32), b * nh)](
                got, _t(torch, cos), _t(torch, sin), t, h, NUM_HEADS=nh, HEAD_DIM=d, BLOCK_T=32
            )
            x = qkv.astype(np.float32).reshape(b, t, 3, nh, d).transpose(2, 0, 3, 1, 4)
            ref = np.stack([rotate(x[0], cos, sin), rotate(x[1], cos, sin), x[2]])
            ref = ref.transpose(1, 3, 0, 2, 4).reshape(b * t, 3 * h)
            worst = max(worst, float(np.abs(got.float().numpy() - ref).max()))
    assert worst < 1e-2, worst
    return worst


def _gemm_geglu(torch: Any, k: Any) -> float:
    from zerostart.engine import ops

    worst = 0.0
    for m, n, kk, act in [(1, 48, 32, 1), (40, 37, 40, 1), (127, 64, 64, 2)]:
        a = rng.standard_normal((m, kk)).astype(np.float16)
        b = (rng.standard_normal((kk, 2 * n)) / kk**0.5).astype(np.float16)
        c = torch.full((m, n), float("nan")).half()
        grid = (-(-m // BLOCK) * -(-n // BLOCK),)
        k.gemm_geglu[grid](
            _t(torch, a), _t(torch, b), c, m, n, kk, kk,
            ACT=act, BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_K=BLOCK, GROUP_M=2,
            EVEN_K=int(kk % BLOCK == 0),  # 40: the masked K loop
        )  # fmt: skip
        f = a.astype(np.float32) @ b.astype(np.float32)
        u = np.ascontiguousarray(f[:, :n])
        (ops.gelu_erf_ if act == 1 else ops.gelu_tanh_)(u)
        worst = max(worst, float(np.abs(c.float().numpy() - u * f[:, n:]).max()))
    assert worst < 2e-2, worst
    return worst


def _band_reference(qkv: np.ndarray, lens: np.ndarray, nh: int, window: int) -> np.ndarray:
    """The reference forward's attention: additive finfo.min masks, full [T, T] scores."""
    from zerostart.engine import ops
    from zerostart.engine.modernbert_ref import MASK_VALUE

    b = len(lens)
    t, h = qkv.shape[0] // b, qkv.shape[1] // 3
    q, kk, v = qkv.astype(np.float32).reshape(b, t, 3, nh, h // nh).transpose(2, 0, 3, 1, 4)
    keys = np.where(np.arange(t)[None, :] < lens[:, None], np.float32(0), np.float32(MASK_VALUE))
    pos = np.arange(t)
    outside = np.abs(pos[:, None] - pos[None, :]) > window
    mask = np.where(outside[None, None], np.float32(MASK_VALUE), keys[:, None, None, :])
    scores = q @ kk.transpose(0, 1, 3, 2) + mask
    ops.softmax_(scores)
    return np.asarray((scores @ v).transpose(0, 2, 1, 3).reshape(b, t, h))


def _attention_band(torch: Any, k: Any) -> float:
    worst = 0.0
    nh, d = 1, 16
    h = nh * d
    for t in LENGTHS:
        lens = np.array(sorted({t, max(1, t // 3)}, reverse=True), dtype=np.int32)
        b = len(lens)
        for window in (4, 200):  # smaller and larger than T
            qkv = rng.standard_normal((b * t, 3 * h)).astype(np.float16)
            out = torch.full((b * t, h), float("nan")).half()
            k.attention_band[(-(-t // 32), b * nh)](
                _t(torch, qkv), _t(torch, lens), out, t, h, window,
                NUM_HEADS=nh, HEAD_DIM=d, BLOCK_M=32, BLOCK_N=32,
            )  # fmt: skip
            got = out.float().numpy().reshape(b, t, h)
            ref = _band_reference(qkv, lens, nh, window)
            for i, n in enumerate(lens.tolist()):
                worst = max(worst, float(np.abs(got[i, :n] - ref[i, :n]).max()))
                assert not np.isnan(got[i]).any(), (t, window, i)
                assert np.all(got[i, -(-n // 32) * 32 :] == 0), (t, window, i)
    assert worst < 1e-2, worst
    return worst


def _band_skips(torch: Any, k: Any) -> float:
    """Key blocks outside a query block's band are never read: NaN values there stay unseen."""
    nh, d, t, window = 1, 16, 64, 2
    qkv = rng.standard_normal((t, 3 * nh * d)).astype(np.float16)
    qkv[40:48, 2 * d :] = np.nan  # values of key block 2 (rows 32..47)
    out = torch.zeros((t, nh * d)).half()
    lens = np.array([t], dtype=np.int32)
    k.attention_band[(t // BLOCK, nh)](
        _t(torch, qkv), _t(torch, lens), out, t, d, window,
        NUM_HEADS=nh, HEAD_DIM=d, BLOCK_M=BLOCK, BLOCK_N=BLOCK,
    )  # fmt: skip
    got = out.float().numpy()
    # Query block 0 (rows 0..15) needs keys 0..17 (blocks 0 and 1); were block 2 visited,
    # p = 0 times NaN would poison it. Rows 38..49 do see the NaN values, as they must.
    assert np.isfinite(got[:BLOCK]).all() and np.isnan(got[38:50]).all()
    ref = _band_reference(np.nan_to_num(qkv), lens, nh, window)[0]
    err = float(np.abs(got[:BLOCK] - ref[:BLOCK]).max())
    assert err < 1e-2, err
    return err


def _mean_pool(torch: Any, k: Any) -> float:
    worst = 0.0
    h = 40
    for t in LENGTHS:
        lens = np.array(sorted({t, max(1, t // 3), 1}, reverse=True), dtype=np.int32)
        b = len(lens)
        x = rng.standard_normal((b * t, h)).astype(np.float16)
        y = torch.full((b, h), float("nan")).half()
        k.mean_pool[(b, -(-h // 32))](_t(torch, x), _t(torch, lens), y, t, h, BLOCK_T=BLOCK, BLOCK_H=32)  # fmt: skip
        xs = x.astype(np.float32).reshape(b, t, h)
        ref = np.stack([xs[i, :n].mean(axis=0) for i, n in enumerate(lens.tolist())])
        worst = max(worst, float(np.abs(y.float().numpy() - ref).max()))
    assert worst < 1e-2, worst
    return worst


_TASKS = {
    "embeddings": ("embeddings", "cls"),
    "seqcls_cls": ("sequence-classification", "cls"),
    "seqcls_mean": ("sequence-classification", "mean"),
    "tokcls": ("token-classification", "cls"),
}


def _forward(torch: Any, case: str) -> float:
    """``CudaEngine.forward``, its kernels interpreted, vs ModernBertReference.forward.

    "forward": sequence classification with mean pooling (every kernel, both thetas,
    a window crossed) at T = 24; "full_<task>": T = 1, 40, 127, windows 8 and 200.
    """
    from interpret_engine import engine_forward, tiny_modernbert
    from zerostart.engine.modernbert_ref import ModernBertReference

    if case == "forward":
        task, pooling = _TASKS["seqcls_mean"]
        points = [(4, 24)]
    else:
        task, pooling = _TASKS[case.removeprefix("full_")]
        points = [(window, t) for window in (8, 200) for t in LENGTHS]
    worst = 0.0
    for window, t in points:
        manifest, weights = tiny_modernbert(task, pooling=pooling, window=window, seed=t)
        ref_engine = ModernBertReference(manifest, weights)
        lens = np.array(sorted({t, max(1, t // 3)}, reverse=True), dtype=np.int64)
        ids = rng.integers(3, manifest.config.vocab_size, (len(lens), t))
        mask = (np.arange(t)[None, :] < lens[:, None]).astype(np.int64)
        ids = np.where(mask != 0, ids, 0)
        ref = ref_engine.forward(ids, mask)
        got = engine_forward(torch, manifest, weights, ids, mask)
        if task == "sequence-classification":
            err = float(np.abs(got - ref).max())
        else:
            err = max(float(np.abs(got[i, :n] - ref[i, :n]).max()) for i, n in enumerate(lens))
        worst = max(worst, err / max(1.0, float(np.abs(ref).max())))
    assert worst < 3e-2, worst
    return worst


def _main(cases: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the helper module
    import torch

    from zerostart.kernels import triton_modernbert

    forwards = ("forward", *("full_" + task for task in _TASKS))
    for case in cases:
        try:
            t0 = time.perf_counter()
            if case in forwards:
                err = _forward(torch, case)
            else:
                check: Callable[[Any, Any], float] = globals()["_" + case]
                err = check(torch, triton_modernbert)
            print(f"{case} ok max error {err:.3g} ({time.perf_counter() - t0:.2f} s)", flush=True)
        except AssertionError as exc:
            print(f"{case} FAILED {exc!r}", flush=True)


@pytest.fixture(scope="module")
def interpreted() -> str:
    """Every case in one interpreter child (one torch import, ~seconds in all)."""
    return run_interpreted(str(Path(__file__)), [*CASES, *FORWARD_CASES])


@pytest.mark.parametrize("case", CASES + FORWARD_CASES)
def test_modernbert_kernel_matches_reference_in_interpreter(interpreted: str, case: str) -> None:
    line = case_line(interpreted, case)
    assert line.startswith(f"{case} ok "), line


if __name__ == "__main__":
    _main(sys.argv[1:])
