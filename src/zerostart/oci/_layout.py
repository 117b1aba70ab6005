"""Reading an OCI image layout: the image a folder holds, its documents checked by digest.

An OCI image layout (image-spec ``image-layout.md``) is a folder::

    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           manifest descriptors, tagged with org.opencontainers.image.ref.name
    blobs/sha256/<hex>   the manifest, the config and every layer, named by their digest

The builder writes it (``zerostart.image.oci``), ``zerostart pull`` fills it
(``zerostart.registry.layout``), and the node runs what it holds
(``zerostart.container``): all of them name a blob with :func:`blob_path`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.errors import ImageError
from zerostart.oci._media import (
    LAYOUT_VERSION,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    TITLE_ANNOTATION,
    is_sha256_digest,
    sha256_digest,
)


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image read from a layout: its descriptor and the blob file's path."""

    media_type: str
    digest: str
    size: int  # bytes of the blob as stored (compressed)
    path: str
    title: str  # the org.opencontainers.image.title annotation, "" when absent


@dataclass(frozen=True)
class ImageRef:
    """An image read back from an OCI layout: its documents and where each layer blob lies."""

    path: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[LayerRef, ...]


def blob_path(root: str | os.PathLike[str], digest: str) -> Path:
    """``root/blobs/sha256/<hex>``; raises :class:`ImageError` for a digest that is not one.

    The check keeps a document's digest from naming a file outside ``blobs/``
    (``sha256:../../etc/passwd``).
    """
    if not is_sha256_digest(digest):
        raise ImageError(f"{root}: bad digest {digest!r} (only sha256 is supported)")
    algo, _, hex_ = digest.partition(":")
    return Path(root) / "blobs" / algo / hex_


def read_oci_layout(path: str | os.PathLike[str], tag: str | None = None) -> ImageRef:
    """Open the image tagged ``tag`` (or the only one) in an OCI layout, verifying digests.

    The manifest and config are read and checked against their digests; each
    layer blob must exist with the descriptor's size (its content is checked
    by whoever streams it). Raises :class:`ImageError` naming the file at fault.
    """
    root = Path(path)
    try:
        layout = json.loads((root / "oci-layout").read_bytes())
        index = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError as exc:
        raise ImageError(
            f"{root}: not an OCI image layout ({exc.filename} is missing)",
            hint="build one with `zerostart build BUNDLE -o DIR`",
        ) from exc
    except json.JSONDecodeError as exc:
        raise ImageError(f"{root}: broken JSON in the image layout: {exc}") from exc
    if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise ImageError(
            f"{root}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}"
        )
    manifests = [m for m in index.get("manifests", []) if m.get("mediaType") == OCI_MANIFEST]
    if tag is not None:
        manifests = [
            m for m in manifests if m.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag
        ]
    if len(manifests) != 1:
        raise ImageError(
            f"{root}: expected one image manifest{f' tagged {tag}' if tag else ''}, found {len(manifests)}"
        )
    desc = manifests[0]
    manifest = json.loads(_verified_blob(root, desc["digest"]))
    config = json.loads(_verified_blob(root, manifest["config"]["digest"]))
    layers = tuple(
        LayerRef(
            media_type=la["mediaType"],
            digest=la["digest"],
            size=int(la["size"]),
            path=str(blob_path(root, la["digest"])),
            title=la.get("annotations", {}).get(TITLE_ANNOTATION, ""),
        )
        for la in manifest["layers"]
    )
    for la in layers:
        if not os.path.exists(la.path) or os.path.getsize(la.path) != la.size:
            raise ImageError(f"{root}: layer blob {la.digest} is missing or has the wrong size")
    return ImageRef(str(root), desc["digest"], manifest, config, layers)


def _verified_blob(root: Path, digest: str) -> bytes:
    p = blob_path(root, digest)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{root}: blob {digest} is missing") from exc
    if sha256_digest(data) != digest:
        raise ImageError(f"{root}: blob {digest} does not match its digest")
    return data
