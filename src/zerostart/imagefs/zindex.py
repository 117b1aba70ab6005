"""``zerostart index REF``: a SOCI-style index for an image zerostart did not build, pushed beside it.

For each plain ``tar+gzip`` (or ``tar+zstd``: checkpoints at frame starts,
ztoc/_zstd.py) layer of the image (no eStargz TOC), the layer is
downloaded once (sha256 checked as it streams), inflated once with
checkpoints every span (:mod:`zerostart.ztoc`), and its zTOC is written.
The zTOCs go to the registry as one OCI artifact manifest::

    artifactType  application/vnd.zerostart.ztoc.index.v1+json
    config        the empty descriptor ({}), as OCI 1.1 artifacts use
    layers        one zTOC blob per indexed layer, annotated with the layer's digest
    subject       the image manifest (digest, size, media type)

pushed by digest (no tag of its own) and listed as a referrer of the image:
the registry's referrers API lists it where the registry has one, else the
tag-schema fallback index ``sha256-<hex>`` does
(:mod:`zerostart.registry.referrers`). Nothing of the image changes: not its
manifest, not its digest, not its tags.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import ZerostartError
from zerostart.oci import OCI_INDEX, OCI_MANIFEST, sha256_digest
from zerostart.registry._http import Auth
from zerostart.registry.client import push
from zerostart.registry.ranges import BlobReader
from zerostart.registry.referrers import add_referrer
from zerostart.ztoc import (
    ARTIFACT_TYPE,
    DEFAULT_SPAN_BYTES,
    LAYER_ANNOTATION,
    PROFILE_MEDIA_TYPE,
    SPAN_ANNOTATION,
    ZTOC_MEDIA_TYPE,
    ZtocError,
    encode,
)

GZIP_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
# zstd layers are indexed at frame starts (ztoc/_zstd.py): many spans from pzstd or
# zstd:chunked, one span for a single-frame writer (the zstd CLI, Go's klauspost/compress).
ZSTD_LAYER_TYPES = frozenset({"application/vnd.oci.image.layer.v1.tar+zstd"})
ESTARGZ_TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


class IndexBuildError(ZerostartError):
    """An image cannot be indexed: no gzip layer, or a layer that is not a gzip tar."""


@dataclass
class IndexResult:
    """What ``zerostart index`` did: per layer, indexed or skipped and why."""

    reference: str
    manifest_digest: str
    artifact_digest: str = ""
    fallback_tag: bool = False
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _blob(folder: Path, data: bytes) -> dict[str, Any]:
    digest = sha256_digest(data)
    path = folder / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _index_layer(
    reader: BlobReader, desc: dict[str, Any], span_bytes: int, work: Path
) -> tuple[bytes, dict[str, Any]]:
    from zerostart.ztoc._build import build  # ctypes + tarfile: index time only

    digest, size = desc["digest"], int(desc["size"])
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(dir=work) as f:
        reader.read_all(digest, size, f.write)  # sha256 checked while it streams
        t_fetch = time.perf_counter()
        f.seek(0)
        try:
            z = build(f, span_bytes)  # type: ignore[arg-type]
        except ZtocError as exc:
            raise IndexBuildError(f"layer {digest}: {exc}") from exc
    if z.blob_size != size:
        raise IndexBuildError(
            f"layer {digest}: {z.blob_size} bytes of gzip, descriptor says {size}"
        )
    data = encode(z)
    windows = sum(len(c.window) for c in z.checkpoints)
    return data, {
        "digest": digest,
        "size": size,
        "uncompressed": z.out_size,
        "entries": len(z.entries),
        "checkpoints": len(z.checkpoints),
        "ztoc_bytes": len(data),
        "window_bytes": windows,
        "fetch_s": round(t_fetch - t0, 3),
        "build_s": round(time.perf_counter() - t_fetch, 3),
    }


def _push_artifact(
    reader: BlobReader,
    layout: Path,
    subject: dict[str, Any],
    layers: list[dict[str, Any]],
    annotations: dict[str, str],
    *,
    insecure: bool | None,
    auth: Auth | None,
) -> tuple[str, bool]:
    """Push the artifact (``layers``' blobs already in ``layout``) by digest and list it as a
    referrer of ``subject``; returns its digest and whether the fallback tag was written."""
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, **_blob(layout, EMPTY_JSON)},
        "layers": layers,
        "subject": subject,
        "annotations": annotations,
    }
    body = json.dumps(artifact, separators=(",", ":")).encode()
    top = {"mediaType": OCI_MANIFEST, **_blob(layout, body)}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    ref = reader.ref
    repo = f"{ref.registry}/{ref.repository}"
    pushed = push(layout, f"{repo}@{top['digest']}", insecure=insecure, auth=auth)
    listed = {**top, "artifactType": ARTIFACT_TYPE, "annotations": annotations}
    fallback = add_referrer(repo, subject["digest"], listed, insecure=insecure, auth=auth)
    return pushed.digest, fallback


def index_image(
    reference: str,
    *,
    span_bytes: int = DEFAULT_SPAN_BYTES,
    insecure: bool | None = None,
    auth: Auth | None = None,
) -> IndexResult:
    """Build the zTOCs of ``reference``'s gzip layers and push them as a referrer artifact.

    Raises IndexBuildError when no layer can be indexed (all eStargz, or another
    compression) or a layer is not a gzip tar; RegistryError for the registry.
    """
    t0 = time.perf_counter()
    reader = BlobReader(reference, insecure=insecure, auth=auth)
    try:
        digest, manifest = reader.manifest()
        _, subject_bytes, subject_type = reader.manifest_document(digest)
        result = IndexResult(str(reader.ref), digest)
        with tempfile.TemporaryDirectory(prefix="zerostart-index-") as tmp:
            work = Path(tmp)
            layout = work / "layout"
            ztocs = []
            for desc in manifest.get("layers", []):
                media = desc.get("mediaType", "")
                if ESTARGZ_TOC_ANNOTATION in (desc.get("annotations") or {}):
                    result.layers.append({"digest": desc["digest"], "skipped": "eStargz"})
                    continue
                if media not in GZIP_LAYER_TYPES | ZSTD_LAYER_TYPES:
                    result.layers.append({"digest": desc["digest"], "skipped": media})
                    continue
                data, info = _index_layer(reader, desc, span_bytes, work)
                blob = _blob(layout, data)
                annotations = {LAYER_ANNOTATION: desc["digest"]}
                ztocs.append({"mediaType": ZTOC_MEDIA_TYPE, **blob, "annotations": annotations})
                result.layers.append(info)
            if not ztocs:
                raise IndexBuildError(
                    f"{reference}: no plain gzip layer to index",
                    hint="eStargz images (zerostart build) mount lazily without an index",
                )
            subject = {"mediaType": subject_type, "digest": digest, "size": len(subject_bytes)}
            annotations = {SPAN_ANNOTATION: str(span_bytes)}
            pushed = _push_artifact(
                reader, layout, subject, ztocs, annotations, insecure=insecure, auth=auth
            )
        result.artifact_digest, result.fallback_tag = pushed
    finally:
        reader.close()
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def add_profile(
    reference: str,
    profile_bytes: bytes,
    *,
    insecure: bool | None = None,
    auth: Auth | None = None,
) -> IndexResult:
    """Put a recorded span profile beside the zTOCs of ``reference``'s newest index artifact.

    The profile (``run REF --lazy --record-profile FILE``) is decoded and
    checked against that artifact's zTOCs (:func:`zerostart.ztoc.bind_profile`)
    before anything is pushed; then a new artifact with the same zTOCs and the
    profile (:data:`~zerostart.ztoc.PROFILE_MEDIA_TYPE`) is pushed and listed
    as the image's newest referrer. The image is not touched. An earlier
    profile is replaced. Raises IndexBuildError (no index artifact yet: run
    ``zerostart index REF`` first), SpanProfileError (the profile does not fit
    this image's zTOCs, or is malformed), ImageIndexError, RegistryError.
    """
    from zerostart.imagefs._zran import MAX_ZTOC_BYTES, fetch_blob, newest_artifact
    from zerostart.ztoc import bind_profile, decode, decode_profile

    t0 = time.perf_counter()
    profile = decode_profile(profile_bytes)
    reader = BlobReader(reference, insecure=insecure, auth=auth)
    try:
        digest, manifest = reader.manifest()
        _, subject_bytes, subject_type = reader.manifest_document(digest)
        result = IndexResult(str(reader.ref), digest)
        found = newest_artifact(reader, digest)  # its subject checked: this image
        if found is None:
            raise IndexBuildError(
                f"{reference}: no zTOC index artifact to add the profile to",
                hint=f"run `zerostart index {reference}` first",
            )
        artifact_digest, old = found
        sizes = {str(x.get("digest")): int(x.get("size", 0)) for x in manifest.get("layers", [])}
        with tempfile.TemporaryDirectory(prefix="zerostart-index-") as tmp:
            layout = Path(tmp) / "layout"
            layers, spans = [], {}
            for desc in old.get("layers", []):
                if desc.get("mediaType") != ZTOC_MEDIA_TYPE:
                    continue  # the earlier profile, replaced
                layer = str((desc.get("annotations") or {}).get(LAYER_ANNOTATION, ""))
                data = fetch_blob(reader, artifact_digest, desc, MAX_ZTOC_BYTES, "zTOC")
                if layer in sizes:
                    try:
                        spans[layer] = decode(data, blob_size=sizes[layer]).checkpoints
                    except ZtocError as exc:
                        raise IndexBuildError(f"zTOC of layer {layer}: {exc}") from exc
                _blob(layout, data)
                layers.append(dict(desc))
            bind_profile(profile, spans)  # the profile fits these zTOCs, or nothing is pushed
            blob = _blob(layout, profile.encode())
            layers.append({"mediaType": PROFILE_MEDIA_TYPE, **blob})
            result.layers = [{"profile_reads": len(profile.reads), "profile_bytes": blob["size"]}]
            subject = {"mediaType": subject_type, "digest": digest, "size": len(subject_bytes)}
            result.artifact_digest, result.fallback_tag = _push_artifact(
                reader,
                layout,
                subject,
                layers,
                dict(old.get("annotations") or {}),
                insecure=insecure,
                auth=auth,
            )
    finally:
        reader.close()
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
