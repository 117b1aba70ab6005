"""Kubernetes and Knative manifests from ``platform.toml`` (and the buffer from the LP's plan).

``knative``: per model a Knative ``Service`` (serving.knative.dev/v1): the image by digest,
scale bounds and the scale-to-zero window as ``autoscaling.knative.dev/*`` annotations,
``containerConcurrency``, readiness and liveness probes on the worker's ``/health``, CPU and
memory, and for GPU models ``nvidia.com/gpu`` with a node selector on the GPU generations
the bundle has kernels for (NVIDIA GPU Feature Discovery's ``nvidia.com/gpu.compute.major``
and ``.minor`` labels). ``kubernetes``: per model a ``Deployment``, a ``Service`` and an
``autoscaling/v2`` ``HorizontalPodAutoscaler`` (no scale to zero: plain Kubernetes cannot).

The buffer: the cluster-autoscaler's overprovisioning pattern. A ``PriorityClass`` below
every real pod (value -10, never preempting) and per node pool a ``Deployment`` of pause
pods, one slot's resources each, as many as the LP's plan holds; a real pod preempts them at
once and the cluster autoscaler adds a node for the evicted placeholders.

Every object is validated before any file is written: core objects with kubernetes-validate
(the Kubernetes OpenAPI schemas, strict), Knative Services with the schema derived from
Knative's published CRD (``schemas/knative-service-v1.json``; tools/knative_schema.py says
how), their pod spec again as a Kubernetes ``PodSpec``.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from zerostart.fleet.config import FleetConfig, ModelDeploy, PlatformDeploy, PoolSpec
from zerostart.fleet.errors import DeployError, FleetConfigError

BUFFER_PRIORITY = "zerostart-buffer"
BUFFER_PRIORITY_VALUE = -10  # below the default 0 of every pod without a class
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # what the cluster-autoscaler FAQ's example runs
TARGET_UTILIZATION_PCT = 70  # Knative's container-concurrency-target-percentage default
KNATIVE_WINDOW_S = (6, 3600)  # autoscaling.knative.dev/window bounds (Knative docs)
KNATIVE_ONLY = (
    "containerConcurrency",
    "timeoutSeconds",
    "idleTimeoutSeconds",
    "responseStartTimeoutSeconds",
)


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "zerostart"}


def image_ref(model: ModelDeploy, plat: PlatformDeploy) -> str:
    """The model's image by digest; raises :class:`FleetConfigError` naming the fix."""
    key = f"models.{model.name}.{model.source_kind}"
    if model.source_kind == "bundle":
        raise FleetConfigError(plat.path, key, "a cluster runs images, not bundle folders",
                               hint="`zerostart build BUNDLE -o IMAGE`, push it, then set image = or reference =")  # fmt: skip
    if model.source_kind == "reference":
        if "@sha256:" not in model.source:
            raise FleetConfigError(plat.path, key, f"{model.source!r} has no digest",
                                   hint="name the image by digest, REPO@sha256:..., as `zerostart push` prints it")  # fmt: skip
        return model.source
    folder, _, tag = model.source.partition(":")
    layout = (plat.path.parent / folder).resolve()
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise FleetConfigError(plat.path, key, f"no OCI layout at {folder}: {exc}") from None
    manifests = index.get("manifests", [])
    if tag:
        manifests = [m for m in manifests
                     if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]  # fmt: skip
    if not manifests:
        raise FleetConfigError(
            plat.path, key, f"no image{' tagged ' + tag if tag else ''} in {folder}"
        )
    if not plat.deploy.registry:
        raise FleetConfigError(plat.path, "deploy.registry", "an OCI layout needs the registry it was pushed to",
                               hint="set [deploy] registry = 'registry.example.com/team'")  # fmt: skip
    return f"{plat.deploy.registry.rstrip('/')}/{model.name}@{manifests[0]['digest']}"


def _gpu_placement(
    model: ModelDeploy, plat: PlatformDeploy
) -> tuple[dict[str, str], dict[str, Any] | None]:
    if model.device != "cuda":
        return {}, None
    if not model.gpu_archs:
        raise FleetConfigError(plat.path, f"models.{model.name}.gpu_archs",
                               "needed for device = 'cuda': the GPU archs the bundle has kernels for",
                               hint="e.g. gpu_archs = ['sm_89'] (what `zerostart convert --arch` was given)")  # fmt: skip
    pairs = sorted(
        {(int(a[3:].rstrip("a")) // 10, int(a[3:].rstrip("a")) % 10) for a in model.gpu_archs}
    )
    if len(pairs) == 1:
        major, minor = pairs[0]
        return {
            "nvidia.com/gpu.compute.major": str(major),
            "nvidia.com/gpu.compute.minor": str(minor),
        }, None
    terms = [
        {"matchExpressions": [
            {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": [str(major)]},
            {"key": "nvidia.com/gpu.compute.minor", "operator": "In", "values": [str(minor)]},
        ]}
        for major, minor in pairs
    ]  # fmt: skip
    return {}, {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }


def _pod_spec(
    model: ModelDeploy, plat: PlatformDeploy, fleet: FleetConfig | None, *, knative: bool
) -> dict[str, Any]:
    port = plat.deploy.port
    requests: dict[str, Any] = {"cpu": model.cpu, "memory": model.memory}
    limits: dict[str, Any] = {"memory": model.memory}
    if model.device == "cuda":
        requests["nvidia.com/gpu"] = 1
        limits["nvidia.com/gpu"] = 1
    probe_get: dict[str, Any] = {
        "path": "/health",
        "port": port,
    }  # Knative: must equal containerPort
    container: dict[str, Any] = {
        "name": "worker",
        "image": image_ref(model, plat),
        "ports": [{"containerPort": port, "name": "http1" if knative else "http"}],
        "readinessProbe": {"httpGet": probe_get, "periodSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": dict(probe_get),
            "periodSeconds": 10,
            "failureThreshold": 3,
            "initialDelaySeconds": math.ceil(model.start_timeout_s),
        },
        "resources": {"requests": requests, "limits": limits},
    }
    selector, affinity = _gpu_placement(model, plat)
    if model.pool is not None:
        if fleet is None or model.pool not in fleet.pools:
            raise FleetConfigError(plat.path, f"models.{model.name}.pool",
                                   f"pool {model.pool!r} is not in the fleet config",
                                   hint="pass --fleet fleet.toml that defines it")  # fmt: skip
        selector = {**fleet.pools[model.pool].node_selector, **selector}
    spec: dict[str, Any] = {"containers": [container]}
    if knative:
        spec["containerConcurrency"] = model.concurrency
    if selector:
        spec["nodeSelector"] = selector
    if affinity:
        spec["affinity"] = affinity
    return spec


def knative_service(
    model: ModelDeploy, plat: PlatformDeploy, fleet: FleetConfig | None = None
) -> dict[str, Any]:
    window = min(max(math.ceil(model.idle_timeout_s), KNATIVE_WINDOW_S[0]), KNATIVE_WINDOW_S[1])
    annotations = {
        "autoscaling.knative.dev/min-scale": str(model.min_replicas),
        "autoscaling.knative.dev/max-scale": str(model.max_replicas),
        "autoscaling.knative.dev/target-utilization-percentage": str(TARGET_UTILIZATION_PCT),
        "autoscaling.knative.dev/window": f"{window}s",
    }
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": model.name, "namespace": plat.deploy.namespace, "labels": _labels(model.name)},
        "spec": {"template": {
            "metadata": {"labels": _labels(model.name), "annotations": annotations},
            "spec": _pod_spec(model, plat, fleet, knative=True),
        }},
    }  # fmt: skip


def kubernetes_objects(
    model: ModelDeploy, plat: PlatformDeploy, fleet: FleetConfig | None = None
) -> list[dict[str, Any]]:
    ns, name, labels = plat.deploy.namespace, model.name, _labels(model.name)
    meta = {"name": name, "namespace": ns, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": max(model.min_replicas, 1),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(model, plat, fleet, knative=False),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": plat.deploy.port}],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(model.min_replicas, 1),
            "maxReplicas": model.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": TARGET_UTILIZATION_PCT}}}],
        },
    }  # fmt: skip
    return [deployment, service, hpa]


def buffer_objects(
    fleet: FleetConfig, plan: dict[str, Any], namespace: str
) -> list[dict[str, Any]]:
    """PriorityClass + one placeholder Deployment per pool, ``replicas`` = the plan's peak."""
    objs: list[dict[str, Any]] = [{
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": BUFFER_PRIORITY, "labels": _labels(BUFFER_PRIORITY)},
        "value": BUFFER_PRIORITY_VALUE,
        "globalDefault": False,
        "preemptionPolicy": "Never",
        "description": "zerostart ready-capacity buffer: placeholder pods any real pod preempts",
    }]  # fmt: skip
    pools = plan.get("pools", {})
    for name, entry in sorted(pools.items()):
        if name not in fleet.pools:
            raise DeployError(f"the plan names pool {name!r}, which the fleet config lacks")
        slots = [int(x) for x in entry.get("slots", [])]
        if not slots or min(slots) < 0:
            raise DeployError(f"the plan has no slot counts for pool {name!r}")
        objs.append(
            _placeholder(fleet.pools[name], slots, namespace, float(plan.get("window_s", 3600)))
        )
    return objs


def _placeholder(
    pool: PoolSpec, slots: list[int], namespace: str, window_s: float
) -> dict[str, Any]:
    name = f"zerostart-buffer-{pool.name}"
    labels = _labels(name)
    requests: dict[str, Any] = {"cpu": pool.cpu, "memory": pool.memory}
    limits: dict[str, Any] = {}
    if pool.gpus:
        requests["nvidia.com/gpu"] = pool.gpus
        limits["nvidia.com/gpu"] = pool.gpus
    schedule = ",".join(f"{int(i * window_s // 3600):02d}:{int(i * window_s % 3600 // 60):02d}={n}"
                        for i, n in enumerate(slots))  # fmt: skip
    pod: dict[str, Any] = {
        "priorityClassName": BUFFER_PRIORITY,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "placeholder", "image": PAUSE_IMAGE,
                        "resources": {"requests": requests, **({"limits": limits} if limits else {})}}],
    }  # fmt: skip
    if pool.node_selector:
        pod["nodeSelector"] = dict(pool.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"zerostart.dev/buffer-schedule": schedule}},
        "spec": {"replicas": max(slots), "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }  # fmt: skip


# -- validation ------------------------------------------------------------------------------


def _knative_schema() -> dict[str, Any]:
    text = (
        resources.files("zerostart.fleet").joinpath("schemas/knative-service-v1.json").read_text()
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate(obj: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Schema errors of one object (empty when valid)."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError

    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    errors: list[str] = []
    if obj.get("apiVersion", "").startswith("serving.knative.dev/"):
        validator = jsonschema.Draft7Validator(_knative_schema())
        errors += [
            f"{where}: {'/'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        pod_spec = {
            k: v for k, v in obj["spec"]["template"]["spec"].items() if k not in KNATIVE_ONLY
        }
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}
        where += " (pod spec as a Kubernetes PodSpec)"
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}")
    except (kubernetes_validate.SchemaNotFoundError, VersionNotSupportedError) as exc:
        errors.append(f"{where}: {exc.message}")
    return errors


def generate(target: str, plat: PlatformDeploy, fleet: FleetConfig | None = None,
             plan: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """``{file name: objects}`` for ``target`` (knative | kubernetes), validated."""
    if target not in ("knative", "kubernetes"):
        raise DeployError(f"unknown target {target!r}: knative or kubernetes")
    files: dict[str, list[dict[str, Any]]] = {}
    for name, model in sorted(plat.models.items()):
        files[f"{name}.yaml"] = (
            [knative_service(model, plat, fleet)]
            if target == "knative"
            else kubernetes_objects(model, plat, fleet)
        )
    if plan is not None:
        if fleet is None:
            raise DeployError(
                "a buffer plan needs the fleet config that made it", hint="pass --fleet fleet.toml"
            )
        files["buffer.yaml"] = buffer_objects(fleet, plan, plat.deploy.namespace)
    errors = [
        e
        for objs in files.values()
        for o in objs
        for e in validate(o, plat.deploy.kubernetes_version)
    ]
    if errors:
        raise DeployError(
            f"{len(errors)} schema error(s), nothing written: " + "; ".join(errors[:5])
        )
    return files


def write(files: dict[str, list[dict[str, Any]]], out: str | Path) -> list[Path]:
    """Write each file as multi-document YAML; returns the paths."""
    import yaml

    class _Plain(yaml.SafeDumper):  # type: ignore[misc]  # no &anchors / *aliases for shared dicts
        def ignore_aliases(self, data: Any) -> bool:
            return True

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, objs in files.items():
        path = folder / name
        path.write_text(yaml.dump_all(objs, Dumper=_Plain, sort_keys=False))
        paths.append(path)
    return paths
