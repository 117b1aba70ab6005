"""Plain gzip layers read lazily through their zTOC (SOCI-style index; :mod:`zerostart.ztoc`).

Theory of operation
-------------------
At mount, for an image whose layers are plain ``tar+gzip`` (no eStargz TOC),
:func:`find_ztocs` asks the registry for the image's referrers (the referrers
API, else the ``sha256-<hex>`` fallback tag), takes the newest artifact of
type :data:`~zerostart.ztoc.ARTIFACT_TYPE`, fetches its manifest by digest
(verified) and checks that its ``subject`` is this very image; then fetches
each layer's zTOC blob (verified by its digest, size bounded) and decodes it,
which validates every name, link and offset (:func:`zerostart.ztoc.decode`).
A layer with no zTOC is fetched whole, as before.

A file of such a layer is one extent: its data offset in the layer's
*uncompressed* tar stream. :class:`SpanReader` serves a read by the spans
under it: each span is one range request (``[checkpoint, next checkpoint)``
of the compressed blob), inflated from its checkpoint's window and checked
against the span's sha256 from the zTOC before it is cached. A span is a
chunk of the mount's :class:`~zerostart.imagefs._fetch.ChunkReader` (same
cache, keyed by that digest, so a span shared by two images is fetched once;
same one-fetch-per-digest, retries and prefetch). A span that fails its
digest is fetched once more, then the read fails (``EIO``), as for an
eStargz chunk.

Prefetch: the newest artifact may also carry a span profile
(:mod:`zerostart.ztoc._profile`; ``zerostart index REF --add-profile``).
After the mount is ready the daemon fetches it (:func:`find_profile`),
checks it against the mounted zTOCs (:func:`plan_spans`) and streams those
spans in its order with the chunk reader's profile prefetch, on-demand reads
first. A refused profile is logged and the spans come on demand.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zerostart.estargz import ChunkRef
from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import Extent, ImageIndexError, LayerEntry
from zerostart.oci import sha256_digest
from zerostart.registry import _distribution as d
from zerostart.registry.errors import RegistryError
from zerostart.registry.referrers import list_referrers
from zerostart.ztoc import (
    ARTIFACT_TYPE,
    LAYER_ANNOTATION,
    MAX_PROFILE_BYTES,
    PROFILE_MEDIA_TYPE,
    ZTOC_MEDIA_TYPE,
    SpanProfile,
    Ztoc,
    ZtocError,
    bind_profile,
    decode,
    decode_profile,
    inflate_span,
)

if TYPE_CHECKING:
    from zerostart.imagefs._fetch import ChunkReader
    from zerostart.registry.ranges import BlobReader

log = logging.getLogger(__name__)

# A zTOC is ~0.2-4 % of its layer (1.2 % at the default 1 MiB span: bench/results/zran_index.json);
# one above this is refused before it is fetched.
MAX_ZTOC_BYTES = 64 * 1024 * 1024
# What a zTOC may index: plain gzip tar layers, and zstd ones (at frame starts: ztoc/_zstd.py).
ZTOC_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    }
)
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"


def newest_artifact(
    reader: BlobReader, manifest_digest: str
) -> tuple[str, Mapping[str, Any]] | None:
    """The image's newest zTOC artifact ``(digest, manifest)``, checked to name this image.

    None when the registry lists none or refuses to list them (logged).
    Raises ImageIndexError for a listed artifact whose subject is another image.
    """
    try:
        listed = list_referrers(reader, manifest_digest, ARTIFACT_TYPE)
    except RegistryError as exc:  # the index is an optimisation: without it, layers come whole
        log.warning("imagefs: cannot list the referrers of %s: %s", manifest_digest, exc)
        return None
    if not listed:
        return None
    try:
        artifact_digest = d.check_digest(str(listed[-1].get("digest")))
    except d.ProtocolError as exc:
        raise ImageIndexError(f"referrer of {manifest_digest}: {exc}") from exc
    artifact, _, _ = reader.manifest_document(artifact_digest)  # verified by its digest
    subject = artifact.get("subject") or {}
    if subject.get("digest") != manifest_digest:
        raise ImageIndexError(
            f"index artifact {artifact_digest} names subject {subject.get('digest')!r}, "
            f"not this image ({manifest_digest}); refused"
        )
    return artifact_digest, artifact


def fetch_blob(
    reader: BlobReader, artifact: str, desc: Mapping[str, Any], limit: int, what: str
) -> bytes:
    """A blob of the artifact, its size bounded before the fetch and its digest checked after."""
    try:
        digest, size, _ = d.descriptor_for(desc)
    except d.ProtocolError as exc:
        raise ImageIndexError(f"index artifact {artifact}: {exc}") from exc
    if size > limit:
        raise ImageIndexError(f"{what} {digest}: {size} bytes, over the {limit} limit; refused")
    data = reader.read(digest, 0, size) if size else b""
    if sha256_digest(data) != digest:
        raise ImageIndexError(f"{what} {digest} does not match its digest")
    return data


def find_ztocs(
    reader: BlobReader, manifest_digest: str, manifest: Mapping[str, Any]
) -> dict[str, Ztoc]:
    """The zTOC of each plain gzip layer the image's newest index artifact covers, by layer digest.

    Returns {} when no layer needs one, or the registry lists none or refuses
    to list them (logged; the layers are then fetched whole). Raises
    ImageIndexError for an artifact or zTOC that is refused (wrong subject,
    bad digest, hostile entries): a mount never uses a half-trusted index.
    """
    layers = {
        str(x.get("digest")): int(x.get("size", 0))
        for x in manifest.get("layers", [])
        if x.get("mediaType") in ZTOC_LAYER_TYPES
        and TOC_ANNOTATION not in (x.get("annotations") or {})
    }
    if not layers:
        return {}
    found = newest_artifact(reader, manifest_digest)
    if found is None:
        return {}
    artifact_digest, artifact = found
    out: dict[str, Ztoc] = {}
    for desc in artifact.get("layers", []):
        layer = str((desc.get("annotations") or {}).get(LAYER_ANNOTATION, ""))
        if layer not in layers or layer in out or desc.get("mediaType") != ZTOC_MEDIA_TYPE:
            continue
        data = fetch_blob(reader, artifact_digest, desc, MAX_ZTOC_BYTES, f"zTOC of layer {layer}")
        try:
            out[layer] = decode(data, blob_size=layers[layer])
        except ZtocError as exc:
            raise ImageIndexError(
                f"zTOC of layer {layer}: {exc}", hint="refusing to mount"
            ) from exc
    return out


def find_profile(reader: BlobReader, manifest_digest: str) -> SpanProfile | None:
    """The span profile the image's newest index artifact carries, decoded; None when it has none.

    Raises ImageIndexError (a wrong subject, a blob over its bound or not
    matching its digest), SpanProfileError (:func:`zerostart.ztoc._profile.decode`),
    RegistryError: the caller logs it and reads on demand.
    """
    found = newest_artifact(reader, manifest_digest)
    if found is None:
        return None
    artifact_digest, artifact = found
    for desc in artifact.get("layers", []):
        if desc.get("mediaType") == PROFILE_MEDIA_TYPE:
            data = fetch_blob(reader, artifact_digest, desc, MAX_PROFILE_BYTES, "span profile")
            return decode_profile(data)
    return None


def plan_spans(profile: SpanProfile, layers: Sequence[Layer]) -> list[Extent]:
    """The spans ``profile`` names on this mount's zTOC layers, in its order, as chunk extents.

    Raises SpanProfileError when the profile does not fit the mount
    (:func:`zerostart.ztoc._profile.bind`).
    """
    zlayers = {la.digest: la for la in layers if la.spans is not None}
    bound = bind_profile(profile, {k: la.spans.z.checkpoints for k, la in zlayers.items()})
    return [zlayers[digest].spans.extent(zlayers[digest].index, i) for digest, i in bound]


def open_zran(index: int, desc: Mapping[str, Any], z: Ztoc) -> tuple[Layer, list[LayerEntry]]:
    """A plain gzip layer's :class:`Layer` (read through spans) and entries, from its zTOC."""
    layer = Layer(
        index,
        str(desc["digest"]),
        int(desc["size"]),
        note=f"zTOC, {len(z.entries)} entries, {len(z.checkpoints)} spans",
    )
    layer.spans = SpanReader(z)
    entries = [
        LayerEntry(
            path=e.name,
            kind=e.kind,
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            size=e.size,
            mtime_ns=e.mtime * 10**9,
            link=e.link,
            dev_major=e.dev_major,
            dev_minor=e.dev_minor,
            xattrs=dict(e.xattrs),
            extents=(Extent(index, 0, e.size, e.offset, e.offset + e.size),)
            if e.kind == "reg" and e.size
            else (),
        )
        for e in z.entries
    ]
    return layer, entries


class SpanReader:
    """Uncompressed bytes of one layer, by spans fetched, inflated and verified on demand.

    A span is fetched as a chunk of the mount's :class:`ChunkReader` (an
    :class:`Extent` whose blob range is the span's and whose digest is the
    span's sha256), so span reads share its one-fetch-per-digest bookkeeping,
    its retries, and its prefetch: a span profile's spans are streamed by
    :meth:`ChunkReader.prefetch_chunks` like an eStargz profile's chunks, and
    on-demand reads come first in the same way.
    """

    def __init__(self, z: Ztoc) -> None:
        self.z = z
        self._starts = [c.out_offset for c in z.checkpoints]
        self._firsts = [c.first_byte for c in z.checkpoints]  # strictly increasing (decode)

    def key(self, i: int) -> str:
        return "sha256:" + self.z.checkpoints[i].span_digest.hex()

    def spans_for(self, offset: int, end: int) -> range:
        """The indexes of the spans under ``[offset, end)`` of the uncompressed stream."""
        if offset >= end:
            return range(0)
        first = max(0, bisect.bisect_right(self._starts, offset) - 1)
        last = max(0, bisect.bisect_left(self._starts, end) - 1)
        return range(first, last + 1)

    def extent(self, layer: int, i: int) -> Extent:
        """Span ``i`` as a chunk: its uncompressed offset and length, its blob range, its digest."""
        start, end = self.z.span_range(i)
        out = self.z.checkpoints[i].out_offset
        length = self.z.span_end(i) - out
        ref = ChunkRef(f"span {i}", start, 0, out, length, self.key(i), end)
        return Extent(layer, out, length, start, end, ref)

    def verify(self, x: Extent, raw: bytes) -> bytes:
        """Inflate and check the span ``x`` (:meth:`extent`). Raises ZtocError."""
        i = bisect.bisect_left(self._firsts, x.start)  # by blob offset: empty spans share out
        return inflate_span(self.z.checkpoints[i], raw, x.size)

    def pread(self, chunks: ChunkReader, layer: Layer, length: int, offset: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the layer's tar stream (short at its end)."""
        end = min(offset + length, self.z.out_size)
        parts = []
        for i in self.spans_for(offset, end):
            lo, hi = self._starts[i], self.z.span_end(i)
            stop = min(end, hi)
            if stop <= offset:
                continue
            part = chunks.cache.read(self.key(i), offset - lo, stop - lo)
            if part is None:
                part = chunks.chunk(layer, self.extent(layer.index, i))[offset - lo : stop - lo]
            parts.append(part)
            offset = stop
        return b"".join(parts)
