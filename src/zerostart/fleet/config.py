"""``fleet.toml`` (machine pools, the buffer LP's knobs) and the ``platform.toml`` keys ``deploy`` reads.

``fleet.toml``::

    [plan]
    window = "1h"             # LP window length (a day is cut into 24 windows)
    wait_penalty = 0.01       # $ per request-second spent waiting for a slot
    max_wait_probability = 0.01  # optional: at most 1 % of slot requests wait for a machine
    keepalive = "60s"         # the keep-alive the demand forecast assumes
    start_path = "warm_slot"  # how a ready slot becomes a replica: warm_slot | snapshot | cold_boot

    [pools.cpu]
    device = "cpu"            # cpu | cuda
    cost_per_hour = 0.05      # $ per slot-hour
    allocation_time = "60s"   # machine requested -> machine up
    health_check_time = "10s" # machine up -> its slots ready
    slots_per_machine = 8
    max_slots = 4000          # supply limit
    node_selector = { "cloud.google.com/gke-nodepool" = "cpu" }
    cpu = "1"                 # one slot's resources (placeholder pods, ``deploy``)
    memory = "1Gi"
    gpus = 0

    [routing]                 # which pool a model (or a trace's app) runs in
    default_pool = "cpu"
    shares = { cpu = 0.7, gpu-l4 = 0.3 }   # apps not named below, by a stable hash
    models = { minilm = "cpu" }

    [[quotas]]                # optional: a limit over several pools
    pools = ["gpu-l4", "gpu-a10"]
    max_slots = 64

``platform.toml`` is defined once, in ``platform_toml.py``: :func:`load_platform` reads it
with that parser (so ``up`` and ``deploy`` accept the same file) and adds what a cluster
needs: ``cpu``, ``memory``, ``gpu_archs``, ``pool`` per model and a ``[deploy]`` table,
which ``up`` accepts and ignores. Both readers raise :class:`FleetConfigError` naming the
dotted key before anything is written.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zerostart.fleet.errors import FleetConfigError
from zerostart.platform_toml import ConfigError, ModelConfig, PlatformConfig
from zerostart.platform_toml import load as load_platform_config
from zerostart.units import parse_duration

DEVICES = ("cpu", "cuda")
START_PATHS = ("warm_slot", "snapshot", "cold_boot")
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label (Kubernetes object names)
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")  # Kubernetes resource quantity
GPU_ARCH = re.compile(r"^sm_\d{2,3}a?$")


class _Table:
    """Typed reads from one TOML table; every error names the dotted key."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.path, self.prefix, self.data = path, prefix, data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        if not name:
            return self.prefix
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str, hint: str | None = None) -> FleetConfigError:
        return FleetConfigError(self.path, self.key(name), problem, hint=hint)

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def number(self, name: str, default: float | None = None, *, low: float = 0.0) -> float:
        v = self.raw(name, default)
        if v is None:
            raise self.fail(name, "is required")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(name, f"must be a number, got {v!r}")
        if v < low:
            raise self.fail(name, f"must be >= {low:g}, got {v!r}")
        return float(v)

    def integer(self, name: str, default: int | None = None, *, low: int = 0) -> int:
        v = self.raw(name, default)
        if v is None:
            raise self.fail(name, "is required")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, f"must be an integer, got {v!r}")
        if v < low:
            raise self.fail(name, f"must be >= {low}, got {v}")
        return v

    def duration(self, name: str, default: float | str | None = None) -> float:
        v = self.raw(name, default)
        if v is None:
            raise self.fail(name, "is required")
        try:
            return parse_duration(v)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None

    def string(
        self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()
    ) -> str:
        v = self.raw(name, default)
        if v is None:
            raise self.fail(name, "is required")
        if not isinstance(v, str):
            raise self.fail(name, f"must be a string, got {v!r}")
        if choices and v not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def quantity(self, name: str, default: str) -> str:
        v = self.raw(name, default)
        s = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(s, str) or not QUANTITY.match(s):
            raise self.fail(
                name, f"must be a Kubernetes quantity such as '500m', '2' or '1Gi', got {v!r}"
            )
        return s

    def str_map(self, name: str) -> dict[str, str]:
        v = self.raw(name, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise self.fail(name, "must be a table of strings")
        return dict(v)

    def refuse_unknown(self, hint: str) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key", hint=hint)


def _read_toml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return p, tomllib.load(f)
    except FileNotFoundError:
        raise FleetConfigError(p, "", "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetConfigError(p, "", f"not valid TOML: {exc}") from None


def _tables(path: Path, data: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any]]:
    v = data.get(name, {})
    if not isinstance(v, dict) or not all(isinstance(t, dict) for t in v.values()):
        raise FleetConfigError(path, name, f"must be tables [{name}.NAME]")
    for key in v:
        if not NAME.match(key):
            raise FleetConfigError(
                path, f"{name}.{key}", "a name must be a DNS label (a-z, 0-9, '-')"
            )
    return v


# -- fleet.toml ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    """One machine pool. Costs are per slot-hour; times in seconds."""

    name: str
    device: str
    cost_per_hour: float
    allocation_s: float
    health_check_s: float
    slots_per_machine: int = 1
    max_slots: int = 1_000_000
    node_selector: dict[str, str] = field(default_factory=dict)
    cpu: str = "1"
    memory: str = "1Gi"
    gpus: int = 0

    @property
    def lead_time_s(self) -> float:
        """Machine requested -> its slots ready (the buffer's replenishment lead time)."""
        return self.allocation_s + self.health_check_s


@dataclass(frozen=True)
class Quota:
    name: str
    pools: tuple[str, ...]
    max_slots: int


@dataclass(frozen=True)
class FleetConfig:
    pools: dict[str, PoolSpec]
    window_s: float = 3600.0
    wait_penalty: float = 0.01  # $ per request-second of waiting
    keepalive_s: float = 60.0  # the platform's default idle_timeout
    start_path: str = "warm_slot"
    max_wait_probability: float | None = None  # service level: share of requests that may wait
    default_pool: str = ""
    shares: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    quotas: tuple[Quota, ...] = ()

    def pool_of(self, model: str) -> str:
        """The pool ``model`` runs in: named in [routing.models], else by share, else the default."""
        if model in self.models:
            return self.models[model]
        if self.shares:
            h = int.from_bytes(hashlib.blake2b(model.encode(), digest_size=8).digest(), "big")
            x = h / 2**64 * sum(self.shares.values())
            for name, share in sorted(self.shares.items()):
                if x < share:
                    return name
                x -= share
            return sorted(self.shares)[-1]
        return self.default_pool


def _probability(t: _Table, name: str) -> float | None:
    v = t.raw(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
        raise t.fail(name, f"must be a probability in (0, 1), e.g. 0.01, got {v!r}")
    return float(v)


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and check ``fleet.toml``; raises :class:`FleetConfigError` naming the key."""
    p, data = _read_toml(path)
    pools: dict[str, PoolSpec] = {}
    for name, raw in _tables(p, data, "pools").items():
        t = _Table(p, f"pools.{name}", raw)
        pools[name] = PoolSpec(
            name=name,
            device=t.string("device", choices=DEVICES),
            cost_per_hour=t.number("cost_per_hour"),
            allocation_s=t.duration("allocation_time"),
            health_check_s=t.duration("health_check_time", 0),
            slots_per_machine=t.integer("slots_per_machine", 1, low=1),
            max_slots=t.integer("max_slots", 1_000_000, low=0),
            node_selector=t.str_map("node_selector"),
            cpu=t.quantity("cpu", "1"),
            memory=t.quantity("memory", "1Gi"),
            gpus=t.integer("gpus", 1 if raw.get("device") == "cuda" else 0),
        )
        t.refuse_unknown(
            "pool keys: device, cost_per_hour, allocation_time, health_check_time, "
            "slots_per_machine, max_slots, node_selector, cpu, memory, gpus"
        )
    if not pools:
        raise FleetConfigError(p, "pools", "no machine pools", hint="add a [pools.NAME] table")
    plan = _Table(p, "plan", data.get("plan", {}))
    routing = _Table(p, "routing", data.get("routing", {}))
    default_pool = routing.string("default_pool", sorted(pools)[0])
    shares_raw = routing.raw("shares", {})
    if not isinstance(shares_raw, dict):
        raise routing.fail("shares", "must be a table pool = share")
    shares: dict[str, float] = {}
    for k, v in shares_raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise routing.fail(f"shares.{k}", f"must be a number >= 0, got {v!r}")
        shares[k] = float(v)
    if shares and sum(shares.values()) <= 0:
        raise routing.fail("shares", "shares add up to 0")
    models = routing.str_map("models")
    for key, pool in (
        [("default_pool", default_pool)]
        + [(f"shares.{k}", k) for k in shares]
        + [(f"models.{m}", v) for m, v in models.items()]
    ):
        if pool not in pools:
            raise routing.fail(
                key,
                f"names pool {pool!r}, which is not defined",
                hint=f"pools: {', '.join(sorted(pools))}",
            )
    routing.refuse_unknown("routing keys: default_pool, shares, models")
    quotas = []
    raw_quotas = data.get("quotas", [])
    if not isinstance(raw_quotas, list):
        raise FleetConfigError(p, "quotas", "must be an array of tables [[quotas]]")
    for i, raw in enumerate(raw_quotas):
        q = _Table(p, f"quotas[{i}]", raw)
        names = q.raw("pools", [])
        if not isinstance(names, list) or not names or any(n not in pools for n in names):
            raise q.fail("pools", f"must list defined pools, got {names!r}")
        quotas.append(Quota(str(q.raw("name", f"quota{i}")), tuple(names), q.integer("max_slots")))
        q.refuse_unknown("quota keys: name, pools, max_slots")
    cfg = FleetConfig(
        pools=pools,
        window_s=plan.duration("window", 3600),
        wait_penalty=plan.number("wait_penalty", 0.01),
        keepalive_s=plan.duration("keepalive", 60),
        start_path=plan.string("start_path", "warm_slot", choices=START_PATHS),
        max_wait_probability=_probability(plan, "max_wait_probability"),
        default_pool=default_pool,
        shares=shares,
        models=models,
        quotas=tuple(quotas),
    )
    plan.refuse_unknown(
        "plan keys: window, wait_penalty, keepalive, start_path, max_wait_probability"
    )
    if cfg.window_s <= 0 or 86400 % cfg.window_s:
        raise plan.fail(
            "window",
            f"must divide a day evenly, got {cfg.window_s:g} s",
            hint="e.g. '15m', '1h', '2h'",
        )
    return cfg


# -- platform.toml (the keys deploy reads) -------------------------------------------------


@dataclass(frozen=True)
class ModelDeploy(ModelConfig):
    """One model as ``deploy`` sees it: ``up``'s keys and defaults (:class:`ModelConfig`,
    defined once in ``platform_toml.py``) plus the deploy-only ones."""

    cpu: str = "1"
    memory: str = "1Gi"
    gpu_archs: tuple[str, ...] = ()
    pool: str | None = None


@dataclass(frozen=True)
class DeploySettings:
    namespace: str = "default"
    registry: str | None = None  # where `image = ...` layouts were pushed: REGISTRY/NAME@DIGEST
    port: int = 8080
    kubernetes_version: str = "1.33"


@dataclass(frozen=True)
class PlatformDeploy:
    models: dict[str, ModelDeploy]
    deploy: DeploySettings
    path: Path
    platform: PlatformConfig | None = None  # the file as `zerostart up` reads it


def load_platform(path: str | Path) -> PlatformDeploy:
    """Read ``platform.toml`` as ``zerostart up`` does, plus the deploy-only keys.

    The models, their keys and defaults come from :func:`zerostart.platform_toml.load`
    (``api_key_env`` variables are not read: a key never goes into a manifest); this adds
    ``cpu``, ``memory``, ``gpu_archs``, ``pool`` per model and the ``[deploy]`` table.
    Raises :class:`FleetConfigError` naming the key before anything is written.
    """
    p, data = _read_toml(path)
    try:
        config = load_platform_config(p, secrets=False)
    except ConfigError as exc:
        raise FleetConfigError(p, exc.key, exc.problem, hint=exc.hint) from None
    models: dict[str, ModelDeploy] = {}
    for name, m in config.models.items():
        raw = data["models"][name]
        t = _Table(p, f"models.{name}", raw)
        archs = t.raw("gpu_archs", [])
        if not isinstance(archs, list) or not all(
            isinstance(a, str) and GPU_ARCH.match(a) for a in archs
        ):
            raise t.fail("gpu_archs", f"must be a list like ['sm_89', 'sm_90'], got {archs!r}")
        pool = t.raw("pool")
        if pool is not None and not isinstance(pool, str):
            raise t.fail("pool", "must be a pool name")
        shared = {f.name: getattr(m, f.name) for f in fields(ModelConfig)}
        models[name] = ModelDeploy(
            **shared,
            cpu=t.quantity("cpu", "1"),
            memory=t.quantity("memory", "1Gi"),
            gpu_archs=tuple(archs),
            pool=pool,
        )
    d = _Table(p, "deploy", data.get("deploy", {}))
    settings = DeploySettings(
        namespace=d.string("namespace", "default"),
        registry=d.raw("registry"),
        port=d.integer("port", 8080, low=1),
        kubernetes_version=d.string("kubernetes_version", "1.33"),
    )
    d.refuse_unknown("deploy keys: namespace, registry, port, kubernetes_version")
    if not NAME.match(settings.namespace):
        raise d.fail("namespace", "must be a DNS label")
    if settings.registry is not None and not isinstance(settings.registry, str):
        raise d.fail("registry", "must be a string such as 'registry.example.com/team'")
    return PlatformDeploy(models=models, deploy=settings, path=p, platform=config)
