"""The real worker, on a real bundle, imports only the pinned modules (request path included)."""

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


def test_worker_imports_only_pinned_modules(request: pytest.FixtureRequest) -> None:
    bundle = bundle_for(request, "sst2_bundle")
    with Worker(bundle, entry=["-c", WRAPPER]) as w:
        status, _ = w.request("POST", "/predict", {"inputs": "a good movie"})
        assert status == 200
        w.terminate()
        assert w.wait() == 0
    found = re.search(r"^MODULES (.*)$", w.stderr_text(), re.M)
    assert found, w.stderr_text()
    top = {name.split(".")[0] for name in json.loads(found.group(1))}
    assert {"zerostart", "numpy", "httptools"} <= top
    assert not top & FORBIDDEN
    unexpected = top - WORKER_ALLOWED - {"runpy"}  # runpy: -m uses it too
    assert not unexpected, f"new imports on the worker path: {sorted(unexpected)}"
