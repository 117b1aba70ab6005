"""Errors raised by snapshot and restore.

They live here rather than in ``zerostart.errors`` only because that file is
shared; all derive from ``ZerostartError`` so the CLI shows them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from zerostart.errors import ZerostartError


class SnapshotError(ZerostartError):
    """A snapshot cannot be taken or restored."""


class CriuError(SnapshotError):
    """``criu`` is missing, failed, or timed out; carries its command and its own message."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        output: str = "",
        hint: str | None = None,
    ) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.output = output
        detail = f": {output.strip().splitlines()[-1]}" if output.strip() else ""
        super().__init__(f"{message}{detail}", hint=hint)


class CorruptSnapshotError(SnapshotError):
    """A snapshot's files do not match their recorded digests (or the manifest was edited)."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(
            f"{self.path}: {problem}",
            hint="take the snapshot again with `zerostart snapshot`",
        )


class IncompatibleSnapshotError(SnapshotError):
    """Restoring here would not be valid: the host or a mapped file differs from the snapshot's."""

    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.name = name
        self.problems = list(problems)
        listing = "; ".join(self.problems)
        super().__init__(
            f"snapshot {name!r} cannot be restored on this host: {listing}",
            hint="take a new snapshot on this host, or let restore boot the command",
        )


class ReadinessError(SnapshotError):
    """The process exited or did not become ready (health URL 200) in time."""


class CudaCheckpointError(SnapshotError):
    """A CUDA driver checkpoint call failed; carries the driver's own error name and string."""

    def __init__(self, call: str, code: int, name: str, text: str, *, pid: int) -> None:
        self.call = call
        self.code = code
        self.pid = pid
        super().__init__(f"{call}(pid {pid}) failed: {name} ({code}): {text}")


class CudaUnavailableError(CudaCheckpointError):
    """No usable libcuda here: no driver, or a driver without the checkpoint API."""

    def __init__(self, reason: str, *, hint: str) -> None:
        ZerostartError.__init__(self, reason, hint=hint)
        self.call = ""
        self.code = -1
        self.pid = -1
