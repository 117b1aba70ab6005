"""GPU engine on a real NVIDIA GPU: parity with the CPU engine and transformers, and what it maps.

Skipped with a reason without libcuda.so.1 or a visible device (CI). Run on a
GPU machine with ``pytest -m gpu tests/gpu`` (docs/gpu.md). Tolerance: max abs
1e-2 on logits (fp16 weights and activations, fp32 accumulation; measured
CPU-vs-GPU gaps are reported by ``bench/gpu.py``), identical argmax labels;
embeddings: max abs 2e-2 on last_hidden_state and cosine > 0.999 per token.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine_reference import encode_padded, transformers_reference

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gpu_reason() -> str | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "libcuda.so.1 not found (no NVIDIA driver on this machine)"
    if lib.cuInit(0) != 0:
        return "cuInit failed: no usable NVIDIA GPU"
    n = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        return "no CUDA device visible"
    return None


_REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

LOGITS_TOLERANCE = 1e-2
EMBED_TOLERANCE = 2e-2
SENTENCES = [
    (
        "My name is Sarah Johnson and I live at 42 Baker Street, Springfield.",
        "Call me at 555-1234.",
    ),
    ("Their was to much traffic in Paris yesterday, which were annoying.", "Yes."),
    ("ok", "Email john.doe@example.com before Friday, or don't."),
    ("The quick brown fox jumps over the lazy dog again and again and again.", "Nothing here."),
    ("I loved this film, the acting was wonderful and the ending made me cry.", "Great."),
    (
        "Terrible service, cold food, and the waiter was rude to everyone at our table.",
        "Never again.",
    ),
    (
        "Please send the invoice to Maria Garcia, 1600 Amphitheatre Parkway, Mountain View.",
        "Thanks!",
    ),
]


def _arch() -> str:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuInit(0)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)
    return f"sm_{major.value}{minor.value}"


def _bundles(src: Path, tmp: Path) -> tuple[Any, Any]:
    from zerostart.kernels.aot import compile_for_bundle
    from zerostart.model.bundle import Bundle
    from zerostart.model.convert import convert

    convert(src, tmp / "cpu")
    convert(src, tmp / "gpu", device="cuda")
    gpu = Bundle.open(tmp / "gpu")
    if not (tmp / "gpu" / "kernels" / "manifest.json").exists():  # convert without the --arch hook
        compile_for_bundle(gpu.manifest, tmp / "gpu", [_arch()])
    return Bundle.open(tmp / "cpu"), gpu


@pytest.mark.parametrize("fixture", ["minilm_sst2_dir", "rampart_ner_dir", "minilm_embed_dir"])
def test_parity_with_cpu_engine_and_transformers(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from zerostart.engine.cpu import CpuEngine
    from zerostart.engine.cuda import CudaEngine

    src: Path = request.getfixturevalue(fixture)
    cpu_bundle, gpu_bundle = _bundles(src, tmp_path)
    m = cpu_bundle.manifest
    ids, mask, types = encode_padded(src, SENTENCES, pairs=m.task == "sequence-classification")
    t_ = types if m.architecture == "bert" else None
    engine = CudaEngine.from_bundle(gpu_bundle)
    try:
        got = engine.forward(ids, mask, t_)
        cpu = CpuEngine(m, cpu_bundle.weights).forward(ids, mask, t_)
        ref = transformers_reference(src, m.task, ids, mask, t_)
        # a batch bigger than one bucket, and batch 1, go through the same path
        single = engine.forward(
            ids[:1, : int(mask[0].sum())],
            mask[:1, : int(mask[0].sum())],
            None if t_ is None else t_[:1, : int(mask[0].sum())],
        )
    finally:
        engine.close()
    assert got.shape == cpu.shape and got.dtype == np.float32
    keep = mask.astype(bool) if m.task != "sequence-classification" else slice(None)
    tol = EMBED_TOLERANCE if m.task == "embeddings" else LOGITS_TOLERANCE
    for want in (cpu, ref):
        diff = float(np.abs(got[keep] - want[keep]).max())
        assert diff <= tol, f"max abs diff {diff:.3e} > {tol}"
        if m.task != "embeddings":
            np.testing.assert_array_equal(got[keep].argmax(-1), want[keep].argmax(-1))
        else:
            g, w = got[keep], want[keep]
            cos = (g * w).sum(-1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(w, axis=-1))
            assert cos.min() > 0.999
    n0 = int(mask[0].sum())
    want0 = got[:1] if m.task == "sequence-classification" else got[:1, :n0]
    assert float(np.abs(single - want0).max()) <= tol


def test_worker_maps_no_cuda_library_but_libcuda(minilm_sst2_dir: Path, tmp_path: Path) -> None:
    """After a forward pass in a fresh process, /proc/self/maps shows libcuda and no toolkit library."""
    import subprocess
    import sys

    _, gpu_bundle = _bundles(minilm_sst2_dir, tmp_path)
    code = (
        "import sys, numpy as np\n"
        "from zerostart.model.bundle import Bundle\n"
        "from zerostart.engine.cuda import CudaEngine\n"
        f"b = Bundle.open({str(gpu_bundle.path)!r})\n"
        "e = CudaEngine.from_bundle(b)\n"
        "print(e.forward(np.array([[101, 2023, 102]]), np.ones((1, 3), np.int64)).shape)\n"
        "print(open('/proc/self/maps').read())\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    libs = {line.split()[-1] for line in out.splitlines() if "/" in line and ".so" in line}
    names = {Path(p).name for p in libs}
    assert any(n.startswith("libcuda.so") for n in names), names
    forbidden = (
        "libcudart",
        "libcublas",
        "libcublasLt",
        "libnvrtc",
        "libtorch",
        "libtriton",
        "libcupy",
        "libnvJitLink",
    )
    assert not [n for n in names if n.startswith(forbidden)], names
    modules = out.split("MODULES", 1)[1].split()
    assert not [
        m for m in modules if m.split(".")[0] in ("torch", "triton", "cupy", "transformers")
    ]
