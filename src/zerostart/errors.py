"""One exception root for everything zerostart raises.

Library code raises these; only the CLI decides how to show them (no tracebacks
unless ``--debug``). Each error carries the context a user needs to fix the
problem: the file, the field, the command, and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence


class ZerostartError(Exception):
    """Root of every error zerostart raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class BundleError(ZerostartError):
    """A model folder or bundle is missing something, is corrupt, or was tampered with.

    ``path`` names the file (or folder) at fault so the message points at it.
    """

    def __init__(self, path: object, problem: str, *, hint: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}", hint=hint)


class ConvertError(BundleError):
    """A Hugging Face model folder cannot be converted into a bundle."""


class TokenizerError(ZerostartError):
    """Tokenizer files are unusable or an input cannot be tokenised."""


class EngineError(ZerostartError):
    """The inference engine cannot run this model or these inputs."""


class InputError(ZerostartError):
    """A request's input is invalid; the server maps it to an HTTP 4xx.

    ``status`` is the HTTP status the server answers with (400, 413, 422, ...).
    """

    def __init__(self, message: str, *, status: int = 422, error_type: str = "Validation") -> None:
        self.status = status
        self.error_type = error_type
        super().__init__(message)


class ServeError(ZerostartError):
    """The server cannot start (port in use, bad bundle, ...)."""


class PathEscapeError(ZerostartError):
    """A name from a document (layer, manifest, table of contents) would leave its folder.

    ``name`` is the name as the document gave it; ``problem`` says why it is
    refused. Raised by :mod:`zerostart.paths`; callers re-raise it as their own
    error type, chained with ``from``.
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name!r} {problem}")


STDERR_TAIL_CHARS = 2000  # enough for a Go panic's first frames, short enough for a terminal


class ImageError(ZerostartError):
    """An image cannot be built, read or unpacked (bad layout, missing blob, failed trace).

    Raised by the image builder (``zerostart.image``), the OCI layout reader
    (``zerostart.oci``) and the container runner (``zerostart.container``): one
    type, so a caller of any of them catches one thing.
    """


class RuntimeToolError(ZerostartError):
    """An outside program (runc, crun, strip, mount, ...) failed, timed out or is missing.

    ``command`` is the argv that ran, ``returncode`` its exit status (``None``
    when it never started or timed out) and ``stderr`` the last
    ``STDERR_TAIL_CHARS`` of what it said: the tool's own words, because that
    is what a user pastes into a search box.
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
