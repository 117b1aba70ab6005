"""GPU engine on a real NVIDIA GPU: parity with the CPU engine and transformers, answers, maps.

Skipped with a reason without libcuda.so.1 or a visible device (CI); in a GPU
session (scripts/gpu_session.sh) every skip is a failure. Cases (a GPU bundle
plus the CPU side's outputs on the test corpus) come from tools/gpu_prep.py
or are built here: tests/gpu/conftest.py. Nothing here imports torch.

Tolerances (fp16 weights and activations, fp32 accumulation and fp32
LayerNorm/softmax/GELU math, one rounding to fp16 per kernel output, against
fp32 references): logits max abs 1e-2 and identical argmax per real token;
embeddings (last_hidden_state) max abs 2e-2 and cosine > 0.999 per token;
pipeline answers: identical labels and entity spans, scores within 1e-2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
Case = Any  # tests/gpu/conftest.py's Case

LOGITS_TOLERANCE = 1e-2
EMBED_TOLERANCE = 2e-2
COSINE_MIN = 0.999
SCORE_TOLERANCE = 1e-2
FORBIDDEN_LIBRARIES = (
    "libcudart",
    "libcublas",
    "libcublasLt",
    "libnvrtc",
    "libtorch",
    "libtriton",
    "libcupy",
    "libnvJitLink",
    "libcudnn",
)


def _engine(case: Case) -> Any:
    from zerostart.bundle.folder import Bundle
    from zerostart.engine.cuda import CudaEngine

    return CudaEngine.from_bundle(Bundle.open(case.bundle, verify="full"))


def _assert_close(case: Case, got: np.ndarray, want: np.ndarray, what: str) -> None:
    mask = case.arrays["attention_mask"]
    task = json.loads((case.bundle / "manifest.json").read_text())["task"]
    assert got.shape == want.shape, (what, got.shape, want.shape)
    keep: Any = mask.astype(bool) if task != "sequence-classification" else slice(None)
    g, w = got[keep], want[keep]
    tol = EMBED_TOLERANCE if task == "embeddings" else LOGITS_TOLERANCE
    diff = float(np.abs(g - w).max())
    assert diff <= tol, f"{case.name} vs {what}: max abs diff {diff:.3e} > {tol}"
    if task == "embeddings":
        cos = (g * w).sum(-1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(w, axis=-1))
        assert float(cos.min()) > COSINE_MIN, f"{case.name} vs {what}: cosine {cos.min():.5f}"
    else:
        np.testing.assert_array_equal(g.argmax(-1), w.argmax(-1), err_msg=f"{case.name} {what}")


def test_parity_with_cpu_engine(case: Case) -> None:
    """The whole corpus in one batch, then batch 1, then from another thread (the batcher's)."""
    ids, mask, types = case.arrays["input_ids"], case.arrays["attention_mask"], case.types
    engine = _engine(case)
    try:
        got = engine.forward(ids, mask, types)
        n0 = int(mask[0].sum())
        single = engine.forward(
            ids[:1, :n0], mask[:1, :n0], None if types is None else types[:1, :n0]
        )
        box: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: box.setdefault("out", engine.forward(ids, mask, types)), name="batcher"
        )
        thread.start()
        thread.join(timeout=120)
    finally:
        engine.close()
    assert got.dtype == np.float32
    _assert_close(case, got, case.arrays["cpu"], "CPU engine (fp32)")
    want0 = got[:1] if got.ndim == 2 else got[:1, :n0]
    assert float(np.abs(single - want0).max()) <= EMBED_TOLERANCE, "batch 1 differs from batch 7"
    np.testing.assert_array_equal(box["out"], got)  # same bucket, same graph: bit-identical


def test_parity_with_transformers(case: Case) -> None:
    """Against transformers' fp32 outputs, recorded where transformers is installed."""
    if "transformers" not in case.arrays:
        pytest.skip(f"{case.name}: no transformers reference recorded ({case.origin})")
    ids, mask, types = case.arrays["input_ids"], case.arrays["attention_mask"], case.types
    engine = _engine(case)
    try:
        got = engine.forward(ids, mask, types)
    finally:
        engine.close()
    _assert_close(case, got, case.arrays["transformers"], "transformers (fp32 eager)")


def _compare_answers(got: Any, want: Any, path: str = "") -> None:
    """Labels, words and spans identical; scores and vectors within SCORE_TOLERANCE."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (path, got, want)
        for k in want:
            _compare_answers(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        if want and all(isinstance(x, float) for x in want):  # an embedding vector
            g, w = np.asarray(got), np.asarray(want)
            assert float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w))) > COSINE_MIN, path
            return
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _compare_answers(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert abs(float(got) - want) <= SCORE_TOLERANCE, (path, got, want)
    else:
        assert got == want, (path, got, want)


def test_pipeline_answers_match_cpu(case: Case, gpu_prep: Any) -> None:
    """Text in, JSON out, through the worker's pipeline on the GPU bundle."""
    task = json.loads((case.bundle / "manifest.json").read_text())["task"]
    _compare_answers(gpu_prep.pipeline_answers(case.bundle, task), case.answers)


def test_worker_maps_no_cuda_library_but_libcuda(case: Case) -> None:
    """After a forward pass in a fresh process, /proc/self/maps holds libcuda and no toolkit."""
    code = (
        "import sys, numpy as np\n"
        "from zerostart.bundle.folder import Bundle\n"
        "from zerostart.engine.cuda import CudaEngine\n"
        "e = CudaEngine.from_bundle(Bundle.open(sys.argv[1]))\n"
        "print('SHAPE', e.forward(np.array([[2, 100, 3]]), np.ones((1, 3), np.int64)).shape)\n"
        "print(open('/proc/self/maps').read())\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(case.bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "SHAPE" in out
    names = {
        Path(line.split()[-1]).name for line in out.splitlines() if ".so" in line and "/" in line
    }
    assert any(n.startswith("libcuda.so") for n in names), sorted(names)
    assert not [n for n in names if n.startswith(FORBIDDEN_LIBRARIES)], sorted(names)
    modules = out.split("MODULES", 1)[1].split()
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "triton", "cupy", "transformers")]
    assert not heavy, heavy
