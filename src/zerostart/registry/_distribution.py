"""OCI Distribution protocol logic, free of I/O.

Theory of operation
-------------------
Everything here takes strings, bytes and dicts and returns plain values or
:class:`Request` descriptions; nothing opens a socket or a file. The HTTP
driver in :mod:`zerostart.registry.client` sends the requests, feeds back the
answers, and turns failures into typed errors. Keeping the two apart means the
rules of the protocol (how a reference is spelled, which URL a step uses, how
an upload advances, what a ``WWW-Authenticate`` challenge asks for, whether a
blob's bytes match its digest) are tested as pure functions, without a server.

A blob upload is a small state machine (:class:`BlobUpload`)::

    START --POST--> OPEN --PATCH*--> OPEN --PUT ?digest=--> DONE
      \\--POST ?mount=&from= (201) -------------------------> DONE (mounted)

``OPEN`` knows the upload URL and how many bytes the registry holds. After a
broken connection the driver asks the registry (``GET`` on the upload URL) and
:meth:`BlobUpload.resume` rewinds the offset to the server's ``Range``, so a
chunked upload continues where the registry stopped instead of starting over.
Registries may refuse that (distribution 2.8 does once a chunk arrived only in
part: its signed upload state no longer matches); the driver then restarts the
blob in a new upload, so a broken link costs at most one blob, never the push.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from zerostart.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    is_sha256_digest,
)

ACCEPT_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])

DOCKER_HUB = "registry-1.docker.io"
# Manifests are small JSON documents; 4 MiB is the limit registries themselves
# enforce, so a bigger answer is a broken or hostile server, not an image.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


class ProtocolError(ValueError):
    """A value breaks the Distribution protocol; the driver wraps it in a RegistryError."""


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``, split the way Docker splits it.

    The first path component is a registry host only if it has a ``.`` or ``:``
    or is ``localhost``; otherwise the name lives on Docker Hub (``library/``
    added for one-component names). That rule is what ``docker push`` uses, so
    the same string names the same image in both tools.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def host(self) -> str:
        """The host without the port, for the loopback (plain HTTP) decision."""
        if self.registry.startswith("["):
            return self.registry[1:].split("]", 1)[0]
        return self.registry.rsplit(":", 1)[0] if self.registry.count(":") == 1 else self.registry

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str) -> Reference:
    """Parse an image reference; raise :class:`ProtocolError` naming what is wrong."""
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not is_sha256_digest(digest):
            raise ProtocolError(f"{text!r}: digest must be sha256:<64 hex digits>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ProtocolError(f"{text!r}: tag {tag!r} is not a valid tag")
    parts = rest.split("/", 1)
    if len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, repository = parts
    else:
        registry, repository = DOCKER_HUB, rest
        if "/" not in repository:
            repository = f"library/{repository}"
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
    if not repository or not _REPO_RE.match(repository):
        raise ProtocolError(
            f"{text!r}: repository {repository!r} must be lowercase letters, digits and separators"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def is_loopback(host: str) -> bool:
    """Loopback registries speak plain HTTP by default, as Docker's own client assumes."""
    return host in ("localhost", "::1") or host.startswith("127.")


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One HTTP request to make: the driver adds the host, auth and the body."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


def blob_path(ref: Reference, digest: str) -> str:
    return f"/v2/{ref.repository}/blobs/{digest}"


def manifest_path(ref: Reference, target: str | None = None) -> str:
    return f"/v2/{ref.repository}/manifests/{target or ref.target}"


def head_blob(ref: Reference, digest: str) -> Request:
    return Request("HEAD", blob_path(ref, digest))


def get_blob(ref: Reference, digest: str) -> Request:
    return Request("GET", blob_path(ref, digest))


def get_manifest(ref: Reference, target: str | None = None) -> Request:
    return Request("GET", manifest_path(ref, target), {"Accept": ACCEPT_MANIFESTS})


def put_manifest(ref: Reference, media_type: str, size: int, target: str | None = None) -> Request:
    headers = {"Content-Type": media_type, "Content-Length": str(size)}
    return Request("PUT", manifest_path(ref, target), headers)


def start_upload(ref: Reference, *, mount: str | None = None, source: str | None = None) -> Request:
    """``POST`` that opens an upload, or asks to mount ``mount`` from repository ``source``."""
    path = f"/v2/{ref.repository}/blobs/uploads/"
    if mount and source and source != ref.repository:
        path += "?" + urllib.parse.urlencode({"mount": mount, "from": source})
    return Request("POST", path, {"Content-Length": "0"})


def with_query(location: str, **params: str) -> str:
    """Add query parameters to an upload URL, keeping the registry's own (``_state`` ...)."""
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query.extend(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# --------------------------------------------------------------------------- uploads


class UploadState(enum.Enum):
    START = "start"
    OPEN = "open"
    DONE = "done"


# Monolithic up to this size: one PUT is one round trip; bigger layers go in
# chunks so a broken connection costs at most one chunk, not the whole layer.
MONOLITHIC_MAX_BYTES = 16 * 1024 * 1024
# 16 MiB chunks: large enough that per-request overhead (a round trip, one
# registry write) stays under 1 % on loopback and LAN, small enough to resend.
CHUNK_SIZE_BYTES = 16 * 1024 * 1024


@dataclass
class BlobUpload:
    """Where one blob's upload stands; the driver asks it what to send next."""

    digest: str
    size: int
    chunk_size_bytes: int = CHUNK_SIZE_BYTES
    monolithic_max_bytes: int = MONOLITHIC_MAX_BYTES
    state: UploadState = UploadState.START
    location: str | None = None
    offset: int = 0
    mounted: bool = False

    @property
    def monolithic(self) -> bool:
        return self.size <= self.monolithic_max_bytes

    def on_start(self, status: int, location: str | None) -> None:
        """The answer to the ``POST``: 201 = mounted, 202 = an upload URL to write to."""
        if self.state is not UploadState.START:
            raise ProtocolError(f"upload of {self.digest} already started")
        if status == 201:
            self.state, self.mounted = UploadState.DONE, True
            return
        if status != 202 or not location:
            raise ProtocolError(f"starting upload answered {status} without a Location")
        self.state, self.location = UploadState.OPEN, location

    def next_chunk(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the next ``PATCH``, or None when the bytes are all sent."""
        self._require(UploadState.OPEN)
        if self.monolithic or self.offset >= self.size:
            return None
        return self.offset, min(self.chunk_size_bytes, self.size - self.offset)

    def on_chunk(self, status: int, location: str | None, sent: int) -> None:
        self._require(UploadState.OPEN)
        if status != 202:
            raise ProtocolError(f"chunk at offset {self.offset} answered {status}")
        self.offset += sent
        self.location = location or self.location

    def resume(self, status: int, range_header: str | None, location: str | None) -> None:
        """After a broken connection: rewind to what the registry says it holds."""
        self._require(UploadState.OPEN)
        if status not in (202, 204):
            raise ProtocolError(f"upload status answered {status}: the upload is gone")
        self.offset = parse_range_end(range_header)
        self.location = location or self.location

    def finish(self) -> tuple[str, int, int]:
        """The closing ``PUT``: ``(url, body offset, body length)``."""
        self._require(UploadState.OPEN)
        assert self.location is not None
        if self.monolithic:
            return with_query(self.location, digest=self.digest), 0, self.size
        if self.offset != self.size:
            raise ProtocolError(f"closing upload at {self.offset} of {self.size} bytes")
        return with_query(self.location, digest=self.digest), self.size, 0

    def on_finish(self, status: int, returned_digest: str | None) -> None:
        self._require(UploadState.OPEN)
        if status != 201:
            raise ProtocolError(f"closing upload answered {status}")
        if returned_digest and returned_digest != self.digest:
            raise ProtocolError(f"registry stored {returned_digest}, expected {self.digest}")
        self.state = UploadState.DONE

    def _require(self, state: UploadState) -> None:
        if self.state is not state:
            raise ProtocolError(f"upload of {self.digest} is {self.state.value}, not {state.value}")


def parse_range_end(header: str | None) -> int:
    """``Range: 0-1023`` means 1024 bytes held; no header (or ``0-0`` of nothing) means 0."""
    if not header:
        return 0
    m = re.match(r"^(?:bytes=)?0-(\d+)$", header.strip())
    if not m:
        raise ProtocolError(f"unexpected upload Range header {header!r}")
    return int(m.group(1)) + 1


def content_range(offset: int, length: int) -> str:
    """Distribution's ``Content-Range`` for a ``PATCH``: inclusive, no ``bytes`` unit."""
    return f"{offset}-{offset + length - 1}"


def range_header(start: int, end: int) -> str:
    """RFC 9110 ``Range`` for bytes ``[start, end)`` of a blob (the header is inclusive)."""
    if not 0 <= start < end:
        raise ProtocolError(f"empty or negative byte range [{start}, {end})")
    return f"bytes={start}-{end - 1}"


def check_content_range(header: str | None, start: int, end: int) -> None:
    """A ``206`` answer's ``Content-Range`` must cover exactly ``[start, end)``.

    A registry (or a proxy, or blob storage behind a redirect) that answers a
    different range would hand us bytes of the wrong place in the blob; the
    chunk digest would catch it later, but here the message names the cause.
    """
    m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", (header or "").strip())
    if not m:
        raise ProtocolError(f"206 answer with Content-Range {header!r}, asked for [{start}, {end})")
    first, last = int(m.group(1)), int(m.group(2))
    if first != start or last != end - 1:
        raise ProtocolError(f"asked for bytes {start}-{end - 1}, registry sent {first}-{last}")


# --------------------------------------------------------------------------- digests


class Verifier:
    """Hash and count bytes as they stream; refuse the first byte past the size."""

    def __init__(self, digest: str, size: int) -> None:
        if not is_sha256_digest(digest):
            raise ProtocolError(f"unsupported digest {digest!r} (only sha256 is supported)")
        self.digest, self.size, self.seen = digest, size, 0
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > self.size:
            raise ProtocolError(f"{self.digest}: more than the expected {self.size} bytes")
        self._hash.update(data)

    def check(self) -> None:
        if self.seen != self.size:
            raise ProtocolError(f"{self.digest}: got {self.seen} bytes, expected {self.size}")
        got = "sha256:" + self._hash.hexdigest()
        if got != self.digest:
            raise ProtocolError(f"content digest {got} does not match {self.digest}")


def check_digest(digest: str) -> str:
    if not is_sha256_digest(digest):
        raise ProtocolError(f"unsupported digest {digest!r} (only sha256 is supported)")
    return digest


# --------------------------------------------------------------------------- manifests


def children(manifest: Mapping[str, Any], media_type: str) -> tuple[list[dict[str, Any]], bool]:
    """The descriptors a manifest points at, and whether they are manifests (an index).

    Blobs come config first, then layers in order: the order a registry needs
    them in before it accepts the manifest.
    """
    kind = manifest.get("mediaType") or media_type
    if kind in INDEX_TYPES or "manifests" in manifest:
        return [dict(d) for d in manifest.get("manifests", [])], True
    if kind in MANIFEST_TYPES or "layers" in manifest:
        blobs = [manifest["config"], *manifest.get("layers", [])]
        return [dict(d) for d in blobs], False
    raise ProtocolError(f"unsupported manifest media type {kind!r}")


def descriptor_for(descriptor: Mapping[str, Any]) -> tuple[str, int, str]:
    """``(digest, size, mediaType)`` of a descriptor, checked."""
    try:
        digest, size = str(descriptor["digest"]), int(descriptor["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"descriptor without a digest and size: {dict(descriptor)}") from exc
    return check_digest(digest), size, str(descriptor.get("mediaType", ""))


def select_manifest(index: Mapping[str, Any], tag: str | None) -> dict[str, Any] | None:
    """The descriptor to push from a layout's ``index.json``, or None to push the index.

    One entry: that one. Several: the one whose ``ref.name`` is the tag. Else
    the whole index goes up, so no image in the layout is left behind.
    """
    entries = list(index.get("manifests", []))
    if len(entries) == 1:
        return dict(entries[0])
    named = [e for e in entries if e.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag]
    return dict(named[0]) if len(named) == 1 else None


# --------------------------------------------------------------------------- errors and auth


def error_message(body: bytes) -> str:
    """The registry's own error text (``{"errors": [{"code", "message", "detail"}]}``)."""
    try:
        errors = json.loads(body.decode("utf-8", "replace"))["errors"]
        parts = []
        for e in errors:
            text = f"{e.get('code', 'ERROR')}: {e.get('message', '')}".rstrip(": ")
            if e.get("detail") not in (None, "", {}, []):
                text += f" ({json.dumps(e['detail'], sort_keys=True)})"
            parts.append(text)
        return "; ".join(parts)
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()


def error_codes(body: bytes) -> set[str]:
    try:
        return {str(e.get("code")) for e in json.loads(body)["errors"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def token_url(params: Mapping[str, str], scopes: Iterable[str]) -> str:
    """The token endpoint URL for a Bearer challenge, asking for every scope we need."""
    realm = params.get("realm")
    if not realm:
        raise ProtocolError("Bearer challenge without a realm")
    query: list[tuple[str, str]] = []
    if params.get("service"):
        query.append(("service", params["service"]))
    wanted = list(dict.fromkeys([*scopes, *params.get("scope", "").split()]))
    query.extend(("scope", s) for s in wanted if s)
    sep = "&" if "?" in realm else "?"
    return realm + (sep + urllib.parse.urlencode(query) if query else "")


def parse_token(body: bytes) -> str:
    try:
        data = json.loads(body)
        token = data.get("token") or data.get("access_token")
    except (ValueError, AttributeError) as exc:
        raise ProtocolError("token endpoint answered something that is not JSON") from exc
    if not token:
        raise ProtocolError("token endpoint answered without a token")
    return str(token)


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def docker_config_credentials(config: Mapping[str, Any], registry: str) -> tuple[str, str] | None:
    """Credentials for ``registry`` from a parsed ``~/.docker/config.json`` ``auths`` map.

    Matches the host as written and with a scheme, as ``docker login`` stores
    it; Docker Hub is stored under its legacy index URL.
    """
    auths = config.get("auths") or {}
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    for key in keys:
        entry = auths.get(key) or auths.get(key.rstrip("/") + "/")
        if not entry:
            continue
        if entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ProtocolError(f"docker config: bad auth entry for {key}") from exc
            return user, password
    return None


def scopes_for(ref: Reference, *, push: bool, source: str | None = None) -> list[str]:
    """Token scopes for one operation: pull (and push) on the repo, pull on a mount source."""
    actions = "pull,push" if push else "pull"
    out = [f"repository:{ref.repository}:{actions}"]
    if source and source != ref.repository:
        out.append(f"repository:{source}:pull")
    return out
