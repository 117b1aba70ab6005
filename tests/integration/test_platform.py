"""The gateway with real workers on loopback: scale from zero, bursts, failures, shutdown.

Every test runs ``zerostart up`` in a subprocess with real bundles (converted
from the real model folders by tests/conftest.py) and talks HTTP to it.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import SRC, Gateway, alive, metric, wait_until

pytestmark = pytest.mark.integration

TEXTS = [
    f"review {i}: {w}"
    for i, w in enumerate(["a wonderful film", "dull and slow", "fine", "superb", "awful"])
]


def reference_answers(bundle: Path, route: str) -> dict[str, Any]:
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle)
    out = {}
    for text in TEXTS:
        job = pipe.prepare(route, {"inputs": text})
        out[text] = job.finish(pipe.execute(job.encodings))
    return out


def same(a: Any, b: Any, tol: float = 1e-5) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), abs_tol=tol)
    return bool(a == b)


def model_toml(name: str, bundle: Path, **keys: Any) -> str:
    lines = [f"[models.{name}]", f'bundle = "{bundle}"']
    for k, v in keys.items():
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    return "\n".join(lines) + "\n"


# No warm pool: these tests pin cold boots (the pool's own gateway test is in
# test_platform_pool.py).
GATEWAY = "[autoscaler]\ntick = 0.1\n[pool]\ncpu = 0\n"


@pytest.fixture
def gateways() -> Any:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.stop()


def test_burst_of_200_at_zero_gets_one_start_and_200_correct_answers(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    expected = reference_answers(sst2_bundle, "predict")
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle, max_replicas=1))
    gateways.append(gw)
    assert gw.status()["models"]["sst2"]["state"] == "zero"
    barrier = threading.Barrier(200)

    def call(i: int) -> tuple[int, dict[str, str], Any, str]:
        text = TEXTS[i % len(TEXTS)]
        barrier.wait()
        code, headers, body = gw.request("POST", "/models/sst2/predict", {"inputs": text})
        return code, headers, body, text

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(call, range(200)))
    bad = [(c, b) for c, _, b, t in results if c != 200 or not same(b, expected[t])]
    assert not bad, bad[:3]
    status = gw.status()["models"]["sst2"]
    assert status["cold_starts"] == {"cold_boot": 1}
    m = gw.metrics()
    assert metric(m, "zerostart_gateway_cold_starts_total", model="sst2") == 1
    assert metric(m, "zerostart_gateway_scale_events_total", model="sst2", reason="activate") == 1
    cold = [h["zerostart-cold-start"] for _, h, _, _ in results]
    assert any(c.startswith("cold_boot;wait_ms=") for c in cold), cold[:3]
    waited = [float(c.split("wait_ms=")[1].split(";")[0]) for c in cold if c != "none"]
    assert all(w > 0 for w in waited)
    assert "queue;dur=" in results[0][1]["server-timing"]


def test_scale_to_zero_is_timed_from_the_last_request(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle, idle_timeout=1.0))
    gateways.append(gw)
    assert gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})[0] == 200
    pid = gw.status()["models"]["sst2"]["replicas"][0]["pid"]
    # keep calling for longer than idle_timeout: the replica must stay (no second start)
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        code, headers, _ = gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})
        last = time.monotonic()
        assert code == 200 and headers["zerostart-cold-start"] == "none"
        time.sleep(0.3)
    status = gw.status()["models"]["sst2"]
    assert [r["pid"] for r in status["replicas"]] == [pid]
    assert wait_until(lambda: gw.status()["models"]["sst2"]["state"] == "zero", 5.0)
    assert time.monotonic() - last >= 0.9, gw.stderr()  # not before idle_timeout
    assert wait_until(lambda: not alive(pid), 5.0), "the scaled-down replica still runs"
    assert "event=scale_down" in gw.stderr() and "reason=idle" in gw.stderr()
    # and back from zero
    code, headers, _ = gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})
    assert code == 200 and headers["zerostart-cold-start"].startswith("cold_boot")


def test_min_replicas_start_at_boot_and_never_go_to_zero(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    gw = Gateway(
        tmp_path, GATEWAY + model_toml("sst2", sst2_bundle, min_replicas=1, idle_timeout=0.2)
    )
    gateways.append(gw)
    assert wait_until(lambda: gw.status()["models"]["sst2"]["state"] == "ready", 30.0)
    time.sleep(1.0)
    assert len(gw.status()["models"]["sst2"]["replicas"]) == 1
    code, headers, _ = gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})
    assert code == 200 and headers["zerostart-cold-start"] == "none"


def test_replica_killed_mid_request_is_replaced_and_its_requests_retried(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    expected = reference_answers(sst2_bundle, "predict")
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle, max_replicas=1))
    gateways.append(gw)
    assert gw.request("POST", "/models/sst2/predict", {"inputs": TEXTS[0]})[0] == 200
    pid = gw.status()["models"]["sst2"]["replicas"][0]["pid"]
    stop = threading.Event()
    results: list[tuple[int, Any, str]] = []

    def loop(k: int) -> None:
        i = k
        while not stop.is_set():
            text = TEXTS[i % len(TEXTS)]
            try:
                code, _, body = gw.request(
                    "POST", "/models/sst2/predict", {"inputs": text}, timeout_s=30.0
                )
            except OSError as exc:  # no answer at all is a failure too, not a lost thread
                code, body = -1, repr(exc)
            results.append((code, body, text))
            i += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(results) >= 10, 30.0)
    os.kill(pid, signal.SIGKILL)
    killed_at = len(results)
    # keep calling until the replacement has answered plenty
    assert wait_until(lambda: len(results) >= killed_at + 40, 60.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request got no answer within 60 s"
    bad = [(c, b) for c, b, t in results if c != 200 or not same(b, expected[t])]
    assert not bad, f"{bad[:3]}\n--- gateway log ---\n{gw.stderr()[-4000:]}"
    m = gw.metrics()
    assert metric(m, "zerostart_gateway_replica_deaths_total", model="sst2") == 1
    assert metric(m, "zerostart_gateway_cold_starts_total", model="sst2") == 2
    replicas = gw.status()["models"]["sst2"]["replicas"]
    assert len(replicas) == 1 and replicas[0]["pid"] != pid
    assert "event=replica_failed" in gw.stderr()


def test_corrupt_bundle_gets_a_clear_5xx_and_other_models_keep_serving(
    tmp_path: Path, sst2_bundle: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sst2_bundle, broken)
    toml = GATEWAY + model_toml("broken", broken) + model_toml("embed", embed_bundle)
    gw = Gateway(tmp_path, toml)  # `up` checks every bundle: damage it once it serves
    gateways.append(gw)
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, body = gw.request("POST", "/models/broken/predict", {"inputs": "hi"})
    assert code == 502, body
    assert "broken" in body["error"] and "weights.safetensors" in body["error"], body
    assert body["error_type"] == "StartFailed"
    # the server's paths stay in its log, out of the answer
    assert str(tmp_path) not in body["error"] and str(weights) in gw.stderr(), body
    # within the back-off a second request fails at once, without a new start
    t0 = time.perf_counter()
    code2, headers2, body2 = gw.request("POST", "/models/broken/predict", {"inputs": "hi"})
    assert code2 == 502 and time.perf_counter() - t0 < 0.2 and "retry-after" in headers2
    assert "broken" in body2["error"]
    code, _, vectors = gw.request("POST", "/models/embed/embed", {"inputs": "hi"})
    assert code == 200 and len(vectors[0]) == 384
    status = gw.status()["models"]
    assert status["broken"]["state"] == "failed" and "weights" in status["broken"]["last_error"]
    assert str(tmp_path) not in status["broken"]["last_error"]
    assert status["embed"]["state"] == "ready"
    # one start per request that found no back-off, never one per tick
    assert metric(gw.metrics(), "zerostart_gateway_start_failures_total", model="broken") == 1
    time.sleep(1.5)  # past the first back-off: the autoscaler does not retry on its own
    assert metric(gw.metrics(), "zerostart_gateway_start_failures_total", model="broken") == 1


def test_sigterm_drains_queued_requests_and_leaves_no_orphans(
    tmp_path: Path, sst2_bundle: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    toml = (
        GATEWAY
        + model_toml("sst2", sst2_bundle)
        + model_toml("embed", embed_bundle, min_replicas=1)
    )
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    assert wait_until(lambda: gw.status()["models"]["embed"]["state"] == "ready", 30.0)
    kids_before = gw.children()
    assert len(kids_before) == 1
    # requests queued behind a cold start when SIGTERM arrives still get their answers
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [
            pool.submit(gw.request, "POST", "/models/sst2/predict", {"inputs": "hi"})
            for _ in range(10)
        ]
        assert wait_until(lambda: gw.status()["models"]["sst2"]["queued"] > 0, 5.0, 0.005)
        replicas_pids = gw.children()
        gw.proc.send_signal(signal.SIGTERM)
        codes = [f.result(timeout=60)[0] for f in futures]
    assert codes == [200] * 10
    assert gw.proc.wait(30) == 0
    replicas_pids |= kids_before
    assert len(replicas_pids) >= 2
    assert wait_until(lambda: not any(alive(p) for p in replicas_pids), 5.0), [
        p for p in replicas_pids if alive(p)
    ]
    assert "event=stopped" in gw.stderr()


def test_sigkill_of_the_gateway_leaves_no_orphans(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle, min_replicas=1))
    gateways.append(gw)
    assert wait_until(lambda: gw.status()["models"]["sst2"]["state"] == "ready", 30.0)
    kids = gw.children()
    assert kids
    gw.proc.kill()
    gw.proc.wait()
    assert wait_until(lambda: not any(alive(p) for p in kids), 5.0)


def test_queue_full_answers_429_and_queue_timeout_503(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    toml = GATEWAY + model_toml("sst2", sst2_bundle, max_queue=2, queue_timeout=0.1, max_replicas=1)
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    barrier = threading.Barrier(6)

    def call(_: int) -> tuple[int, dict[str, str], Any]:
        barrier.wait()
        return gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(6)))
    codes = sorted(c for c, _, _ in answers)
    # a cold start takes far longer than 100 ms: two requests queue and time out (503),
    # the others find the queue full (429); all are told when to retry
    assert set(codes) == {429, 503}, codes
    for code, headers, body in answers:
        assert headers.get("retry-after"), (code, headers)
        assert "sst2" in body["error"]
    assert "queue_timeout" in next(b["error"] for c, _, b in answers if c == 503)
    assert "max_queue" in next(b["error"] for c, _, b in answers if c == 429)


def test_host_header_routing_and_unknown_model(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle))
    gateways.append(gw)
    code, _, body = gw.request(
        "POST", "/predict", {"inputs": "hi"}, headers={"host": "sst2.models.example:8080"}
    )
    assert code == 200 and body[0]["label"] in ("POSITIVE", "NEGATIVE")
    code, _, body = gw.request("POST", "/models/nope/predict", {"inputs": "hi"})
    assert code == 404 and "nope" in body["error"] and "sst2" in body["error"]
    code, _, body = gw.request("GET", "/models/sst2/info")
    assert code == 200 and body["task"] == "sequence-classification"
    code, _, body = gw.request("GET", "/elsewhere")
    assert code == 404


def test_bearer_token_auth_global_and_per_model(
    tmp_path: Path, sst2_bundle: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    secret, model_secret = "gw-s3cret-token", "embed-0nly-token"
    toml = (
        '[gateway]\napi_key_env = "TEST_GATEWAY_KEY"\n'
        + GATEWAY
        + model_toml("sst2", sst2_bundle)
        + model_toml("embed", embed_bundle, api_key=model_secret)
    )
    gw = Gateway(tmp_path, toml, env={"TEST_GATEWAY_KEY": secret})  # no key for /status here
    gateways.append(gw)
    body = {"inputs": "hi"}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": secret}):
        code, h, answer = gw.request("POST", "/models/sst2/predict", body, headers=headers)
        assert code == 401 and h["www-authenticate"].startswith("Bearer"), answer
    ok = {"authorization": f"Bearer {secret}"}
    assert gw.request("POST", "/models/sst2/predict", body, headers=ok)[0] == 200
    # the model's own key replaces the gateway's for that model
    assert gw.request("POST", "/models/embed/embed", body, headers=ok)[0] == 401
    own = {"authorization": f"Bearer {model_secret}"}
    assert gw.request("POST", "/models/embed/embed", body, headers=own)[0] == 200
    assert gw.request("GET", "/status")[0] == 401
    assert gw.request("GET", "/metrics")[0] == 401
    assert gw.request("GET", "/status", headers=ok)[0] == 200
    assert gw.request("GET", "/health")[0] == 200
    assert secret not in gw.stderr() and model_secret not in gw.stderr()
    assert secret not in str(gw.request("GET", "/status", headers=ok)[2])


def test_a_bad_config_is_refused_naming_the_key(tmp_path: Path, sst2_bundle: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "platform.toml"
    bad.write_text(model_toml("sst2", sst2_bundle, max_replicas=0))
    proc = subprocess.run(
        [sys.executable, "-m", "zerostart.cli", "up", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert proc.returncode == 1
    assert "models.sst2.max_replicas" in proc.stderr and "Traceback" not in proc.stderr


def _up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerostart.cli", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def test_up_checks_every_model_source_at_check_and_at_start(
    tmp_path: Path, sst2_bundle: Path
) -> None:
    """Before: `--check` said ok for a bundle that does not exist (the first request got a
    502), and a symlink loop crashed both with `RuntimeError: Symlink loop`."""
    damaged = tmp_path / "damaged"
    shutil.copytree(sst2_bundle, damaged)
    (damaged / "vocab.txt").write_text("changed\n")
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    (tmp_path / "not-a-bundle").mkdir()
    cases = {
        "good": (sst2_bundle, "ok: bundle bert sequence-classification"),
        "missing": (tmp_path / "no-such-folder", "does not exist"),
        "loop": (tmp_path / "loop-a", "symlink loop"),
        "damaged": (damaged, "vocab.txt: size is"),
        "empty": (tmp_path / "not-a-bundle", "not a zerostart bundle"),
    }
    good = tmp_path / "good.toml"
    good.write_text(GATEWAY + model_toml("good", sst2_bundle))
    ok = _up(str(good), "--check")
    assert ok.returncode == 0 and "models.good.bundle: ok" in ok.stdout, ok.stderr
    for name, (bundle, says) in cases.items():
        if name == "good":
            continue
        config = tmp_path / f"{name}.toml"
        config.write_text(GATEWAY + model_toml("good", sst2_bundle) + model_toml(name, bundle))
        check = _up(str(config), "--check")
        assert check.returncode == 1, (name, check.stdout, check.stderr)
        assert f"models.{name}.bundle: error:" in check.stderr and says in check.stderr, name
        assert "models.good.bundle: ok" in check.stdout and "Traceback" not in check.stderr
        start = _up(str(config), "--port", "0")  # refused before it listens
        assert start.returncode == 1 and says in start.stderr, (name, start.stderr)
        assert f"models.{name}.bundle" in start.stderr and "Traceback" not in start.stderr


def test_worker_accepts_teis_api_key_and_the_gateway_sends_its_own(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    import http.client
    import re
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(SRC), "API_KEY": "w-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerostart.serve", str(sst2_bundle), "--port", "0"],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for raw in proc.stderr:
            if m := re.search(rb"ready on http://127\.0\.0\.1:(\d+)", raw):
                port = int(m.group(1))
                break
        assert port

        def call(path: str, headers: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = b'{"inputs": "hi"}' if path == "/predict" else None
            conn.request("POST" if body else "GET", path, body=body, headers=headers)
            status = conn.getresponse().status
            conn.close()
            return status

        assert call("/predict", {}) == 401
        assert call("/predict", {"authorization": "Bearer nope"}) == 401
        assert call("/info", {}) == 401
        assert call("/health", {}) == 200  # probes need no key
        assert call("/predict", {"authorization": "Bearer w-key"}) == 200
    finally:
        proc.terminate()
        proc.wait(30)
    # behind the gateway, a replica refuses callers that bypass the gateway
    gw = Gateway(tmp_path, GATEWAY + model_toml("sst2", sst2_bundle))
    gateways.append(gw)
    assert gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})[0] == 200
    replica_port = gw.status()["models"]["sst2"]["replicas"][0]["port"]
    conn = http.client.HTTPConnection("127.0.0.1", replica_port, timeout=30)
    conn.request("POST", "/predict", body=b'{"inputs": "hi"}')
    assert conn.getresponse().status == 401
    conn.close()


def test_a_long_answer_is_streamed_through_a_small_body_limit(
    tmp_path: Path, embed_bundle: Path, gateways: list[Gateway]
) -> None:
    from zerostart.pipeline import Pipeline

    texts = [f"sentence number {i} about streaming bodies" for i in range(32)]
    pipe = Pipeline.load(embed_bundle)
    job = pipe.prepare("embed", {"inputs": texts})
    expected = job.finish(pipe.execute(job.encodings))
    # 64 KiB: the gateway may not hold the ~250 KB answer, so it must stream it
    toml = "[gateway]\nmax_body_bytes = 65536\n" + GATEWAY + model_toml("embed", embed_bundle)
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    for _ in range(3):  # the connection to the replica is reused after a streamed body
        code, headers, body = gw.request("POST", "/models/embed/embed", {"inputs": texts})
        assert code == 200, body
        assert int(headers["content-length"]) > 65536
        assert same(body, expected)
    assert gw.status()["models"]["embed"]["in_flight"] == 0  # the seat was given back


def test_sigterm_stops_warm_slots_and_their_replicas_too(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    toml = "[autoscaler]\ntick = 0.1\n[pool]\ncpu = 2\n" + model_toml("sst2", sst2_bundle)
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)  # stopped there too if an assertion fails first

    def slots_ready() -> bool:
        pool = gw.status().get("starter", {}).get("pool") or {}
        return bool(pool.get("cpu", {}).get("ready", 0) >= 2)

    assert wait_until(slots_ready, 60.0)
    code, headers, _ = gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})
    assert code == 200 and headers["zerostart-cold-start"].startswith("warm_slot")
    assert wait_until(slots_ready, 60.0)  # refilled: one replica and two idle slots
    kids = gw.children()
    assert len(kids) >= 3, kids
    assert gw.stop() == 0, gw.stderr()
    assert wait_until(lambda: not any(alive(p) for p in kids), 10.0), [p for p in kids if alive(p)]


def test_sustained_load_scales_up_in_panic_and_back_down_to_zero(
    tmp_path: Path, sst2_bundle: Path, gateways: list[Gateway]
) -> None:
    # concurrency 2 per replica (target 1.4): 12 callers in a loop need more than one
    toml = GATEWAY + model_toml(
        "sst2", sst2_bundle, concurrency=2, max_replicas=3, idle_timeout=1.0
    )
    gw = Gateway(tmp_path, toml)
    gateways.append(gw)
    stop = threading.Event()
    codes: list[int] = []

    def loop() -> None:
        while not stop.is_set():
            codes.append(gw.request("POST", "/models/sst2/predict", {"inputs": "hi"})[0])

    threads = [threading.Thread(target=loop) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(gw.status()["models"]["sst2"]["replicas"]) == 3, 60.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert codes and set(codes) == {200}
    # panic mode wanted more than max_replicas at once: the event says "max", and "panic=yes"
    assert re.search(r"event=scale_up from=1 to=3 reason=(panic|max) panic=yes", gw.stderr())
    m = gw.metrics()
    ups = [
        metric(m, "zerostart_gateway_scale_events_total", direction="up", reason=r)
        for r in ("panic", "max")
    ]
    assert sum(ups) >= 1
    assert wait_until(lambda: gw.status()["models"]["sst2"]["state"] == "zero", 30.0)
    assert metric(gw.metrics(), "zerostart_gateway_scale_events_total", reason="idle") >= 1
