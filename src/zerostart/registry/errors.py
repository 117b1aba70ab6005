"""The errors push and pull raise: one per thing a user has to do differently.

Each names the registry (``host:port``) and carries the registry's own error
text and codes, so what a user sees matches the registry's documentation.
"""

from __future__ import annotations

from zerostart.errors import ImageError, ZerostartError


class RegistryError(ZerostartError):
    """A registry refused a request; carries its status and its own error message."""

    def __init__(
        self,
        registry: str,
        message: str,
        *,
        status: int | None = None,
        codes: frozenset[str] = frozenset(),
        hint: str | None = None,
    ) -> None:
        self.registry, self.status, self.codes = registry, status, codes
        super().__init__(f"registry {registry}: {message}", hint=hint)


class RegistryAuthError(RegistryError):
    """401/403: no, wrong or insufficient credentials."""


class RegistryNotFoundError(RegistryError):
    """404: the repository, tag or blob does not exist."""


class RegistryUnreachableError(RegistryError):
    """The network failed: refused, timed out, or cut off mid-transfer.

    ``retryable`` is true when a connection was made and then broken, the
    case where trying again can help.
    """

    def __init__(self, registry: str, message: str, *, retryable: bool, hint: str) -> None:
        self.retryable = retryable
        super().__init__(registry, message, hint=hint)


class DigestMismatchError(RegistryError):
    """Bytes from the registry do not match the digest or size that names them."""


class ImageLayoutError(ImageError):
    """The local OCI image layout is missing a file or a file does not match its descriptor.

    An :class:`~zerostart.errors.ImageError`, like what the layout reader
    (``zerostart.oci.read_oci_layout``) raises for the same faults.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")
