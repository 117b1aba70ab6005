"""Add a recorded chunk profile to an image: one small eStargz layer on top, the others untouched.

The profile (:mod:`zerostart.chunkprofile`) is recorded by a lazy start of the
image itself (``LazyMount(record=...)``: which chunks a start read, in order),
so it exists only after the image does. It names chunks by file and offset,
so it can ride in a layer of its own: adding it changes the manifest and the
config (one more ``diff_id``), never the layers it describes, whose blobs,
digests and chunks a registry and a node already hold. A profile recorded
again replaces the old profile layer.

Why a layer rather than a separate artifact (an annotation naming a blob, or
an OCI referrer as SOCI does): a blob named only by an annotation is not
referenced in the registry's sense and is removed by its garbage collection;
the referrers API is missing from the registry this project tests against
(Debian's docker-registry, distribution 2.8) and its tag-schema fallback is a
second manifest to keep in step; and a layer's bytes are vouched for by the
manifest digest like every other file (its chunk is checked against the TOC,
the TOC against the descriptor's annotation). The cost is one ~10-100 kB
file, ``/.zerostart-profile.json``, that a runtime unpacking the image also
writes, as it writes eStargz's ``.prefetch.landmark``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zerostart.chunkprofile import PROFILE_PATH, Profile
from zerostart.errors import ImageError
from zerostart.image.layers import Entry, write_layer
from zerostart.oci import (
    OCI_MANIFEST,
    TITLE_ANNOTATION,
    canonical_json,
    read_oci_layout,
    sha256_digest,
)

PROFILE_LAYER_TITLE = "zerostart profile layer"


def add_profile_layer(layout: str | os.PathLike[str], profile: Profile) -> str:
    """Put ``profile`` on top of the image in the OCI layout ``layout``; returns the new manifest digest.

    Rewrites the layout's config, manifest and ``index.json`` (same tag);
    an earlier profile layer is replaced. Raises :class:`ImageError` for a
    layout that is not a single-image OCI layout.
    """
    root = Path(layout)
    image = read_oci_layout(root)
    manifest: dict[str, Any] = json.loads(json.dumps(image.manifest))
    config: dict[str, Any] = json.loads(json.dumps(image.config))
    keep = [
        i
        for i, la in enumerate(manifest["layers"])
        if (la.get("annotations") or {}).get(TITLE_ANNOTATION) != PROFILE_LAYER_TITLE
    ]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    history = [h for h in config.get("history", []) if not h.get("empty_layer")]
    if len(diff_ids) != len(manifest["layers"]) or len(history) != len(diff_ids):
        raise ImageError(f"{root}: config and manifest disagree on the number of layers")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        blob = write_layer(
            "profile", [Entry("/" + PROFILE_PATH, "file", data=profile.encode())], tmp
        )
        dest = root / "blobs" / "sha256" / blob.digest.split(":", 1)[1]
        shutil.move(blob.path, dest)
    manifest["layers"] = [manifest["layers"][i] for i in keep] + [
        {
            "mediaType": blob.media_type,
            "digest": blob.digest,
            "size": blob.size,
            "annotations": {TITLE_ANNOTATION: PROFILE_LAYER_TITLE, **blob.annotations()},
        }
    ]
    config["rootfs"]["diff_ids"] = [diff_ids[i] for i in keep] + [blob.diff_id]
    config["history"] = [history[i] for i in keep] + [
        {
            "created": history[-1].get("created", "1970-01-01T00:00:00Z") if history else "",
            "created_by": "zerostart: chunk profile recorded by a lazy start",
            "comment": "profile",
        }
    ]
    config_bytes = canonical_json(config)
    manifest["config"] = {
        **manifest["config"],
        "digest": sha256_digest(config_bytes),
        "size": len(config_bytes),
    }
    manifest_bytes = canonical_json(manifest)
    blobs = root / "blobs" / "sha256"
    for doc in (config_bytes, manifest_bytes):
        (blobs / hashlib.sha256(doc).hexdigest()).write_bytes(doc)
    index = json.loads((root / "index.json").read_bytes())
    for desc in index["manifests"]:
        if desc.get("mediaType") == OCI_MANIFEST and desc["digest"] == image.manifest_digest:
            desc["digest"], desc["size"] = sha256_digest(manifest_bytes), len(manifest_bytes)
    (root / "index.json").write_bytes(canonical_json(index))
    return sha256_digest(manifest_bytes)
