"""One limits object from the worker's config to request parsing, the batcher and the engine.

Observed through a real worker (``python -m zerostart.serve``) on a real bundle:
``/info`` says what the engine runs with, and ``/metrics`` counts the engine's
forward calls (``zerostart_engine_calls_total``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from platform_helpers import metric
from test_server_robustness import Worker

pytestmark = pytest.mark.integration


def engine_calls(w: Worker) -> float:
    code, body = w.request("GET", "/metrics")
    assert code == 200
    return metric(body.decode(), "zerostart_engine_calls_total")


def test_a_64_sequence_batch_is_one_engine_call(embed_bundle: Path) -> None:
    # Before: /info said max_batch_requests 64 but max_batch_sequences 32, and the
    # 64 inputs ran as two engine calls of 32 (Pipeline.load never got the setting).
    with Worker(embed_bundle, "--max-batch-size", "64", "--max-client-batch-size", "64") as w:
        code, info = w.request("GET", "/info")
        assert code == 200
        assert info["max_batch_requests"] == 64
        assert info["max_batch_sequences"] == 64
        assert info["max_client_batch_size"] == 64
        before = engine_calls(w)
        code, vectors = w.request("POST", "/embed", {"inputs": [f"text {i}" for i in range(64)]})
        assert code == 200 and len(vectors) == 64
        assert engine_calls(w) - before == 1
        # request parsing got the same object: 65 inputs are over the client batch limit
        code, body = w.request("POST", "/embed", {"inputs": ["x"] * 65})
        assert code in (413, 422), body
        w.terminate()
        assert w.wait() == 0


def test_the_default_limits_still_split_a_64_input_job_in_two(embed_bundle: Path) -> None:
    # The counter is not constant: with 32 sequences per call, 64 inputs take two calls.
    with Worker(embed_bundle, "--max-client-batch-size", "64") as w:
        code, info = w.request("GET", "/info")
        assert info["max_batch_sequences"] == 32 == info["max_batch_requests"]
        before = engine_calls(w)
        code, vectors = w.request("POST", "/embed", {"inputs": [f"text {i}" for i in range(64)]})
        assert code == 200 and len(vectors) == 64
        assert engine_calls(w) - before == 2
