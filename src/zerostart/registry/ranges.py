"""Reading an image in place: its manifest and config, and byte ranges of its blobs.

The lazy image filesystem (:mod:`zerostart.imagefs`) never pulls a layer
whole: it asks for the footer and table of contents of each layer, then for
the chunks a process reads. :class:`BlobReader` is the driver for that: one
keep-alive connection per calling thread (``http.client`` connections are not
thread-safe, and an on-demand read must not queue behind a prefetch), every
answer checked (manifest and config by digest; a range by its
``Content-Range``), every failure one of :mod:`zerostart.registry.errors`.

Retrying is the caller's policy (imagefs retries with back-off, then fails the
read with ``EIO``); this module makes one attempt per call, except for the
reconnect of a keep-alive connection the server had closed.
"""

from __future__ import annotations

import contextlib
import json
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from zerostart.oci import OCI_MANIFEST, sha256_digest
from zerostart.registry import _distribution as d
from zerostart.registry._http import NETWORK_TIMEOUT_S, Auth, Session
from zerostart.registry.errors import DigestMismatchError, RegistryError

# Config blobs are JSON of a few KiB; a registry answering more is broken or hostile.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le"}


def host_platform() -> tuple[str, str]:
    """``(os, architecture)`` of this host in OCI's (Go's) spelling, e.g. ``("linux", "amd64")``."""
    machine = platform.machine().lower()
    return "linux", _GO_ARCH.get(machine, machine)


@dataclass(frozen=True)
class RemoteImage:
    """A verified manifest and config of an image in a registry.

    ``layers`` are the manifest's layer descriptors, bottom first, as dicts
    (``digest``, ``size``, ``mediaType``, ``annotations``).
    """

    reference: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return [dict(layer) for layer in self.manifest.get("layers", [])]


class BlobReader:
    """Manifests, configs and byte ranges of one repository; safe to share between threads."""

    def __init__(
        self,
        reference: str,
        *,
        insecure: bool | None = None,
        auth: Auth | None = None,
        timeout_s: float = NETWORK_TIMEOUT_S,
    ) -> None:
        try:
            self.ref = d.parse_reference(reference)
        except d.ProtocolError as exc:
            raise RegistryError(reference.split("/", 1)[0], str(exc)) from exc
        self.insecure, self.auth, self.timeout_s = insecure, auth, timeout_s
        self._local = threading.local()
        self._sessions: list[Session] = []
        self._lock = threading.Lock()
        self.bytes_fetched = 0
        self.requests = 0

    # -- connections -----------------------------------------------------------

    def _session(self) -> Session:
        session: Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _new_session(self) -> Session:
        """A pull-scoped connection to this repository (each thread keeps one; ``stream`` its own)."""
        return Session(
            self.ref,
            insecure=self.insecure,
            auth=self.auth,
            timeout_s=self.timeout_s,
            scopes=d.scopes_for(self.ref, push=False),
        )

    def close(self) -> None:
        """Close every thread's connections (a later call opens new ones)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_fetched += n
            self.requests += 1

    # -- manifest and config ---------------------------------------------------------

    def image(self, want: tuple[str, str] | None = None) -> RemoteImage:
        """The image's manifest (an index resolved to ``want``, default this host) and config."""
        digest, manifest = self.manifest(want)
        return RemoteImage(str(self.ref), digest, manifest, self.config(manifest))

    def manifest(self, want: tuple[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        """``(digest, manifest)`` of the image for ``want`` (default: this host's platform)."""
        os_name, arch = want or host_platform()
        manifest, digest, media_type = self._manifest(self.ref.target, self.ref.digest)
        kids, are_manifests = self._children(manifest, media_type)
        if are_manifests:
            match = [
                k
                for k in kids
                if k.get("platform", {}).get("os") == os_name
                and k.get("platform", {}).get("architecture") == arch
            ]
            if not match:
                offered = sorted(
                    f"{k.get('platform', {}).get('os')}/{k.get('platform', {}).get('architecture')}"
                    for k in kids
                )
                raise RegistryError(
                    self.ref.registry,
                    f"{self.ref}: no image for {os_name}/{arch} (the index offers {', '.join(offered)})",
                )
            manifest, digest, media_type = self._manifest(match[0]["digest"], match[0]["digest"])
            self._children(manifest, media_type)
        return digest, manifest

    def config(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The image config a manifest names, verified against its digest."""
        config_digest, config_size, _ = self._descriptor(manifest.get("config") or {})
        if config_size > MAX_CONFIG_BYTES:
            raise RegistryError(self.ref.registry, f"config {config_digest}: {config_size} bytes")
        config_bytes = self.read(config_digest, 0, config_size) if config_size else b""
        if sha256_digest(config_bytes) != config_digest:
            raise DigestMismatchError(
                self.ref.registry,
                f"config {config_digest} does not match its digest",
                hint="the registry's storage is corrupt or was tampered with",
            )
        try:
            config: dict[str, Any] = json.loads(config_bytes) if config_bytes else {}
        except ValueError as exc:
            raise RegistryError(self.ref.registry, f"config {config_digest} is not JSON") from exc
        return config

    def _children(
        self, manifest: dict[str, Any], media_type: str
    ) -> tuple[list[dict[str, Any]], bool]:
        try:
            return d.children(manifest, media_type)
        except d.ProtocolError as exc:
            raise RegistryError(self.ref.registry, f"{self.ref}: {exc}") from exc

    def _descriptor(self, desc: dict[str, Any]) -> tuple[str, int, str]:
        try:
            return d.descriptor_for(desc)
        except d.ProtocolError as exc:
            raise RegistryError(self.ref.registry, f"{self.ref}: {exc}") from exc

    def _manifest(self, target: str, digest: str | None) -> tuple[dict[str, Any], str, str]:
        session = self._session()
        req = d.get_manifest(self.ref, target)
        ans = session.request(req.method, req.path, dict(req.headers))
        if ans.status != 200:
            raise session.error(ans, f"manifest {self.ref.repository}:{target}")
        self._count(len(ans.body))
        got = sha256_digest(ans.body)
        for expected in (digest, ans.header("Docker-Content-Digest")):
            if expected and expected != got:
                raise DigestMismatchError(
                    self.ref.registry,
                    f"manifest {target} is {got}, expected {expected}",
                    hint="the registry's storage is corrupt or was tampered with",
                )
        try:
            manifest = json.loads(ans.body)
        except ValueError as exc:
            raise RegistryError(self.ref.registry, f"manifest {target} is not JSON") from exc
        header_type = (ans.header("Content-Type") or "").split(";")[0].strip()
        return manifest, got, manifest.get("mediaType") or header_type or OCI_MANIFEST

    def manifest_document(self, digest: str) -> tuple[dict[str, Any], bytes, str]:
        """The manifest stored under ``digest``, verified against it: ``(parsed, bytes, media type)``.

        For documents named by digest elsewhere (a referrer, an index's
        child), whose exact bytes matter (a ``subject`` descriptor's size).
        """
        session = self._session()
        req = d.get_manifest(self.ref, d.check_digest(digest))
        ans = session.request(req.method, req.path, dict(req.headers))
        if ans.status != 200:
            raise session.error(ans, f"manifest {self.ref.repository}@{digest}")
        self._count(len(ans.body))
        if sha256_digest(ans.body) != digest:
            raise DigestMismatchError(
                self.ref.registry,
                f"manifest {digest} does not match its digest",
                hint="the registry's storage is corrupt or was tampered with",
            )
        try:
            doc: dict[str, Any] = json.loads(ans.body)
        except ValueError as exc:
            raise RegistryError(self.ref.registry, f"manifest {digest} is not JSON") from exc
        header = (ans.header("Content-Type") or "").split(";")[0].strip()
        return doc, ans.body, str(doc.get("mediaType") or header or OCI_MANIFEST)

    # -- blobs ----------------------------------------------------------------------------

    def read(self, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of blob ``digest`` in one range request.

        Raises :class:`RegistryUnreachableError` on a network failure,
        :class:`RegistryError` when the registry refuses or ignores the range.
        """
        session = self._session()
        headers = {"Range": d.range_header(start, end)}
        try:
            with session.stream(d.blob_path(self.ref, digest), headers, expect=(206,)) as resp:
                d.check_content_range(resp.getheader("Content-Range"), start, end)
                data = resp.read(end - start)
        except d.ProtocolError as exc:
            raise RegistryError(self.ref.registry, f"blob {digest}: {exc}") from exc
        if len(data) != end - start:
            raise RegistryError(
                self.ref.registry,
                f"blob {digest}: range {start}-{end - 1} cut short at {len(data)} bytes",
            )
        self._count(len(data))
        return data

    @contextlib.contextmanager
    def stream(self, digest: str, start: int, end: int) -> Iterator[Callable[[int], bytes]]:
        """Bytes ``[start, end)`` of a blob as they arrive: yields ``read(n)`` (b"" at the end).

        One range request on a connection of its own, closed afterwards, so a
        caller may stop reading early (a prefetch that is cancelled) without
        leaving unread bytes on a shared keep-alive connection.
        """
        session = self._new_session()
        headers = {"Range": d.range_header(start, end)}
        try:
            with session.stream(d.blob_path(self.ref, digest), headers, expect=(206,)) as resp:
                try:
                    d.check_content_range(resp.getheader("Content-Range"), start, end)
                except d.ProtocolError as exc:
                    raise RegistryError(self.ref.registry, f"blob {digest}: {exc}") from exc

                def read(n: int) -> bytes:
                    data = resp.read(n)
                    with self._lock:
                        self.bytes_fetched += len(data)
                    return data

                with self._lock:
                    self.requests += 1
                yield read
        finally:
            session.close()

    def read_all(self, digest: str, size: int, sink: Callable[[bytes], object]) -> None:
        """Stream a whole blob into ``sink``, checking its size and sha256 as it arrives."""

        def counted(block: bytes) -> None:
            sink(block)
            self._count(len(block))

        self._session().read_blob(digest, size, counted)
