"""A `hey` load run through the gateway: 10,000 requests over three models at mixed rates.

All three models start at zero, so the run includes their cold starts (the
first requests queue behind them). Passes with zero errors and zero non-200
answers, and with every replica stopped afterwards. Skips where `hey` (the
Debian package) is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from platform_helpers import Gateway, alive, metric, wait_until

pytestmark = pytest.mark.integration

HEY = shutil.which("hey")
# (model, route, requests, workers, per-worker rate limit in QPS; 0: none)
PLAN = [
    ("sst2", "predict", 5000, 8, 0),
    ("embed", "embed", 3000, 4, 60),
    ("ner", "tokens", 2000, 2, 80),
]


def hey(
    port: int, model: str, route: str, n: int, c: int, q: int, key: str
) -> subprocess.Popen[str]:
    body = json.dumps({"inputs": f"My name is Clara and I live in Paris; {model} is great."})
    cmd = [HEY or "hey", "-n", str(n), "-c", str(c), "-m", "POST", "-T", "application/json"]
    cmd += ["-d", body, "-t", "60", "-H", f"Authorization: Bearer {key}"]
    if q:
        cmd += ["-q", str(q)]
    cmd.append(f"http://127.0.0.1:{port}/models/{model}/{route}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(HEY is None, reason="hey is not installed (apt-get install hey)")
def test_ten_thousand_requests_over_three_models_without_an_error(
    tmp_path: Path, sst2_bundle: Path, embed_bundle: Path, ner_bundle: Path
) -> None:
    toml = '[gateway]\napi_key = "load-key"\n[autoscaler]\ntick = 0.2\n[pool]\ncpu = 0\n'
    for name, bundle in (("sst2", sst2_bundle), ("embed", embed_bundle), ("ner", ner_bundle)):
        toml += f'[models.{name}]\nbundle = "{bundle}"\nmax_replicas = 2\n'
    # One BLAS thread per worker: three models' replicas share two cores, and OpenBLAS's
    # spinning threads would otherwise starve each other (bench/platform_start.py measured it).
    blas = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    gw = Gateway(tmp_path, toml, env=blas, api_key="load-key")
    try:
        runs = [hey(gw.port, m, r, n, c, q, "load-key") for m, r, n, c, q in PLAN]
        outputs = [p.communicate(timeout=1800)[0] for p in runs]
        total = 0
        for (model, _, n, _, _), out in zip(PLAN, outputs, strict=True):
            codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
            assert codes == {"200": str(n)}, f"{model}: {out}"
            assert "Error distribution" not in out, f"{model}: {out}"
            total += n
        assert total == 10_000
        m = gw.metrics()
        assert metric(m, "zerostart_gateway_requests_total", status="200") == 10_000
        # busy replicas are not mistaken for hung ones (liveness.py): none was replaced
        assert metric(m, "zerostart_gateway_replicas_replaced_total") == 0
        status = gw.status()["models"]
        for model, *_ in PLAN:
            assert 1 <= sum(status[model]["cold_starts"].values()) <= 2  # max_replicas
        pids = gw.children()
    finally:
        code = gw.stop()
    assert code == 0, gw.stderr()
    assert wait_until(lambda: not any(alive(p) for p in pids), 5.0)
