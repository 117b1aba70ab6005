"""DeBERTa's Triton attention kernels against the numpy reference, in Triton's interpreter.

``rel_proj`` (the two ``[T, W]`` content-to-position products) and
``attention_rel`` (disentangled attention gathering from them by the bundle's
log-bucket table) from ``zerostart.kernels.triton_deberta`` are checked against
``zerostart.engine.deberta.disentangled_attention`` at T = 1, 40 and 127 with
ragged lengths, on a table from ``model.deberta.relative_index`` (16 buckets,
so distances past 8 are log-bucketed); then ``CudaEngine.forward`` on a tiny
DeBERTa classifier (BERT's layer with these two launches in place of its
attention, run by the interpreter) against ``DebertaEngine.forward``. One
interpreter child runs every case,
as in test_kernels_interpret_engine.py. Tolerances are fp16 ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interpret_child import case_line, run_interpreted

CASES = ("rel_proj", "attention_rel", "forward")
LENGTHS = (1, 40, 127)
POSITIONS = 128  # P: the table has 2P - 1 entries
CONFIG = {"position_buckets": 16, "max_relative_positions": 64, "max_position_embeddings": 128}
NH, D = 2, 16
BLOCK = 16


def _setup(t: int, seed: int) -> dict[str, Any]:
    from zerostart.engine.deberta import rel_rows
    from zerostart.model.deberta import relative_index

    rng = np.random.default_rng(seed)
    index = relative_index(CONFIG, POSITIONS)
    rows = rel_rows(index, t)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    span2 = 2 * CONFIG["position_buckets"]
    h = NH * D
    lens = np.array(sorted({t, max(1, t // 3)}, reverse=True), dtype=np.int32)
    b = len(lens)
    return {
        "index": index,
        "rows": rows,
        "lo": lo,
        "w": hi - lo,
        "lens": lens,
        "qkv": rng.standard_normal((b * t, 3 * h)).astype(np.float16),
        "posq": (rng.standard_normal((span2, h)) * 0.5).astype(np.float16),
        "posk": (rng.standard_normal((span2, h)) * 0.5).astype(np.float16),
    }


def _rel_proj(torch: Any, k: Any, s: dict[str, Any], t: int) -> tuple[Any, Any]:
    b, w = len(s["lens"]), s["w"]
    c2p = torch.full((b * NH, t, w), float("nan"))
    p2c = torch.full((b * NH, t, w), float("nan"))
    grid = (-(-t // BLOCK), -(-w // BLOCK), b * NH * 2)
    k.rel_proj[grid](
        *(torch.from_numpy(s[n]) for n in ("qkv", "posq", "posk")), c2p, p2c,
        t, NH * D, w, s["lo"], NUM_HEADS=NH, HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK,
    )  # fmt: skip
    return c2p, p2c


def _check_rel_proj(torch: Any, k: Any) -> float:
    worst = 0.0
    for t in LENGTHS:
        s = _setup(t, t)
        c2p, p2c = _rel_proj(torch, k, s, t)
        b, lo, w = len(s["lens"]), s["lo"], s["w"]
        x = s["qkv"].astype(np.float32).reshape(b, t, 3, NH, D)
        pq = s["posq"].astype(np.float32)[lo : lo + w].reshape(w, NH, D)
        pk = s["posk"].astype(np.float32)[lo : lo + w].reshape(w, NH, D)
        for i in range(b):
            for hd in range(NH):
                ref_c = x[i, :, 0, hd] @ pk[:, hd].T
                ref_p = x[i, :, 1, hd] @ pq[:, hd].T
                got_c, got_p = c2p[i * NH + hd].numpy(), p2c[i * NH + hd].numpy()
                worst = max(worst, float(np.abs(got_c - ref_c).max()))
                worst = max(worst, float(np.abs(got_p - ref_p).max()))
    assert worst < 1e-2, worst
    return worst


def _check_attention_rel(torch: Any, k: Any) -> float:
    from zerostart.engine.deberta import MASK_VALUE, disentangled_attention

    worst = 0.0
    for t in LENGTHS:
        s = _setup(t, 100 + t)
        c2p, p2c = _rel_proj(torch, k, s, t)
        lens, b, h = s["lens"], len(s["lens"]), NH * D
        out = torch.full((b * t, h), float("nan")).half()
        k.attention_rel[(-(-t // BLOCK), b * NH)](
            torch.from_numpy(s["qkv"]), c2p, p2c, torch.from_numpy(s["index"]),
            torch.from_numpy(lens), out, t, h, s["w"], s["lo"], POSITIONS,
            NUM_HEADS=NH, HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK,
        )  # fmt: skip
        got = out.float().numpy().reshape(b, t, NH, D)
        x = s["qkv"].astype(np.float32).reshape(b, t, 3, NH, D)
        pq = s["posq"].astype(np.float32).reshape(-1, NH, D)
        pk = s["posk"].astype(np.float32).reshape(-1, NH, D)
        for i, n in enumerate(lens.tolist()):
            bias = np.where(np.arange(t) < n, np.float32(0), np.float32(MASK_VALUE))
            for hd in range(NH):
                ref = disentangled_attention(
                    x[i, :, 0, hd], x[i, :, 1, hd], x[i, :, 2, hd],
                    pq[:, hd], pk[:, hd], s["rows"], bias,
                )  # fmt: skip
                worst = max(worst, float(np.abs(got[i, :n, hd] - ref[:n]).max()))
            assert not np.isnan(got[i]).any(), (t, i)
            assert np.all(got[i, -(-n // BLOCK) * BLOCK :] == 0), (t, i)
    assert worst < 1e-2, worst
    return worst


def _check_forward(torch: Any, k: Any) -> float:
    """``CudaEngine.forward`` on a tiny DeBERTa classifier, its kernels interpreted
    (tests/interpret_engine.py engine_forward), vs ``DebertaEngine.forward``; T = 24."""
    from interpret_engine import engine_forward, tiny_deberta
    from zerostart.engine.deberta import DebertaEngine

    manifest, weights = tiny_deberta("sequence-classification", seed=24)
    lens = np.array([24, 9])
    mask = (np.arange(24)[None, :] < lens[:, None]).astype(np.int64)
    ids = np.random.default_rng(24).integers(3, manifest.config.vocab_size, (2, 24)) * mask
    got = engine_forward(torch, manifest, weights, ids, mask)
    ref = DebertaEngine(manifest, weights).forward(ids, mask)
    err = float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))
    assert err < 3e-2 and (got.argmax(-1) == ref.argmax(-1)).all(), (got, ref)
    return err


def _main(cases: list[str]) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the helper module
    import torch

    from zerostart.kernels import triton_deberta

    for case in cases:
        try:
            checks = {
                "rel_proj": _check_rel_proj,
                "attention_rel": _check_attention_rel,
                "forward": _check_forward,
            }
            err = checks[case](torch, triton_deberta)
            print(f"{case} ok max error {err:.3g}", flush=True)
        except AssertionError as exc:
            print(f"{case} FAILED {exc!r}", flush=True)


@pytest.fixture(scope="module")
def interpreted() -> str:
    """Every case in one interpreter child (one torch import, ~seconds in all)."""
    return run_interpreted(str(Path(__file__)), CASES)


@pytest.mark.parametrize("case", CASES)
def test_deberta_kernel_matches_reference_in_interpreter(interpreted: str, case: str) -> None:
    line = case_line(interpreted, case)
    assert line.startswith(f"{case} ok "), line


if __name__ == "__main__":
    _main(sys.argv[1:])
