"""The span profile: which spans of which zTOC-indexed layers a start read, first read first.

An image zerostart did not build keeps its digest, so nothing can be added to
it: the profile travels beside the zTOCs, as one more blob of the referring
artifact (media type :data:`PROFILE_MEDIA_TYPE`), as SOCI and Nydus keep
such data beside their index. A mount started with ``record`` writes it
(imagefs/_profile.py); ``zerostart index REF --add-profile FILE`` pushes it;
a later lazy start prefetches those spans in its order (imagefs/_zran.py).

Format (JSON, UTF-8)::

    {"format": "zerostart.ztoc-profile", "version": 1,
     "layers": [{"digest": "sha256:<layer>", "spans": "sha256:<span list>"}, ...],
     "reads": [[0, 12], [0, 3], [1, 0], ...]}     # [index into layers, span index]

Entries name spans, not files: a span is the unit a zTOC layer is fetched
and verified in, and a start that touches 40 kB of a 9 MB library fetches
only the spans under those 40 kB. A span index means something only for
the span list it was recorded on, so each layer is named by its digest and
by :func:`spans_digest` of its zTOC (the sha256 of its spans' digests, in
order): a profile recorded against a zTOC with other spans (another span
size, another layer) is refused, never applied to the wrong bytes.

Everything in a profile is untrusted. :func:`decode` checks the shape and
the limits (:data:`MAX_PROFILE_BYTES`, :data:`MAX_READS`, :data:`MAX_LAYERS`,
digests of the ``sha256:<64 hex>`` form, layer indexes into ``layers``, span
indexes below the zTOC format's own limit); :func:`bind` checks it against
the mount (every layer is one of the image's zTOC layers, with the same span
list; every span index is below that layer's span count). Either refuses the
whole profile with :class:`SpanProfileError`; the mount then reads on demand.

Leaf module: the standard library and zerostart/chunkprofile.py (the shared document checks).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zerostart.chunkprofile import index_pairs, lists_of
from zerostart.ztoc._format import MAX_CHECKPOINTS, Checkpoint, ZtocError

FORMAT = "zerostart.ztoc-profile"
VERSION = 1
PROFILE_MEDIA_TYPE = "application/vnd.zerostart.ztoc.profile.v1+json"
# A 1.4 GB image at 256 KiB spans has ~2,000 spans per 500 MB of gzip; a start reads a
# fraction of them. 2^20 reads (the zTOC's own span limit) at ~10 bytes each fit in 16 MiB.
MAX_PROFILE_BYTES = 16 * 1024 * 1024
MAX_READS = MAX_CHECKPOINTS
MAX_LAYERS = 128  # OCI images rarely exceed ~100 layers (overlayfs' own limit is ~128 lower dirs)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


class SpanProfileError(ZtocError):
    """A span profile that is malformed, hostile, or for other spans; the mount reads on demand."""


@dataclass(frozen=True)
class LayerRef:
    """A layer as a profile names it: its digest and the digest of its zTOC's span list."""

    digest: str
    spans: str


@dataclass(frozen=True)
class SpanProfile:
    """``reads``: ``(index into layers, span index)`` in first-read order, each once."""

    layers: tuple[LayerRef, ...]
    reads: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        """The JSON document (deterministic)."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "layers": [{"digest": la.digest, "spans": la.spans} for la in self.layers],
            "reads": [list(r) for r in self.reads],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def spans_digest(checkpoints: Sequence[Checkpoint]) -> str:
    """``sha256:`` of the spans' sha256 digests, in order: names the span list of one zTOC.

    Two zTOCs of one layer with the same checkpoints have the same span
    digests (each span's uncompressed bytes), whatever else differs.
    """
    h = hashlib.sha256()
    for cp in checkpoints:
        h.update(cp.span_digest)
    return "sha256:" + h.hexdigest()


def decode(data: bytes) -> SpanProfile:
    """Parse and check a profile document. Raises :class:`SpanProfileError` saying what is wrong."""
    layers, reads = lists_of(
        data,
        fmt=FORMAT,
        version=VERSION,
        max_bytes=MAX_PROFILE_BYTES,
        limits={"layers": MAX_LAYERS, "reads": MAX_READS},
        error=SpanProfileError,
    )
    refs = []
    for la in layers:
        if not isinstance(la, dict) or set(la) != {"digest", "spans"}:
            raise SpanProfileError(f"layer {str(la)[:80]} is not {{'digest', 'spans'}}")
        digest, spans = la["digest"], la["spans"]
        if not all(isinstance(v, str) and _DIGEST.match(v) for v in (digest, spans)):
            raise SpanProfileError(f"layer {str(la)[:160]}: not sha256 digests")
        refs.append(LayerRef(digest, spans))
    if len({r.digest for r in refs}) != len(refs):
        raise SpanProfileError("profile names a layer twice")
    out = index_pairs(reads, (len(refs), MAX_CHECKPOINTS), "layer index, span", SpanProfileError)
    return SpanProfile(tuple(refs), tuple(dict.fromkeys(out)))


def bind(profile: SpanProfile, layers: Mapping[str, Sequence[Checkpoint]]) -> list[tuple[str, int]]:
    """The profile's reads as ``(layer digest, span index)`` on this image, in order.

    ``layers``: the checkpoints of each zTOC layer of the mounted image, by
    layer digest. Raises :class:`SpanProfileError` for a layer the image
    does not have (or has without a zTOC), a layer whose span list is not
    the one the profile was recorded on, or a span index past the layer's
    last span: the profile is refused whole.
    """
    spans: list[int] = []
    for ref in profile.layers:
        cps = layers.get(ref.digest)
        if cps is None:
            raise SpanProfileError(
                f"profile names layer {ref.digest}, which is not a zTOC layer of this image"
            )
        if spans_digest(cps) != ref.spans:
            raise SpanProfileError(
                f"profile of layer {ref.digest} was recorded on other spans ({ref.spans}); "
                f"this zTOC's are {spans_digest(cps)}"
            )
        spans.append(len(cps))
    for li, span in profile.reads:
        if span >= spans[li]:
            raise SpanProfileError(
                f"span {span} of layer {profile.layers[li].digest} is out of range: "
                f"its zTOC has {spans[li]} spans"
            )
    return [(profile.layers[li].digest, span) for li, span in profile.reads]
