"""The real worker, on a real bundle, imports only the pinned modules (request path included).

numpy is not among them: the worker serves a bundle with native kernels through
``NativeCpuEngine`` and the numpy-free heads (docs/cpu.md).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serve_imports import FORBIDDEN, WORKER_ALLOWED
from test_server_robustness import Worker, bundle_for

from zerostart.bundle.manifest import Manifest

pytestmark = pytest.mark.integration


# Runs the worker exactly as ``python -m zerostart.serve`` does, and prints sys.modules at
# exit: after start-up, a request and a SIGTERM drain, so lazy imports count too.
WRAPPER = """
import atexit, gc, json, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
atexit.register(lambda: print(f"GC {gc.isenabled()} {gc.get_freeze_count()}", file=sys.stderr))
sys.argv[0] = "zerostart.serve"
runpy.run_module("zerostart.serve", run_name="__main__", alter_sys=True)
"""


# Every task's request path: classification scores, pooled vectors (JSON and base64),
# token states, NER aggregation.
REQUESTS = {
    "sst2_bundle": [("/predict", {"inputs": "a good movie"})],
    "embed_bundle": [
        ("/embed", {"inputs": ["a good movie", "a train"]}),
        ("/v1/embeddings", {"input": "a good movie", "encoding_format": "base64"}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}),
        ("/embed_all", {"inputs": "a good movie"}),
    ],
    "ner_bundle": [
        ("/tokens", {"inputs": "My name is Sarah Johnson", "aggregation_strategy": s})
        for s in ("none", "simple", "first", "average", "max")
    ],
}


@pytest.mark.parametrize("fixture", sorted(REQUESTS))
def test_worker_imports_only_pinned_modules(request: pytest.FixtureRequest, fixture: str) -> None:
    bundle = bundle_for(request, fixture)
    with Worker(bundle, entry=["-c", WRAPPER]) as w:
        for route, body in REQUESTS[fixture]:
            status, answer = w.request("POST", route, body)
            assert status == 200, (route, answer)
        w.terminate()
        assert w.wait() == 0
    found = re.search(r"^MODULES (.*)$", w.stderr_text(), re.M)
    assert found, w.stderr_text()
    top = {name.split(".")[0] for name in json.loads(found.group(1))}
    assert {"zerostart", "httptools", "ctypes"} <= top
    assert "numpy" not in top, "numpy is on the worker's path again"
    assert not top & FORBIDDEN
    unexpected = top - WORKER_ALLOWED - {"runpy"}  # runpy: -m uses it too
    assert not unexpected, f"new imports on the worker path: {sorted(unexpected)}"
    # the collector, paused for start-up (serve/startup.py), runs again while serving, with
    # what start-up made frozen out of its way
    enabled, frozen = _line(w.stderr_text(), "GC").split()
    assert enabled == "True" and int(frozen) > 10_000, (enabled, frozen)


# The GPU worker on tests/fake_libcuda.py (the dry run's stand-in for libcuda: real driver
# wrappers, kernels that compute nothing): everything but the arithmetic runs, so the
# imports of a GPU worker's whole path (engine, graphs, pinned buffers, heads) are real.
GPU_WRAPPER = """
import atexit, json, runpy, sys
sys.path.insert(0, {dryrun!r})
import sitecustomize  # Driver.load() -> the fake libcuda
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv[0] = "zerostart.serve"
runpy.run_module("zerostart.serve", run_name="__main__", alter_sys=True)
"""
GPU_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "movie", "train")


def _gpu_bundle(root: Path, task: str) -> Path:
    import numpy as np

    from fake_libcuda import write_fake_kernels
    from tiny_models import tiny_manifest
    from zerostart.bundle.layout import LAYOUT_VERSION, tensor_shapes
    from zerostart.bundle.manifest import MANIFEST_NAME, VOCAB_NAME, WEIGHTS_NAME
    from zerostart.bundle.weights import write_weights
    from zerostart.model.canary import _file_entry

    m = tiny_manifest(
        "bert", task, hidden=64, layers=2, heads=2, ffn=128, max_positions=64, device="cuda"
    )
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float16) for k, s in tensor_shapes(m).items()}
    write_weights(root / WEIGHTS_NAME, tensors, {"zerostart.layout": LAYOUT_VERSION})
    vocab = [*GPU_VOCAB, *(f"w{i}" for i in range(m.config.vocab_size - len(GPU_VOCAB)))]
    (root / VOCAB_NAME).write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    write_fake_kernels(m, root)
    files = {n: _file_entry(root / n) for n in (WEIGHTS_NAME, VOCAB_NAME)}
    (root / MANIFEST_NAME).write_text(m.with_files(files).to_json(), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("task", "route", "body"),
    [
        ("sequence-classification", "/predict", {"inputs": "a good movie"}),
        ("embeddings", "/embed", {"inputs": ["a good movie", "a train"]}),
        ("token-classification", "/tokens", {"inputs": "a good movie"}),
    ],
)
def test_gpu_worker_imports_no_numpy(tmp_path: Path, task: str, route: str, body: Any) -> None:
    bundle = _gpu_bundle(tmp_path / "bundle", task)
    dryrun = str(Path(__file__).resolve().parents[1] / "dryrun")
    with Worker(bundle, entry=["-c", GPU_WRAPPER.format(dryrun=dryrun)]) as w:
        status, answer = w.request("POST", route, body)
        assert status == 200, answer
        status, info = w.request("GET", "/info")
        assert info["device"] == "cuda"
        w.terminate()
        assert w.wait() == 0
    found = re.search(r"^MODULES (.*)$", w.stderr_text(), re.M)
    assert found, w.stderr_text()
    top = {name.split(".")[0] for name in json.loads(found.group(1))}
    assert "numpy" not in top, "numpy is on the GPU worker's path again"
    assert not top & FORBIDDEN
    # sitecustomize and fake_libcuda are the test's stand-in for the driver
    unexpected = top - WORKER_ALLOWED - {"runpy", "sitecustomize", "fake_libcuda"}
    assert not unexpected, f"new imports on the GPU worker path: {sorted(unexpected)}"


# A warm slot (``--slot``), driven as the pool drives it: it pre-imports and runs the canary
# health check, says "ready", is assigned a real bundle, answers every route of its task and
# is stopped. The audit hook records, after the slot has said "ready", every module imported
# from then on: an assignment should find everything already imported (serve/slot.py's
# _preload), so those are what a request to a warm slot still pays for.
SLOT_WRAPPER = """
import atexit, gc, json, runpy, sys
late = []
def hook(event, args):
    if event == "import" and getattr(sys, "_zs_ready", False):
        late.append(args[0])
sys.addaudithook(hook)
import zerostart.serve.slot as slot
send = slot.encode
def encode(message):
    if message.get("type") == "ready":
        sys._zs_ready = True
    return send(message)
slot.encode = encode
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
atexit.register(lambda: print("LATE " + json.dumps(late), file=sys.stderr))
atexit.register(lambda: print(f"GC {gc.isenabled()} {gc.get_freeze_count()}", file=sys.stderr))
sys.argv[0] = "zerostart.serve"
runpy.run_module("zerostart.serve", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("fixture", sorted(REQUESTS))
def test_warm_slot_imports_no_numpy(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str
) -> None:
    import os
    import subprocess
    import urllib.request

    from zerostart.model.canary import write_canary
    from zerostart.serve.slot import encode

    bundle = bundle_for(request, fixture)
    canary = write_canary(tmp_path / "canary")
    assert Manifest.load(canary).cpu_kernels, "the canary carries native kernels"
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sock = run / "s.sock"
    src = str(Path(__file__).resolve().parents[2] / "src")
    cmd = [sys.executable, "-c", SLOT_WRAPPER, "--slot", str(sock), "--canary", str(canary)]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONPATH": src}, stderr=subprocess.PIPE, text=True
    )
    try:
        control = _connect(sock, proc)
        with control, control.makefile("rb") as lines:
            ready = json.loads(lines.readline())
            assert ready["type"] == "ready", ready
            assert ready["checks"] == {"canary": "ok", "engine": "NativeCpuEngine"}
            control.sendall(
                encode({"type": "assign", "bundle": str(bundle), "server": {"port": 0}})
            )
            serving = json.loads(lines.readline())
            assert serving["type"] == "serving", serving
            for route, body in REQUESTS[fixture]:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{serving['port']}{route}",
                    data=json.dumps(body).encode(),
                    method="POST",
                )
                with urllib.request.urlopen(req, timeout=60) as resp:
                    assert resp.status == 200, route
            control.sendall(encode({"type": "stop"}))
            assert proc.wait(60) == 0
    finally:
        proc.kill()
        stderr = proc.communicate()[1]
    top = {name.split(".")[0] for name in json.loads(_line(stderr, "MODULES"))}
    assert "numpy" not in top, "numpy is in the warm slot again"
    assert not top & FORBIDDEN
    unexpected = top - WORKER_ALLOWED - {"runpy"}
    assert not unexpected, f"new imports in the warm slot: {sorted(unexpected)}"
    late = sorted({name for name in json.loads(_line(stderr, "LATE"))})
    assert late == [], f"an assignment imports what the slot should have pre-imported: {late}"
    enabled, frozen = _line(stderr, "GC").split()
    assert enabled == "True" and int(frozen) > 10_000, (enabled, frozen)


def _line(stderr: str, tag: str) -> str:
    found = re.search(rf"^{tag} (.*)$", stderr, re.M)
    assert found, stderr
    return found.group(1)


def _connect(sock: Path, proc: Any) -> Any:
    """Connect to a slot's control socket once it listens (the file appears at bind)."""
    import socket
    import time

    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the slot exited early"
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(str(sock))
            return c
        except (FileNotFoundError, ConnectionRefusedError):
            c.close()
            time.sleep(0.01)
