"""Push and pull OCI image layouts to and from any OCI Distribution registry.

Standard library only (``http.client``): a push is a handful of requests per
blob, and the protocol rules live, free of I/O, in
:mod:`zerostart.registry._distribution`. This module is the thin driver: it owns
the sockets, the files and the translation of every failure into one of the
typed errors below, each naming the registry and how to fix the problem.

Guarantees:

* Push skips blobs the registry already has (``HEAD``), or mounts them from
  ``mount_from`` without sending a byte; a re-run after an interrupted push
  therefore only sends what is missing. Big layers go up in chunks; a transfer
  cut off by the network is resumed from the registry's own byte count where
  the registry allows it, else that one blob is sent again, in the same call.
* Pull checks every blob's size and sha256 while it streams, writes into a
  temporary file and renames it into place only once verified: an interrupted
  or tampered pull leaves no corrupt blob behind.
* Every network call has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.oci import OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION, sha256_digest
from zerostart.registry import _distribution as d
from zerostart.registry._http import (
    NETWORK_TIMEOUT_S,
    Auth,
    Body,
    FileSlice,
    Session,
)
from zerostart.registry.errors import (
    DigestMismatchError,
    ImageLayoutError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnreachableError,
)
from zerostart.registry.layout import Layout

__all__ = [
    "NETWORK_TIMEOUT_S",
    "DigestMismatchError",
    "ImageLayoutError",
    "Progress",
    "PullResult",
    "PushResult",
    "RegistryAuthError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryUnreachableError",
    "pull",
    "push",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# A blob upload cut off by the network is resumed or restarted this many times
# before the push gives up (a refused connection is not retried: nobody is there).
UPLOAD_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.5


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str
    media_type: str
    blobs_uploaded: int
    blobs_skipped: int
    blobs_mounted: int
    bytes_uploaded: int
    seconds: float


@dataclass(frozen=True)
class PullResult:
    reference: str
    digest: str
    media_type: str
    blobs_downloaded: int
    blobs_present: int
    bytes_downloaded: int
    seconds: float


# --------------------------------------------------------------------------- progress


class _Meter:
    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.total, self.done, self.step = progress, 0, 0, ""

    def start(self, step: str) -> None:
        self.step = step
        self.add(0)

    def add(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.step, self.done / self.total if self.total else 1.0)


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- push


def push(
    layout_dir: str | Path,
    reference: str,
    *,
    insecure: bool | None = None,
    auth: Auth | None = None,
    progress: Progress | None = None,
    mount_from: str | None = None,
    timeout_s: float = NETWORK_TIMEOUT_S,
    chunk_size_bytes: int = d.CHUNK_SIZE_BYTES,
    monolithic_max_bytes: int = d.MONOLITHIC_MAX_BYTES,
) -> PushResult:
    """Push the image in an OCI layout to ``reference`` (``host:port/name:tag``).

    ``insecure`` (plain HTTP) defaults to true for loopback registries only.
    ``mount_from`` names a repository on the same registry that may already
    hold the blobs (another model on the same runtime layers): they are
    mounted, not sent. Safe to run again after any failure.
    """
    try:
        ref = d.parse_reference(reference)
    except d.ProtocolError as exc:
        raise RegistryError(reference.split("/", 1)[0], str(exc)) from exc
    layout = Layout(Path(layout_dir))
    index = layout.index()
    session = Session(
        ref,
        insecure=insecure,
        auth=auth,
        timeout_s=timeout_s,
        scopes=d.scopes_for(ref, push=True, source=mount_from),
    )
    pusher = _Pusher(
        session, layout, _Meter(progress), mount_from, chunk_size_bytes, monolithic_max_bytes
    )
    t0 = time.perf_counter()
    try:
        top = d.select_manifest(index, ref.tag)
        if top is None:  # several images, none named by the tag: push the index itself
            data = (layout.root / "index.json").read_bytes()
            media_type = index.get("mediaType") or OCI_INDEX
            pusher.meter.total = sum(pusher.blobs_of(index, media_type).values())
            digest = pusher.push_tree(index, data, media_type, ref.target)
        else:
            data = layout.read_verified(top)
            manifest = json.loads(data)
            media_type = top.get("mediaType") or manifest.get("mediaType") or OCI_MANIFEST
            pusher.meter.total = sum(pusher.blobs_of(manifest, media_type).values())
            digest = pusher.push_tree(manifest, data, media_type, ref.target)
    except d.ProtocolError as exc:
        raise RegistryError(ref.registry, f"push {ref}: {exc}") from exc
    finally:
        session.close()
    return PushResult(
        str(ref),
        digest,
        media_type,
        pusher.uploaded,
        pusher.skipped,
        pusher.mounted,
        pusher.bytes_uploaded,
        time.perf_counter() - t0,
    )


class _Pusher:
    def __init__(
        self,
        session: Session,
        layout: Layout,
        meter: _Meter,
        mount_from: str | None,
        chunk_size_bytes: int,
        monolithic_max_bytes: int,
    ) -> None:
        self.s, self.layout, self.meter, self.mount_from = session, layout, meter, mount_from
        self.chunk_size_bytes, self.monolithic_max_bytes = chunk_size_bytes, monolithic_max_bytes
        self.uploaded = self.skipped = self.mounted = self.bytes_uploaded = 0
        self.done: set[str] = set()

    def blobs_of(self, manifest: dict[str, Any], media_type: str) -> dict[str, int]:
        """Every blob under a manifest (through nested indexes), by digest: shared layers once."""
        kids, are_manifests = d.children(manifest, media_type)
        if not are_manifests:
            return dict(d.descriptor_for(k)[:2] for k in kids)
        out: dict[str, int] = {}
        for kid in kids:
            child = json.loads(self.layout.read_verified(kid))
            out.update(self.blobs_of(child, kid.get("mediaType") or child.get("mediaType", "")))
        return out

    def push_tree(self, manifest: dict[str, Any], data: bytes, media_type: str, target: str) -> str:
        """Blobs (or child manifests) first, then the manifest: a registry checks references."""
        kids, are_manifests = d.children(manifest, media_type)
        for kid in kids:
            if not are_manifests:
                self.push_blob(kid)
                continue
            digest, _, kid_type = d.descriptor_for(kid)
            kid_data = self.layout.read_verified(kid)
            kid_manifest = json.loads(kid_data)
            kid_type = kid_type or kid_manifest.get("mediaType", "")
            if self._has_manifest(digest):  # the whole image is there: so are its blobs
                for blob, size in self.blobs_of(kid_manifest, kid_type).items():
                    if blob not in self.done:
                        self.done.add(blob)
                        self.skipped += 1
                        self.meter.add(size)
                continue
            self.push_tree(kid_manifest, kid_data, kid_type, digest)
        return self._put_manifest(data, media_type, target)

    def _has_manifest(self, digest: str) -> bool:
        ans = self.s.request(
            "HEAD", d.manifest_path(self.s.ref, digest), {"Accept": d.ACCEPT_MANIFESTS}
        )
        return ans.status == 200

    def _put_manifest(self, data: bytes, media_type: str, target: str) -> str:
        digest = sha256_digest(data)
        self.meter.start(f"manifest {_short(digest)} -> {self.s.ref.repository}:{target}")
        req = d.put_manifest(self.s.ref, media_type, len(data), target)
        ans = self.s.request(req.method, req.path, dict(req.headers), data)
        if ans.status != 201:
            raise self.s.error(ans, f"PUT manifest {self.s.ref}")
        stored = ans.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(self.s.netloc, f"stored manifest as {stored}, sent {digest}")
        return digest

    def push_blob(self, desc: dict[str, Any]) -> None:
        digest, size, _ = d.descriptor_for(desc)
        if digest in self.done:
            return
        path = self.layout.checked_blob(desc)
        ref = self.s.ref
        ans = self.s.request("HEAD", d.blob_path(ref, digest))
        if ans.status == 200:
            self.skipped += 1
            self.meter.start(f"exists  {_short(digest)} {_mb(size)}")
            self.meter.add(size)
            self.done.add(digest)
            return
        if ans.status != 404:
            raise self.s.error(ans, f"HEAD blob {digest}")
        self.meter.start(f"upload  {_short(digest)} {_mb(size)}")
        up = d.BlobUpload(digest, size, self.chunk_size_bytes, self.monolithic_max_bytes)
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                self._upload(up, path)
                break
            except RegistryUnreachableError as exc:
                if not exc.retryable or attempt == UPLOAD_ATTEMPTS:
                    raise
                log.info("upload of %s broke (%s); attempt %d", digest, exc, attempt + 1)
                time.sleep(RETRY_BACKOFF_S * attempt)
                up = self._recover(up)
        if up.mounted:
            self.mounted += 1
            self.meter.add(size)
        else:
            self.uploaded += 1
        self.done.add(digest)

    def _recover(self, up: d.BlobUpload) -> d.BlobUpload:
        """After a broken connection: ask where a chunked upload stands, else start over."""
        if up.state is d.UploadState.OPEN and not up.monolithic and up.location:
            ans = self.s.request("GET", up.location)
            if ans.status in (202, 204):
                before = up.offset
                up.resume(ans.status, ans.header("Range"), ans.header("Location"))
                self.meter.add(up.offset - before)
                return up
        self.meter.add(-up.offset)
        return d.BlobUpload(up.digest, up.size, up.chunk_size_bytes, up.monolithic_max_bytes)

    def _sent(self, n: int) -> None:
        self.bytes_uploaded += n
        self.meter.add(n)

    def _upload(self, up: d.BlobUpload, path: Path) -> None:
        ref = self.s.ref
        if up.state is d.UploadState.START:
            req = d.start_upload(ref, mount=up.digest, source=self.mount_from)
            ans = self.s.request(req.method, req.path, dict(req.headers), b"")
            if ans.status not in (201, 202):
                raise self.s.error(ans, f"POST upload {up.digest}")
            up.on_start(ans.status, ans.header("Location"))
            if up.mounted:
                return
        while (chunk := up.next_chunk()) is not None:
            offset, length = chunk
            assert up.location is not None
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": d.content_range(offset, length),
                "Content-Length": str(length),
            }
            body = FileSlice(path, offset, length, self._sent)
            ans = self.s.request("PATCH", up.location, headers, body)
            if ans.status != 202:
                raise self.s.error(ans, f"PATCH chunk {offset}+{length} of {up.digest}")
            up.on_chunk(ans.status, ans.header("Location"), length)
        url, offset, length = up.finish()
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        put_body: Body = FileSlice(path, offset, length, self._sent) if length else b""
        ans = self.s.request("PUT", url, headers, put_body)
        if ans.status != 201:
            raise self.s.error(ans, f"PUT blob {up.digest} (from {path})")
        up.on_finish(ans.status, ans.header("Docker-Content-Digest"))


# --------------------------------------------------------------------------- pull


def pull(
    reference: str,
    layout_dir: str | Path,
    *,
    insecure: bool | None = None,
    auth: Auth | None = None,
    progress: Progress | None = None,
    timeout_s: float = NETWORK_TIMEOUT_S,
) -> PullResult:
    """Pull ``reference`` into an OCI layout, verifying every byte against its digest.

    The layout may be new or already hold other images (it gains an
    ``index.json`` entry named by the tag). Blobs already present and intact
    are not fetched again, so a re-run after an interrupted pull is cheap.
    """
    try:
        ref = d.parse_reference(reference)
    except d.ProtocolError as exc:
        raise RegistryError(reference.split("/", 1)[0], str(exc)) from exc
    layout = Layout(Path(layout_dir))
    session = Session(
        ref, insecure=insecure, auth=auth, timeout_s=timeout_s, scopes=d.scopes_for(ref, push=False)
    )
    puller = _Puller(session, layout, _Meter(progress))
    t0 = time.perf_counter()
    try:
        top = puller.fetch_manifest(ref.target, ref.digest, None)
        puller.meter.total = sum(d.descriptor_for(b)[1] for b in puller.blobs)
        for desc in puller.blobs:
            puller.fetch_blob(desc)
        if ref.tag:
            top.setdefault("annotations", {})[REF_NAME_ANNOTATION] = ref.tag
        layout.add_to_index(top)
    except d.ProtocolError as exc:
        raise RegistryError(ref.registry, f"pull {ref}: {exc}") from exc
    finally:
        session.close()
    return PullResult(
        str(ref),
        top["digest"],
        top["mediaType"],
        puller.downloaded,
        puller.present,
        puller.bytes_downloaded,
        time.perf_counter() - t0,
    )


class _Puller:
    def __init__(self, session: Session, layout: Layout, meter: _Meter) -> None:
        self.s, self.layout, self.meter = session, layout, meter
        self.blobs: list[dict[str, Any]] = []
        self.downloaded = self.present = self.bytes_downloaded = 0
        self._seen: set[str] = set()

    def fetch_manifest(self, target: str, digest: str | None, size: int | None) -> dict[str, Any]:
        """Fetch, verify and store one manifest, then (recursively) the ones it lists."""
        req = d.get_manifest(self.s.ref, target)
        ans = self.s.request(req.method, req.path, dict(req.headers))
        if ans.status != 200:
            hint = (
                "check the name and tag; list tags with `skopeo list-tags`"
                if ans.status == 404
                else None
            )
            raise self.s.error(ans, f"manifest {self.s.ref.repository}:{target}", hint=hint)
        got = sha256_digest(ans.body)
        for expected, source in (
            (digest, "the reference"),
            (ans.header("Docker-Content-Digest"), "the registry"),
        ):
            if expected and expected != got:
                raise DigestMismatchError(
                    self.s.netloc,
                    f"manifest {target} is {got}, {source} says {expected}",
                    hint="the registry's storage is corrupt or was tampered with",
                )
        if size is not None and size != len(ans.body):
            raise DigestMismatchError(
                self.s.netloc, f"manifest {got}: {len(ans.body)} bytes, expected {size}"
            )
        try:
            manifest = json.loads(ans.body)
        except ValueError as exc:
            raise RegistryError(self.s.netloc, f"manifest {target} is not JSON") from exc
        header_type = (ans.header("Content-Type") or "").split(";")[0].strip()
        media_type = manifest.get("mediaType") or header_type or OCI_MANIFEST
        self.layout.write_atomic(self.layout.blob(got), ans.body)
        kids, are_manifests = d.children(manifest, media_type)
        for kid in kids:
            kid_digest, kid_size, _ = d.descriptor_for(kid)
            if are_manifests:
                self.fetch_manifest(kid_digest, kid_digest, kid_size)
            elif kid_digest not in self._seen:
                self._seen.add(kid_digest)
                self.blobs.append(kid)
        return {"mediaType": media_type, "digest": got, "size": len(ans.body)}

    def fetch_blob(self, desc: dict[str, Any]) -> None:
        digest, size, _ = d.descriptor_for(desc)
        if self.layout.has_blob(digest, size):
            self.present += 1
            self.meter.start(f"present {_short(digest)} {_mb(size)}")
            self.meter.add(size)
            return
        self.meter.start(f"fetch   {_short(digest)} {_mb(size)}")
        dest = self.layout.blob(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out:

                def write(block: bytes) -> None:
                    out.write(block)
                    self.bytes_downloaded += len(block)
                    self.meter.add(len(block))

                self.s.read_blob(digest, size, write)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.downloaded += 1
