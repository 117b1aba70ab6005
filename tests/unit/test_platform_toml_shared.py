"""One platform.toml, every key: ``zerostart up --check`` and ``zerostart deploy`` both take it.

The per-model keys and defaults live in platform_toml.py; deploy reads the models
through it and adds only its own keys (cpu, memory, gpu_archs, pool, [deploy]).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from zerostart.cli import main
from zerostart.fleet.config import load_platform
from zerostart.image.layers import Entry, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout
from zerostart.platform_toml import ModelConfig, load

pytest.importorskip("ortools", reason="pool.sizing = 'lp' needs the fleet extra (OR-Tools)")

DIGEST = "sha256:" + "cd" * 32
FLEET = Path(__file__).resolve().parents[2] / "bench" / "fleet.toml"
EVERY_KEY = f"""
[gateway]
host = "127.0.0.1"
port = 8080
api_key_env = "ZS_TEST_KEY"
max_body_bytes = 1048576
max_header_bytes = 16384
max_connections = 100
header_timeout = 10
body_timeout = 10
keepalive_timeout = "75s"
upstream_timeout = 60
drain_timeout = 30

[autoscaler]
stable_window = "1m"
panic_window_percentage = 10.0
panic_threshold_percentage = 200.0
target_utilization = 0.7
max_scale_up_rate = 1000.0
max_scale_down_rate = 2.0
tick = 0.5

[pool]
cpu = 2
cuda = 1
sizing = "lp"
resolve_interval = "30s"
demand_window = "5m"
wait_penalty = 0.02
cpu_cost_per_hour = 0.04
cuda_cost_per_hour = 0.8

[models.minilm]
reference = "registry.example.com/zs/minilm@{DIGEST}"
min_replicas = 0
max_replicas = 8
concurrency = 16
idle_timeout = "2m"
max_queue = 100
queue_timeout = 30
start_timeout = 60
device = "cpu"
api_key = "model-key"
cpu = "500m"
memory = "512Mi"
pool = "cpu"

[models.ner-gpu]
image = "images/ner"
device = "cuda"
gpu_archs = ["sm_89", "sm_90"]
pool = "gpu-l4"

[deploy]
namespace = "models"
registry = "registry.example.com/zs"
port = 8080
kubernetes_version = "1.33"
"""


@pytest.fixture
def platform(tmp_path: Path) -> Path:
    # a real (tiny) OCI layout: `up --check` reads and verifies every model's image
    layer = write_layer("app", [Entry("/bin/app", "file", data=b"#!/bin/sh\n")], tmp_path)
    write_oci_layout(
        tmp_path / "images" / "ner", ImageConfig(entrypoint=("/bin/app",)), [layer], {}
    )
    path = tmp_path / "platform.toml"
    path.write_text(EVERY_KEY)
    return path


def test_up_and_deploy_accept_the_same_file(
    platform: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZS_TEST_KEY", "gateway-key")
    assert main(["up", "--check", str(platform)]) == 0
    assert "2 model(s)" in capsys.readouterr().out
    out = tmp_path / "deploy"
    assert main(["deploy", "knative", str(platform), "-o", str(out), "--fleet", str(FLEET)]) == 0
    assert any(out.iterdir())


def test_deploy_sees_up_s_models_plus_its_own_keys(
    platform: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZS_TEST_KEY", "gateway-key")
    up = load(platform)
    monkeypatch.delenv("ZS_TEST_KEY")  # deploy never reads keys
    deploy = load_platform(platform)
    for name, m in up.models.items():
        d = deploy.models[name]
        assert {f.name: getattr(d, f.name) for f in fields(ModelConfig)} == {
            f.name: getattr(m, f.name) for f in fields(ModelConfig)
        } | {"api_key": d.api_key}
    assert up.models["minilm"].idle_timeout_s == 120.0 == deploy.models["minilm"].idle_timeout_s
    assert (deploy.models["minilm"].cpu, deploy.models["minilm"].memory) == ("500m", "512Mi")
    assert deploy.models["ner-gpu"].gpu_archs == ("sm_89", "sm_90")
    assert up.pool.sizing == "lp" and up.pool.cuda_cost_per_hour == 0.8
    assert deploy.deploy.namespace == "models"
    # one set of defaults: a model with only its source reads the same in both
    bare = ModelConfig(name="x", source="s")
    assert {f.name: getattr(deploy.models["ner-gpu"], f.name) for f in fields(ModelConfig)
            if f.name not in ("name", "source", "source_kind", "device")} == {
        f.name: getattr(bare, f.name) for f in fields(ModelConfig)
        if f.name not in ("name", "source", "source_kind", "device")}  # fmt: skip
