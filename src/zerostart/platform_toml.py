"""``platform.toml``: which models the gateway serves and how each one scales.

Example (every key but a model's source is optional; defaults shown)::

    [gateway]
    host = "127.0.0.1"
    port = 8080
    api_key_env = "ZEROSTART_API_KEY"   # or api_key = "..." (prefer the env var)
    max_body_bytes = 1048576            # request and response bodies, each
    max_connections = 4096              # open client connections (503 above)
    max_connections_per_client = 256    # from one client address (503 above)
    body_deadline = 30                  # seconds for a whole request body (408)
    drain_timeout = 30                  # seconds, on SIGTERM

    [autoscaler]                        # Knative KPA's model; see autoscaler.py
    stable_window = 60                  # seconds
    panic_window_percentage = 10.0      # of the stable window
    panic_threshold_percentage = 200.0  # of the target, over the panic window
    target_utilization = 0.7            # of a replica's concurrency
    tick = 0.5                          # seconds between decisions

    [pool]                              # the warm pool (pool.py, sizing.py)
    cpu = 1                             # slots per device kind: the size when sizing is
    cuda = 0                            # "static", the most the LP may set when "lp"
    sizing = "static"                   # or "lp": re-solve the buffer LP on a schedule
    resolve_interval = 30               # seconds between re-plans (lp)
    demand_window = 300                 # seconds of traffic the arrival rates average over
    wait_penalty = 0.01                 # $ per request-second short of a slot (lp)
    cpu_cost_per_hour = 0.05            # $ per slot-hour a ready slot costs (lp)
    cuda_cost_per_hour = 1.0

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
    cpu = "1"                           # deploy only (fleet/config.py): the pod's resources,
    memory = "1Gi"                      # the GPU kernels the bundle holds and the fleet pool;
    gpu_archs = ["sm_89"]               # `zerostart up` accepts and ignores them
    pool = "cpu"

    [deploy]                            # deploy only: namespace, registry, port,
    namespace = "default"               # kubernetes_version (fleet/config.py)

This module defines the file: ``zerostart up`` (``zerostart.platform``) reads
it here, and ``zerostart deploy`` (``fleet/config.py``) reads the same models
through :func:`parse` and adds only the deploy-only keys
(:data:`DEPLOY_MODEL_KEYS`, ``[deploy]``). It is a leaf (it imports only
``errors`` and ``units``), so the fleet reads the node's file without
importing the node, and the node's LP sizing imports the fleet.

Times are seconds: a number (``idle_timeout = 60``) or a string with a unit
(``"90s"``, ``"10m"``); the objects carry the unit in the name
(``idle_timeout_s``). Paths are relative to the file's folder. A bad file
raises :class:`ConfigError` naming the dotted key and the fix. Secrets
(``api_key``) are kept out of ``repr``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.units import parse_duration

MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: Host: NAME.*
DEVICES = ("cpu", "cuda")
SOURCES = ("bundle", "image", "reference")
SIZINGS = ("static", "lp")
TABLES = ("gateway", "autoscaler", "pool", "models", "deploy")  # [deploy]: deploy only
# Per-model keys only `zerostart deploy` reads (fleet/config.py checks them); `up` ignores them.
DEPLOY_MODEL_KEYS = ("cpu", "memory", "gpu_archs", "pool")
FLEET_EXTRA_FIX = "pip install 'zerostart[fleet]'"


class ConfigError(ZerostartError):
    """``platform.toml`` is unreadable or has a bad value.

    ``key`` is the dotted key at fault (``models.minilm.max_replicas``) and
    the hint says how to fix it. A ``zerostart up`` (platform) and a ``zerostart
    deploy`` (fleet, which rewraps it as ``FleetConfigError``) raise it alike.
    """

    def __init__(self, key: str, problem: str, *, hint: str | None = None) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem, hint=hint)


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
    # one client address may hold this many (503 above): 4,100 slow connections from one
    # client no longer starve everyone else. Behind a proxy every client shares its address:
    # raise it to max_connections there.
    max_connections_per_client: int = 256
    max_trailer_bytes: int = 4 * 1024  # a chunked body's trailer section (dropped; 431 above)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0  # longest pause inside a request body (408)
    body_deadline_s: float = 30.0  # the whole body, from the end of its head (408)
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
    """The warm pool: slots per device kind, and how that number is chosen.

    ``sizing = "static"``: hold ``cpu`` / ``cuda`` slots. ``sizing = "lp"``: every
    ``resolve_interval_s`` re-solve the buffer LP (``fleet/lp.py``) on the arrival rates of
    the last ``demand_window_s`` and hold its answer, never more than ``cpu`` / ``cuda``
    (``sizing.py``). Costs are $ per slot-hour; ``wait_penalty`` is $ per request-second
    short of a slot (the LP's, docs/fleet.md).
    """

    cpu: int = 1
    cuda: int = 0
    sizing: str = "static"
    resolve_interval_s: float = 30.0  # a replica lives idle_timeout (60 s) at least: twice a life
    demand_window_s: float = 300.0  # 5 min: the shortest keep-alive ATC'20 weighs is 10 min
    wait_penalty: float = 0.01  # fleet.toml's default: one slot-hour of CPU = 5 s of waiting
    cpu_cost_per_hour: float = 0.05  # $ per slot-hour; a share of a CPU VM
    cuda_cost_per_hour: float = 1.0  # $ per slot-hour; an L4-class GPU

    def __post_init__(self) -> None:
        _at_least("pool.cpu", self.cpu, 0)
        _at_least("pool.cuda", self.cuda, 0)
        if self.sizing not in SIZINGS:
            raise ConfigError("pool.sizing", f"must be one of {SIZINGS}, got {self.sizing!r}")
        for key in ("resolve_interval", "demand_window"):
            _positive(f"pool.{key}", getattr(self, key + "_s"))
        for key in ("wait_penalty", "cpu_cost_per_hour", "cuda_cost_per_hour"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"pool.{key}", f"must be a number >= 0, got {value!r}")

    def cost_per_hour(self, device: str) -> float:
        """$ per slot-hour of ``device`` ("cuda", else a CPU slot's)."""
        return self.cuda_cost_per_hour if device == "cuda" else self.cpu_cost_per_hour


def ortools_available() -> bool:
    """Whether the ``fleet`` extra (OR-Tools) is installed; nothing is imported."""
    try:
        return importlib.util.find_spec("ortools") is not None
    except (ImportError, ValueError):
        return False


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


def _secret(table: dict[str, Any], where: str, env: dict[str, str] | None) -> str | None:
    """``api_key`` or ``api_key_env`` (the name of an environment variable holding it).

    ``env=None``: the variable is not read (``deploy`` never writes a key into a manifest).
    """
    if "api_key" in table and "api_key_env" in table:
        raise ConfigError(f"{where}.api_key", "set api_key or api_key_env, not both")
    if "api_key_env" in table:
        name = table.pop("api_key_env")
        table.pop("api_key", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.api_key_env", "must name an environment variable")
        if env is None:
            return None
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
        if f is None or f.name in _NOT_KEYS:
            raise _unknown(f"{where}.{key}", "key", key, valid_keys(cls))
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if want == "float" and f.name.endswith("_s") and isinstance(value, str):
            value = _seconds(f"{where}.{key}", value)
        elif want == "float":
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


_NOT_KEYS = ("name", "source", "source_kind", "models", "path")  # set by the parser itself


def valid_keys(cls: type[Any]) -> tuple[str, ...]:
    """Every key a table of ``cls`` accepts in platform.toml, sorted (for messages and docs)."""
    keys = {_file_key(f.name) for f in fields(cls) if f.name not in _NOT_KEYS}
    if "api_key" in keys:
        keys.add("api_key_env")
    if cls is ModelConfig:
        keys.update(SOURCES)
        keys.update(DEPLOY_MODEL_KEYS)
    return tuple(sorted(keys))


def _unknown(where: str, what: str, given: str, valid: tuple[str, ...]) -> ConfigError:
    """``unknown key``: every valid one, and the nearest by difflib's ratio when one is close."""

    def show(v: str) -> str:
        if what != "table":
            return repr(v)
        return f"[{v}.NAME]" if v == "models" else f"[{v}]"

    near = difflib.get_close_matches(given, valid, n=1, cutoff=0.6)
    guess = f"did you mean {show(near[0])}? " if near else ""
    listed = ", ".join(show(v) for v in valid)
    return ConfigError(where, f"unknown {what}", hint=f"{guess}valid {what}s: {listed}")


def _seconds(key: str, value: str) -> float:
    """A duration string with its unit (``"90s"``, ``"10m"``); a bare ``"3"`` is refused."""
    if value.strip().replace(".", "", 1).isdigit():
        raise ConfigError(key, f"must be a number of seconds or carry a unit, got {value!r}",
                          hint=f"write {value.strip()} (seconds) or e.g. '{value.strip()}s'")  # fmt: skip
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, f"must be a number of seconds: {exc}") from None


def parse(
    text: str,
    *,
    base: Path | None = None,
    env: dict[str, str] | None = None,
    secrets: bool = True,
) -> PlatformConfig:
    """Parse ``platform.toml`` text; relative paths resolve against ``base``.

    ``secrets=False`` leaves ``api_key_env`` variables unread (``deploy`` has no use for
    keys). ``pool.sizing = "lp"`` without OR-Tools is refused here, naming the extra.
    Raises :class:`ConfigError` naming the dotted key and how to fix it.
    """
    env = (dict(os.environ) if env is None else env) if secrets else None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", hint="see https://toml.io") from exc
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise _unknown(unknown[0], "table", unknown[0], TABLES)
    gw = dict(data.get("gateway", {}))
    gateway = _build(GatewayConfig, "gateway", gw, api_key=_secret(gw, "gateway", env))
    autoscaler = _build(AutoscalerConfig, "autoscaler", data.get("autoscaler", {}))
    pool = _build(PoolConfig, "pool", data.get("pool", {}))
    if pool.sizing == "lp" and not ortools_available():
        raise ConfigError(
            "pool.sizing",
            '"lp" solves the buffer LP with OR-Tools, which is not installed',
            hint=f'{FLEET_EXTRA_FIX}, or set pool.sizing = "static"',
        )
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
                # realpath, not Path.resolve(): on Python 3.11 resolve() raises RuntimeError
                # on a symlink loop; the loop is reported by check_sources (sources.py).
                source = os.path.realpath(base / path_part) + sep + tag
        for deploy_only in DEPLOY_MODEL_KEYS:  # checked by `zerostart deploy`, unused here
            table.pop(deploy_only, None)
        key = _secret(table, where, env)
        models[name] = _build(
            ModelConfig, where, table, name=name, source=source, source_kind=kind, api_key=key
        )
    return PlatformConfig(models=models, gateway=gateway, autoscaler=autoscaler, pool=pool)


def load(
    path: str | os.PathLike[str], *, env: dict[str, str] | None = None, secrets: bool = True
) -> PlatformConfig:
    """Read and parse ``platform.toml``; see :func:`parse`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{p} is not UTF-8 text: {exc}") from exc
    config = parse(text, base=p.resolve().parent, env=env, secrets=secrets)
    return config.new(path=p)
