"""Errors of the image builder and the container runner.

Both derive from :class:`zerostart.errors.ZerostartError`, so the CLI shows
them as one line with a hint. An outside tool's failure keeps the tool's own
words (``stderr``) because that is what a user pastes into a search box.
"""

from __future__ import annotations

from collections.abc import Sequence

from zerostart.errors import ZerostartError

STDERR_TAIL_CHARS = 2000  # enough for a Go panic's first frames, short enough for a terminal


class ImageError(ZerostartError):
    """An image cannot be built, read or unpacked (bad layout, missing blob, failed trace)."""


class RuntimeToolError(ZerostartError):
    """An outside program (runc, crun, strip, ...) failed, timed out or is missing.

    ``command`` is the argv that ran, ``returncode`` its exit status (``None``
    when it never started or timed out) and ``stderr`` the tail of what it said.
    """

    def __init__(
        self,
        command: Sequence[str],
        problem: str,
        *,
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr[-STDERR_TAIL_CHARS:]
        tool = self.command[0] if self.command else "?"
        message = f"{tool}: {problem}"
        if self.stderr.strip():
            message += f": {self.stderr.strip()}"
        super().__init__(message, hint=hint)
