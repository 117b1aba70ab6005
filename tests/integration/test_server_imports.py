"""The real worker, on a real bundle, imports only the pinned modules (request path included).

numpy is not among them: the worker serves a bundle with native kernels through
``NativeCpuEngine`` and the numpy-free heads (docs/cpu.md).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serve_imports import FORBIDDEN, WORKER_ALLOWED
from test_server_robustness import Worker, bundle_for

pytestmark = pytest.mark.integration


# Runs the worker exactly as ``python -m zerostart.serve`` does, and prints sys.modules at
# exit: after start-up, a request and a SIGTERM drain, so lazy imports count too.
WRAPPER = """
import atexit, json, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
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
