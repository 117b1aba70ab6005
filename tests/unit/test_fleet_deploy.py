"""Manifests valid against the Kubernetes and Knative schemas; bad config refused before writing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from zerostart.cli import main
from zerostart.fleet.config import load_fleet, load_platform
from zerostart.fleet.deploy import generate, knative_service, validate, write
from zerostart.fleet.errors import FleetConfigError

DIGEST = "sha256:" + "ab" * 32
FLEET = Path(__file__).resolve().parents[2] / "bench" / "fleet.toml"
PLATFORM = f"""
[gateway]
port = 8080

[models.minilm]
reference = "registry.example.com/zs/minilm@{DIGEST}"
max_replicas = 8
concurrency = 16
idle_timeout = 120
memory = "512Mi"
pool = "cpu"

[models.ner-gpu]
reference = "registry.example.com/zs/ner@{DIGEST}"
device = "cuda"
gpu_archs = ["sm_89"]
pool = "gpu-l4"

[models.multi]
image = "images/multi"
device = "cuda"
gpu_archs = ["sm_86", "sm_90"]

[deploy]
namespace = "models"
registry = "registry.example.com/zs"
"""
PLAN = {
    "window_s": 3600,
    "pools": {"cpu": {"slots": [2] * 12 + [5] * 12}, "gpu-l4": {"slots": [1] * 24}},
}


@pytest.fixture
def platform(tmp_path: Path) -> Path:
    layout = tmp_path / "images" / "multi"
    layout.mkdir(parents=True)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 1}]}))  # fmt: skip
    path = tmp_path / "platform.toml"
    path.write_text(PLATFORM)
    return path


@pytest.mark.parametrize("target", ["knative", "kubernetes"])
def test_manifests_are_valid_and_carry_the_config(platform: Path, target: str) -> None:
    plat, fleet = load_platform(platform), load_fleet(FLEET)
    files = generate(target, plat, fleet, PLAN)
    objs = [o for v in files.values() for o in v]
    assert all(validate(o, "1.33") == [] for o in objs)
    kinds = sorted(o["kind"] for o in objs)
    if target == "knative":
        assert kinds == [
            "Deployment",
            "Deployment",
            "PriorityClass",
            "Service",
            "Service",
            "Service",
        ]
        svc = files["minilm.yaml"][0]
        tmpl = svc["spec"]["template"]
        ann = tmpl["metadata"]["annotations"]
        assert ann["autoscaling.knative.dev/min-scale"] == "0"
        assert ann["autoscaling.knative.dev/max-scale"] == "8"
        assert ann["autoscaling.knative.dev/window"] == "120s"
        assert tmpl["spec"]["containerConcurrency"] == 16
        c = tmpl["spec"]["containers"][0]
        assert c["image"].endswith("@" + DIGEST)
        assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        assert tmpl["spec"]["nodeSelector"] == {"zerostart.dev/pool": "cpu"}
        gpu = files["ner-gpu.yaml"][0]["spec"]["template"]["spec"]
        assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert gpu["nodeSelector"]["nvidia.com/gpu.compute.major"] == "8"
        assert gpu["nodeSelector"]["nvidia.com/gpu.compute.minor"] == "9"
        multi = files["multi.yaml"][0]["spec"]["template"]["spec"]
        assert multi["containers"][0]["image"] == f"registry.example.com/zs/multi@{DIGEST}"
        terms = multi["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert len(terms["nodeSelectorTerms"]) == 2
    else:
        assert kinds.count("HorizontalPodAutoscaler") == 3
    buffer = {o["metadata"]["name"]: o for o in files["buffer.yaml"]}
    assert buffer["zerostart-buffer"]["value"] < 0
    cpu = buffer["zerostart-buffer-cpu"]
    assert cpu["spec"]["replicas"] == 5  # the plan's peak
    assert cpu["spec"]["template"]["spec"]["priorityClassName"] == "zerostart-buffer"
    assert "12:00=5" in cpu["metadata"]["annotations"]["zerostart.dev/buffer-schedule"]
    gpu_buf = buffer["zerostart-buffer-gpu-l4"]["spec"]["template"]["spec"]
    assert gpu_buf["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_the_validators_catch_mistakes(platform: Path) -> None:
    """The schemas are not vacuous: a misspelt Knative field and a wrong Kubernetes type fail."""
    plat, fleet = load_platform(platform), load_fleet(FLEET)
    good = knative_service(plat.models["minilm"], plat, fleet)
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containerConcurency"] = 4
    assert any("containerConcurency" in e for e in validate(typo, "1.33"))
    wrong = copy.deepcopy(good)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    assert validate(wrong, "1.33")
    misplaced = copy.deepcopy(good)  # a field Knative's CRD allows nowhere in the template
    misplaced["spec"]["template"]["spec"]["hostPort"] = 80
    assert validate(misplaced, "1.33")


def test_written_files_are_yaml_without_aliases(platform: Path, tmp_path: Path) -> None:
    import yaml

    plat, fleet = load_platform(platform), load_fleet(FLEET)
    paths = write(generate("knative", plat, fleet, PLAN), tmp_path / "out")
    text = (tmp_path / "out" / "buffer.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert [o["kind"] for o in yaml.safe_load_all(text)] == [
        "PriorityClass",
        "Deployment",
        "Deployment",
    ]
    assert len(paths) == 4


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("max_replicas = 8", "max_replicas = 8\nmax_replicaz = 3"), "models.minilm.max_replicaz"),
        (('device = "cuda"\ngpu_archs = ["sm_89"]', 'device = "tpu"'), "models.ner-gpu.device"),
        (("max_replicas = 8", "max_replicas = 8\nmin_replicas = 9"), "models.minilm.min_replicas"),
        (
            (f'reference = "registry.example.com/zs/minilm@{DIGEST}"', 'bundle = "bundles/minilm"'),
            "models.minilm.bundle",
        ),
        ((f"minilm@{DIGEST}", "minilm:latest"), "models.minilm.reference"),
        (('gpu_archs = ["sm_89"]\n', ""), "models.ner-gpu.gpu_archs"),
        (('gpu_archs = ["sm_89"]', 'gpu_archs = ["ampere"]'), "models.ner-gpu.gpu_archs"),
        (("idle_timeout = 120", 'idle_timeout = "soon"'), "models.minilm.idle_timeout"),
        (('memory = "512Mi"', 'memory = "lots"'), "models.minilm.memory"),
        (('pool = "cpu"', 'pool = "tpu-v5"'), "models.minilm.pool"),
        (('namespace = "models"', 'namespace = "Models!"'), "deploy.namespace"),
        (('registry = "registry.example.com/zs"\n', ""), "deploy.registry"),
        (("[models.minilm]", "[models.MiniLM]"), "models.MiniLM"),
        (("port = 8080", "port = [8080"), "not valid TOML"),
    ],
)
def test_bad_platform_toml_is_refused_before_anything_is_written(
    platform: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    key: str,
) -> None:
    old, new = change
    text = platform.read_text()
    assert old in text
    platform.write_text(text.replace(old, new, 1))
    out = tmp_path / "deploy-out"
    code = main(["deploy", "knative", str(platform), "-o", str(out), "--fleet", str(FLEET)])
    assert code == 1
    assert key in capsys.readouterr().err
    assert not out.exists()


def test_bad_fleet_toml_names_the_key(tmp_path: Path) -> None:
    text = FLEET.read_text()
    for old, new, key in [
        ("cost_per_hour = 0.04", "cost_per_hour = -1", "pools.cpu.cost_per_hour"),
        ('default_pool = "cpu"', 'default_pool = "tpu"', "routing.default_pool"),
        ('window = "1h"', 'window = "7m"', "plan.window"),
        ('allocation_time = "60s"', 'allocation_time = "a minute"', "pools.cpu.allocation_time"),
        ("slots_per_machine = 8", "slots_per_machine = 8\nslots = 3", "pools.cpu.slots"),
    ]:
        path = tmp_path / "fleet.toml"
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(FleetConfigError, match=key.replace(".", r"\.")):
            load_fleet(path)


def test_the_fleet_and_the_node_name_the_start_paths_alike(tmp_path: Path) -> None:
    """fleet.toml's plan.start_path takes the node's start paths, in the node's order (fastest first)."""
    from zerostart.platform import starter
    from zerostart.platform_toml import START_PATHS

    assert START_PATHS == ("snapshot", "warm_slot", "cold_boot")
    assert (
        starter.__doc__
        and "fastest first: snapshot restore, warm slot, cold boot" in starter.__doc__
    )
    path = tmp_path / "fleet.toml"
    for name in START_PATHS:
        path.write_text(
            FLEET.read_text().replace('start_path = "warm_slot"', f'start_path = "{name}"')
        )
        assert load_fleet(path).start_path == name
    path.write_text(
        FLEET.read_text().replace('start_path = "warm_slot"', 'start_path = "warm-slot"')
    )
    with pytest.raises(FleetConfigError, match="must be one of snapshot, warm_slot, cold_boot"):
        load_fleet(path)
