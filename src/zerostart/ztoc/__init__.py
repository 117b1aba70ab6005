"""zTOC: a seekable index of an existing gzip tar layer (SOCI's idea), format and builder.

An image that zerostart did not build (plain ``tar+gzip`` layers, no eStargz
TOC) can still be mounted lazily if something tells the mount, for each
layer, which tar entries it holds and where inflation may resume. The zTOC is
that: every entry's metadata and its data offset in the *uncompressed* tar
stream, and checkpoints every span of compressed bytes (bit offset,
uncompressed offset, the 32 KiB window, a sha256 of the span). A read of a
file fetches the spans under it by range, inflates each from its checkpoint
and verifies it; the layer blob and the image manifest are never changed.

Layout::

    _format.py   Ztoc, Checkpoint, Entry; encode / decode (validates untrusted input)
    _build.py    build(): one pass of zlib's inflate(Z_BLOCK) via ctypes (index time only)
    _span.py     inflate_span(): resume at a checkpoint in pure Python (mount time)
    _profile.py  SpanProfile: the spans a start read, in order (beside the zTOCs)

Standard library only; the mount imports ``_format``, ``_span`` and ``_profile``.
The artifact that carries zTOCs to a registry is described in
docs/lazy-images.md.
"""

from __future__ import annotations

from zerostart.ztoc._format import (
    DEFAULT_SPAN_BYTES,
    Checkpoint,
    Entry,
    Ztoc,
    ZtocError,
    decode,
    encode,
)
from zerostart.ztoc._profile import FORMAT as PROFILE_FORMAT
from zerostart.ztoc._profile import (
    MAX_PROFILE_BYTES,
    PROFILE_MEDIA_TYPE,
    LayerRef,
    SpanProfile,
    SpanProfileError,
    spans_digest,
)
from zerostart.ztoc._profile import bind as bind_profile
from zerostart.ztoc._profile import decode as decode_profile
from zerostart.ztoc._span import inflate_span

# The referrer artifact: its artifactType, each zTOC blob's media type, and the
# annotation on each zTOC naming the layer it indexes.
ARTIFACT_TYPE = "application/vnd.zerostart.ztoc.index.v1+json"
ZTOC_MEDIA_TYPE = "application/vnd.zerostart.ztoc.v1"
LAYER_ANNOTATION = "dev.zerostart.ztoc.layer.digest"
SPAN_ANNOTATION = "dev.zerostart.ztoc.span.bytes"

__all__ = [
    "ARTIFACT_TYPE",
    "DEFAULT_SPAN_BYTES",
    "LAYER_ANNOTATION",
    "MAX_PROFILE_BYTES",
    "PROFILE_FORMAT",
    "PROFILE_MEDIA_TYPE",
    "SPAN_ANNOTATION",
    "ZTOC_MEDIA_TYPE",
    "Checkpoint",
    "Entry",
    "LayerRef",
    "SpanProfile",
    "SpanProfileError",
    "Ztoc",
    "ZtocError",
    "bind_profile",
    "decode",
    "decode_profile",
    "encode",
    "inflate_span",
    "spans_digest",
]
