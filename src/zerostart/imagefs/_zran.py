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
against the span's sha256 from the zTOC before it is cached. The cache is the
mount's content-addressed chunk cache, keyed by that digest, so a span shared
by two images is fetched once. A span that fails its digest is fetched once
more, then the read fails (``EIO``), as for an eStargz chunk.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import Extent, ImageIndexError, LayerEntry
from zerostart.oci import sha256_digest
from zerostart.registry import _distribution as d
from zerostart.registry.errors import RegistryError
from zerostart.registry.referrers import list_referrers
from zerostart.ztoc import ARTIFACT_TYPE, LAYER_ANNOTATION, Ztoc, ZtocError, decode, inflate_span

if TYPE_CHECKING:
    from zerostart.imagefs._fetch import ChunkReader
    from zerostart.registry.ranges import BlobReader

log = logging.getLogger(__name__)

# A zTOC is ~0.2-4 % of its layer (1.2 % at the default 1 MiB span: bench/results/zran_index.json);
# one above this is refused before it is fetched.
MAX_ZTOC_BYTES = 64 * 1024 * 1024
GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"


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
        if x.get("mediaType") in GZIP_TYPES and TOC_ANNOTATION not in (x.get("annotations") or {})
    }
    if not layers:
        return {}
    try:
        listed = list_referrers(reader, manifest_digest, ARTIFACT_TYPE)
    except RegistryError as exc:  # the index is an optimisation: without it, layers come whole
        log.warning("imagefs: cannot list the referrers of %s: %s", manifest_digest, exc)
        return {}
    if not listed:
        return {}
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
    out: dict[str, Ztoc] = {}
    for desc in artifact.get("layers", []):
        layer = str((desc.get("annotations") or {}).get(LAYER_ANNOTATION, ""))
        if layer not in layers or layer in out:
            continue
        try:
            digest, size, _ = d.descriptor_for(desc)
        except d.ProtocolError as exc:
            raise ImageIndexError(f"index artifact {artifact_digest}: {exc}") from exc
        if size > MAX_ZTOC_BYTES:
            raise ImageIndexError(f"zTOC {digest} of layer {layer}: {size} bytes; refused")
        data = reader.read(digest, 0, size) if size else b""
        if sha256_digest(data) != digest:
            raise ImageIndexError(f"zTOC {digest} of layer {layer} does not match its digest")
        try:
            out[layer] = decode(data, blob_size=layers[layer])
        except ZtocError as exc:
            raise ImageIndexError(
                f"zTOC of layer {layer}: {exc}", hint="refusing to mount"
            ) from exc
    return out


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
    """Uncompressed bytes of one layer, by spans fetched, inflated and verified on demand."""

    def __init__(self, z: Ztoc) -> None:
        self.z = z
        self._starts = [c.out_offset for c in z.checkpoints]
        self._lock = threading.Lock()
        self._pending: dict[int, threading.Event] = {}

    def key(self, i: int) -> str:
        return "sha256:" + self.z.checkpoints[i].span_digest.hex()

    def pread(self, chunks: ChunkReader, layer: Layer, length: int, offset: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the layer's tar stream (short at its end)."""
        end = min(offset + length, self.z.out_size)
        parts = []
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while offset < end and i < len(self._starts):
            lo, hi = self._starts[i], self.z.span_end(i)
            if hi > offset:
                stop = min(end, hi)
                part = chunks.cache.read(self.key(i), offset - lo, stop - lo)
                if part is None:
                    part = self.span(chunks, layer, i)[offset - lo : stop - lo]
                parts.append(part)
                offset = stop
            i += 1
        return b"".join(parts)

    def span(self, chunks: ChunkReader, layer: Layer, i: int) -> bytes:
        """Span ``i``, verified: cache, a fetch already in flight, or one range request now."""
        key = self.key(i)
        while True:
            data = chunks.cache.get(key)
            if data is not None:
                return data
            with self._lock:
                waiting = self._pending.get(i)
                if waiting is None:
                    self._pending[i] = threading.Event()
            if waiting is None:
                break
            waiting.wait()
        try:
            data = self._fetch(chunks, layer, i)
            chunks.cache.put(key, data)
            return data
        finally:
            with self._lock:
                self._pending.pop(i).set()

    def _fetch(self, chunks: ChunkReader, layer: Layer, i: int) -> bytes:
        cp = self.z.checkpoints[i]
        start, end = self.z.span_range(i)
        length = self.z.span_end(i) - cp.out_offset
        for attempt in (1, 2):
            raw = chunks._range(layer, start, end)
            try:
                return inflate_span(cp, raw, length)
            except ZtocError as exc:
                with chunks._lock:
                    chunks.counters["digest_mismatches"] += 1
                message = f"layer {layer.digest[:19]} span {i}: {exc}; refused"
                log.warning("%s (attempt %d)", message, attempt)
        chunks._fail(message + " twice: the registry's copy is corrupt or was tampered with")
