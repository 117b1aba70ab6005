"""``platform.toml``: which models the gateway serves and how each one scales.

Example (every key but a model's source is optional; defaults shown)::

    [gateway]
    host = "127.0.0.1"
    port = 8080
    api_key_env = "ZEROSTART_API_KEY"   # or api_key = "..." (prefer the env var)
    max_body_bytes = 1048576            # request and response bodies, each
    drain_timeout = 30                  # seconds, on SIGTERM

    [autoscaler]                        # Knative KPA's model; see autoscaler.py
    stable_window = 60                  # seconds
    panic_window_percentage = 10.0      # of the stable window
    panic_threshold_percentage = 200.0  # of the target, over the panic window
    target_utilization = 0.7            # of a replica's concurrency
    tick = 0.5                          # seconds between decisions

    [pool]                              # warm slots per device kind (issue 10b)
    cpu = 1
    cuda = 0

    [models.minilm]
    bundle = "bundles/minilm"           # or image = "OCI layout folder[:tag]",
                                        # or reference = "registry/repo:tag"
    min_replicas = 0
    max_replicas = 4
    concurrency = 32                    # in-flight requests per replica (hard limit)
    idle_timeout = 60                   # seconds without a request before scaling to zero
    max_queue = 256                     # requests waiting for a replica before 429
    queue_timeout = 30                  # seconds a request may wait before 503
    start_timeout = 60                  # seconds a start may take before it fails
    device = "cpu"                      # or "cuda"

Keys carry seconds without a unit suffix in the file (``idle_timeout = 60``);
the objects carry it in the name (``idle_timeout_s``). Paths are relative to
the file's folder. A bad file raises :class:`ConfigError` naming the dotted
key and the fix. Secrets (``api_key``) are kept out of ``repr``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zerostart.platform.errors import ConfigError

MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: Host: NAME.*
DEVICES = ("cpu", "cuda")
SOURCES = ("bundle", "image", "reference")


def _file_key(attr: str) -> str:
    return attr[:-2] if attr.endswith("_s") else attr


def _at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, f"must be an integer >= {low}, got {value!r}")


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, f"must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """One model the gateway serves. ``source_kind`` says what ``source`` is."""

    name: str
    source: str  # a bundle folder, an OCI layout folder (optional :tag), or a registry reference
    source_kind: str = "bundle"  # one of SOURCES
    min_replicas: int = 0
    max_replicas: int = 4
    concurrency: int = 32  # in-flight requests per replica; the worker batches up to 32
    idle_timeout_s: float = 60.0  # Knative scales to zero after a stable window (60 s) idle
    max_queue: int = 256  # requests waiting for a replica before 429
    queue_timeout_s: float = 30.0  # a queued request gets 503 + Retry-After after this
    start_timeout_s: float = 60.0
    device: str = "cpu"
    api_key: str | None = field(default=None, repr=False)  # None: the gateway's key applies

    def __post_init__(self) -> None:
        p = f"models.{self.name}"
        if not MODEL_NAME.match(self.name):
            raise ConfigError(
                p,
                "a model name must be a DNS label (lower-case letters, digits, '-')",
                hint="rename the [models.NAME] table, e.g. [models.minilm-embed]",
            )
        if self.source_kind not in SOURCES:
            raise ConfigError(f"{p}.{self.source_kind}", f"unknown source; use one of {SOURCES}")
        if self.device not in DEVICES:
            raise ConfigError(f"{p}.device", f"must be one of {DEVICES}, got {self.device!r}")
        _at_least(f"{p}.min_replicas", self.min_replicas, 0)
        _at_least(f"{p}.max_replicas", self.max_replicas, 1)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"{p}.min_replicas",
                f"{self.min_replicas} is above max_replicas {self.max_replicas}",
                hint="lower min_replicas or raise max_replicas",
            )
        _at_least(f"{p}.concurrency", self.concurrency, 1)
        _at_least(f"{p}.max_queue", self.max_queue, 0)
        for key in ("idle_timeout", "queue_timeout", "start_timeout"):
            _positive(f"{p}.{key}", getattr(self, key + "_s"))

    def new(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 1 << 20  # request and response bodies, each (the worker's own limit)
    max_header_bytes: int = 16 * 1024
    max_connections: int = 4096
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0  # > the 60 s idle timeouts of common load balancers
    upstream_timeout_s: float = 60.0  # a replica's answer, once the request was sent
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("gateway.port", f"must be in 0..65535, got {self.port}")
        for f in fields(self):
            if f.name not in ("host", "port", "api_key", "drain_timeout_s"):
                _positive(f"gateway.{_file_key(f.name)}", getattr(self, f.name))


@dataclass(frozen=True)
class AutoscalerConfig:
    """Knative KPA's knobs (config-autoscaler defaults in comments; see autoscaler.py)."""

    stable_window_s: float = 60.0  # Knative stable-window: 60s
    panic_window_percentage: float = 10.0  # Knative: 10.0 (a 6 s panic window)
    panic_threshold_percentage: float = 200.0  # Knative: 200.0
    target_utilization: float = 0.7  # Knative container-concurrency-target-percentage: 70
    max_scale_up_rate: float = 1000.0  # Knative: 1000.0
    max_scale_down_rate: float = 2.0  # Knative: 2.0
    tick_s: float = 0.5  # Knative ticks every 2 s; our replicas start in well under 1 s

    def __post_init__(self) -> None:
        for f in fields(self):
            _positive(f"autoscaler.{_file_key(f.name)}", getattr(self, f.name))
        if not 0 < self.panic_window_percentage <= 100:
            raise ConfigError(
                "autoscaler.panic_window_percentage",
                f"must be in (0, 100], got {self.panic_window_percentage}",
            )
        if self.target_utilization > 1:
            raise ConfigError(
                "autoscaler.target_utilization",
                f"is a fraction of a replica's concurrency, got {self.target_utilization}",
                hint="write 0.7 for 70%",
            )
        if self.max_scale_down_rate <= 1 or self.max_scale_up_rate <= 1:
            raise ConfigError("autoscaler", "max_scale_up_rate and max_scale_down_rate must be > 1")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100


@dataclass(frozen=True)
class PoolConfig:
    """Warm slots held per device kind (the warm pool, issue 10b; sized by an LP in issue 11)."""

    cpu: int = 1
    cuda: int = 0

    def __post_init__(self) -> None:
        _at_least("pool.cpu", self.cpu, 0)
        _at_least("pool.cuda", self.cuda, 0)


@dataclass(frozen=True)
class PlatformConfig:
    models: dict[str, ModelConfig]
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    path: Path | None = None  # the file it was read from

    def new(self, **changes: Any) -> PlatformConfig:
        return replace(self, **changes)


# -- parsing ---------------------------------------------------------------------------


def _secret(table: dict[str, Any], where: str, env: dict[str, str]) -> str | None:
    """``api_key`` or ``api_key_env`` (the name of an environment variable holding it)."""
    if "api_key" in table and "api_key_env" in table:
        raise ConfigError(f"{where}.api_key", "set api_key or api_key_env, not both")
    if "api_key_env" in table:
        name = table.pop("api_key_env")
        table.pop("api_key", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.api_key_env", "must name an environment variable")
        value = env.get(name)
        if not value:
            raise ConfigError(
                f"{where}.api_key_env",
                f"environment variable {name} is not set or empty",
                hint=f"export {name}=... before starting, or remove api_key_env",
            )
        return value
    value = table.pop("api_key", None)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.api_key", "must be a non-empty string")
    return value


def _build(cls: type[Any], where: str, table: Any, **extra: Any) -> Any:
    """Map a TOML table onto a dataclass, naming unknown keys and wrong types."""
    if not isinstance(table, dict):
        raise ConfigError(where, f"must be a table ([{where}]), got {type(table).__name__}")
    known = {_file_key(f.name): f for f in fields(cls)} | {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = dict(extra)
    for key, value in table.items():
        f = known.get(key)
        if f is None or f.name in ("name", "source", "source_kind", "models", "path"):
            options = sorted(
                _file_key(f.name)
                for f in fields(cls)
                if f.name not in ("name", "source", "source_kind", "models", "path")
            )
            raise ConfigError(
                f"{where}.{key}", "unknown key", hint=f"known keys: {', '.join(options)}"
            )
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if want == "float":
            if not number:
                raise ConfigError(f"{where}.{key}", f"must be a number, got {value!r}")
            value = float(value)
        elif want == "int" and not (number and isinstance(value, int)):
            raise ConfigError(f"{where}.{key}", f"must be an integer, got {value!r}")
        elif want.startswith("str") and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}", f"must be a string, got {value!r}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a wrong type that __post_init__ did not name
        raise ConfigError(where, str(exc)) from exc


def parse(
    text: str, *, base: Path | None = None, env: dict[str, str] | None = None
) -> PlatformConfig:
    """Parse ``platform.toml`` text; relative paths resolve against ``base``.

    Raises :class:`ConfigError` naming the dotted key and how to fix it.
    """
    env = dict(os.environ) if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", hint="see https://toml.io") from exc
    unknown = sorted(set(data) - {"gateway", "autoscaler", "pool", "models"})
    if unknown:
        raise ConfigError(
            unknown[0],
            "unknown table",
            hint="tables are [gateway], [autoscaler], [pool], [models.NAME]",
        )
    gw = dict(data.get("gateway", {}))
    gateway = _build(GatewayConfig, "gateway", gw, api_key=_secret(gw, "gateway", env))
    autoscaler = _build(AutoscalerConfig, "autoscaler", data.get("autoscaler", {}))
    pool = _build(PoolConfig, "pool", data.get("pool", {}))
    models_table = data.get("models")
    if not isinstance(models_table, dict) or not models_table:
        raise ConfigError(
            "models",
            "no models",
            hint='add a table such as [models.minilm] with bundle = "path/to/bundle"',
        )
    models: dict[str, ModelConfig] = {}
    for name, table in models_table.items():
        where = f"models.{name}"
        if not isinstance(table, dict):
            raise ConfigError(where, "must be a table", hint=f'[{where}]\nbundle = "..."')
        table = dict(table)
        given = [k for k in SOURCES if k in table]
        if len(given) != 1:
            raise ConfigError(
                where,
                "needs exactly one of bundle, image, reference"
                + (f" (got {', '.join(given)})" if given else ""),
                hint='e.g. bundle = "bundles/minilm" (a folder made by `zerostart convert`)',
            )
        kind = given[0]
        source = table.pop(kind)
        if not isinstance(source, str) or not source:
            raise ConfigError(f"{where}.{kind}", "must be a non-empty string")
        if kind in ("bundle", "image") and base is not None:
            path_part, sep, tag = source.partition(":") if kind == "image" else (source, "", "")
            if not os.path.isabs(path_part):
                source = str((base / path_part).resolve()) + sep + tag
        key = _secret(table, where, env)
        models[name] = _build(
            ModelConfig, where, table, name=name, source=source, source_kind=kind, api_key=key
        )
    return PlatformConfig(models=models, gateway=gateway, autoscaler=autoscaler, pool=pool)


def load(path: str | os.PathLike[str], *, env: dict[str, str] | None = None) -> PlatformConfig:
    """Read and parse ``platform.toml``; see :func:`parse`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{p} is not UTF-8 text: {exc}") from exc
    config = parse(text, base=p.resolve().parent, env=env)
    return config.new(path=p)
