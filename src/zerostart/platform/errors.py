"""The platform's errors: one root under :class:`~zerostart.errors.ZerostartError`.

The gateway turns them into HTTP answers in one place (``gateway.py``): a
:class:`StartError` becomes a 502/503 naming the model and the problem, so a
caller sees *which* model failed and *why* rather than a bare timeout.
"""

from __future__ import annotations

from zerostart.errors import ZerostartError


class PlatformError(ZerostartError):
    """Root of the platform's errors (gateway, autoscaler, pool, starters)."""


class StartError(PlatformError):
    """A replica of ``model`` could not be started by any path.

    ``path`` is the start path that failed last (``"cold_boot"`` ...), and the
    message carries the worker's own complaint (its last stderr lines, or the
    health check that failed), so that a corrupt bundle reads as such.
    """

    def __init__(
        self, model: str, problem: str, *, path: str = "", hint: str | None = None
    ) -> None:
        self.model = model
        self.problem = problem
        self.path = path
        super().__init__(f"model {model!r}: {problem}", hint=hint)
