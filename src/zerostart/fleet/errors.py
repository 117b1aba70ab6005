"""Errors of the fleet tools: one per kind of bad input, all under ``ZerostartError``."""

from __future__ import annotations

from zerostart.errors import ZerostartError


class FleetError(ZerostartError):
    """Root of the fleet tools' errors (planning, traces, simulation, deployment)."""


class FleetConfigError(FleetError):
    """A ``fleet.toml`` or ``platform.toml`` is unusable.

    ``path`` is the file, ``key`` the dotted key at fault (``pools.gpu.cost_per_hour``).
    """

    def __init__(self, path: object, key: str, problem: str, *, hint: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}", hint=hint)


class TraceError(FleetError):
    """A trace file cannot be read (format, columns, values)."""


class PlanError(FleetError):
    """The buffer LP's input is infeasible or degenerate, or the solver failed."""


class DeployError(FleetError):
    """Manifests cannot be generated, or a generated object fails its schema."""
