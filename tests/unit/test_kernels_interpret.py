"""Numerical checks of every Triton kernel against numpy, on the CPU (Triton's interpreter).

No GPU needed: ``TRITON_INTERPRET=1`` runs the same kernel source with numpy
semantics. It must be set before the kernels are decorated, and the AOT tests
in this process need real (compilable) kernels, so the checks run in a child
process: this file is also a script (``python test_kernels_interpret.py CASE``).
Tolerances are fp16 ones: outputs are rounded to fp16 (about 3 significant
digits) after fp32 accumulation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = ("gemm", "layer_norm", "embed", "attention", "splitk", "engine")


def _gemm(torch, k):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    # (M, N, K, ACT, HAS_RES, lda): ragged edges in every dim, a strided A (pooler), all epilogues
    for m, n, kk, act, res, lda in [
        (70, 48, 64, 1, 1, 64),
        (33, 35, 40, 2, 0, 40),
        (5, 16, 32, 4, 0, 3 * 32),
        (17, 80, 48, 3, 1, 48),
        (64, 64, 64, 0, 0, 64),
    ]:
        a = torch.randn(m, lda, generator=g).half()
        b = (torch.randn(kk, n, generator=g) / kk**0.5).half()
        bias = torch.randn(n, generator=g).half()
        r = torch.randn(m, n, generator=g).half()
        c = torch.full((m, n), float("nan")).half()
        grid = (-(-m // 32) * -(-n // 32),)
        k.gemm[grid](
            a,
            b,
            bias,
            r,
            c,
            m,
            n,
            kk,
            lda,
            n,
            ACT=act,
            HAS_RES=res,
            BLOCK_M=32,
            BLOCK_N=32,
            BLOCK_K=16,
            GROUP_M=2,
            EVEN_K=int(kk % 16 == 0),  # both K loops: unmasked (64, 32, 48) and masked (40)
        )
        ref = a.float()[:, :kk] @ b.float() + bias.float()
        F = torch.nn.functional
        ref = {
            0: ref,
            1: F.gelu(ref),
            2: F.gelu(ref, approximate="tanh"),
            3: F.relu(ref),
            4: torch.tanh(ref),
        }[act]
        if res:
            ref = ref + r.float()
        worst = max(worst, (c.float() - ref).abs().max().item())
    assert worst < 2e-2, worst
    return worst


def _layer_norm(torch, k):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    rows, h = 7, 48
    x = (torch.randn(rows, h, generator=g) * 3 + 1).half()
    w, b = torch.randn(h, generator=g).half(), torch.randn(h, generator=g).half()
    y = torch.empty(rows, h).half()
    k.layer_norm[(rows,)](x, w, b, y, h, 1e-12, BLOCK_H=64)
    ref = torch.nn.functional.layer_norm(x.float(), (h,), w.float(), b.float(), 1e-12)
    err = (y.float() - ref).abs().max().item()
    assert err < 1e-2, err
    return err


def _embed(torch, k):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(2)
    bsz, t, h, vocab = 2, 5, 48, 30
    ids = torch.randint(0, vocab, (bsz, t), generator=g, dtype=torch.int32)
    types = torch.randint(0, 2, (bsz, t), generator=g, dtype=torch.int32)
    word, pos = torch.randn(vocab, h, generator=g).half(), torch.randn(16, h, generator=g).half()
    tt = torch.randn(2, h, generator=g).half()
    w, b = torch.randn(h, generator=g).half(), torch.randn(h, generator=g).half()
    worst = 0.0
    for has_types in (1, 0):
        y = torch.empty(bsz * t, h).half()
        k.embed[(bsz * t,)](
            ids, types, word, pos, tt, w, b, y, t, h, 1e-12, HAS_TYPES=has_types, BLOCK_H=64
        )
        x = word.float()[ids.long()] + pos.float()[:t][None]
        if has_types:
            x = x + tt.float()[types.long()]
        ref = torch.nn.functional.layer_norm(x, (h,), w.float(), b.float(), 1e-12).reshape(
            bsz * t, h
        )
        worst = max(worst, (y.float() - ref).abs().max().item())
    assert worst < 1e-2, worst
    return worst


def _attention(torch, k):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(3)
    bsz, t, nh, d = 3, 40, 2, 16
    h = nh * d
    lens = torch.tensor([40, 7, 17], dtype=torch.int32)  # full, short (one block), two blocks
    qkv = torch.randn(bsz * t, 3 * h, generator=g).half()
    out = torch.full((bsz * t, h), float("nan")).half()
    k.attention[(-(-t // 16), bsz * nh)](
        qkv, lens, out, t, h, NUM_HEADS=nh, HEAD_DIM=d, BLOCK_M=16, BLOCK_N=16
    )
    q, kk, v = qkv.float().reshape(bsz, t, 3, nh, d).permute(2, 0, 3, 1, 4)
    s = q @ kk.transpose(-1, -2)  # q is pre-scaled in the bundle, so no 1/sqrt(d) here
    keymask = torch.arange(t)[None, :] < lens[:, None]  # [B, T]
    s = s.masked_fill(~keymask[:, None, None, :], float("-inf"))
    ref = (s.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(bsz, t, h)
    got = out.float().reshape(bsz, t, h)
    worst = 0.0
    for i, n in enumerate(lens.tolist()):
        worst = max(worst, (got[i, :n] - ref[i, :n]).abs().max().item())
        # query blocks wholly past the length are written as zeros, never left unset
        first_pad_block = -(-n // 16) * 16
        assert torch.all(got[i, first_pad_block:] == 0), i
        assert not torch.isnan(got[i]).any(), i
    assert worst < 1e-2, worst
    return worst


def _splitk(torch, k):  # type: ignore[no-untyped-def]
    """gemm_partial (K in SPLIT_K slices, fp32) + splitk_layer_norm (sum, bias, residual, LN)."""
    g = torch.Generator().manual_seed(4)
    worst = 0.0
    for m, n, kk, split, lda in [(5, 48, 64, 2, 64), (33, 64, 128, 4, 160), (1, 32, 32, 1, 32)]:
        a = torch.randn(m, lda, generator=g).half()
        b = (torch.randn(kk, n, generator=g) / kk**0.5).half()
        bias, res = torch.randn(n, generator=g).half(), torch.randn(m, n, generator=g).half()
        gam, bet = torch.randn(n, generator=g).half(), torch.randn(n, generator=g).half()
        w = torch.full((split, m, n), float("nan"))
        grid = (-(-m // 16) * -(-n // 16), split)
        k.gemm_partial[grid](
            a, b, w, m, n, kk, lda, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, SPLIT_K=split
        )
        y = torch.full((m, n), float("nan")).half()
        k.splitk_layer_norm[(m,)](w, bias, res, gam, bet, y, m, n, 1e-12, SPLIT_K=split, BLOCK_H=64)
        x = a.float()[:, :kk] @ b.float() + bias.float() + res.float()
        ref = torch.nn.functional.layer_norm(x, (n,), gam.float(), bet.float(), 1e-12)
        worst = max(worst, (y.float() - ref).abs().max().item())
    assert worst < 2e-2, worst
    return worst


def _engine(torch, k):  # type: ignore[no-untyped-def]
    """``CudaEngine.forward`` itself on a tiny BERT classifier and token classifier, every
    launch run by the interpreter on fake_libcuda's memory (tests/interpret_engine.py),
    vs the numpy ``CpuEngine``: input staging, buckets (T = 24 in 32), the [CLS] rows read
    with a stride (K is too small here for the split-K builds)."""

    import numpy as np

    from interpret_engine import engine_forward
    from tiny_models import tiny_manifest
    from zerostart.bundle.layout import tensor_shapes
    from zerostart.engine.cpu import CpuEngine

    worst = 0.0
    for task in ("sequence-classification", "token-classification"):
        m = tiny_manifest(
            "bert", task, hidden=32, layers=2, heads=2, ffn=48, max_positions=64, device="cuda"
        )
        rng = np.random.default_rng(5)
        w = {}
        for name, shape in tensor_shapes(m).items():
            a = rng.standard_normal(shape) / np.sqrt(shape[0] if len(shape) == 2 else 4)
            a += 1.0 if name.endswith("norm.weight") else 0.0
            w[name] = a.astype(np.float16).astype(np.float32)
        lens = np.array([24, 9])
        mask = (np.arange(24)[None, :] < lens[:, None]).astype(np.int64)
        ids = rng.integers(3, 50, (2, 24)) * mask
        got = engine_forward(torch, m, w, ids, mask)
        ref = CpuEngine(m._replace(device="cpu", dtype="float32"), w).forward(ids, mask)
        for i, n in enumerate(lens.tolist()):
            row = (
                (got[i], ref[i]) if task == "sequence-classification" else (got[i, :n], ref[i, :n])
            )
            worst = max(worst, float(np.abs(row[0] - row[1]).max()))
    assert worst < 1e-2, worst
    return worst


def _main(case: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helper modules
    import torch

    from zerostart.kernels import triton_kernels

    err = {
        "gemm": _gemm,
        "layer_norm": _layer_norm,
        "embed": _embed,
        "attention": _attention,
        "splitk": _splitk,
        "engine": _engine,
    }[case](torch, triton_kernels)
    print(f"{case} max abs error {err:.3g}")


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_in_interpreter(case: str) -> None:
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), case],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{case} max abs error" in proc.stdout


if __name__ == "__main__":
    _main(sys.argv[1])
