"""The names and encodings of the OCI image spec that writers and readers must agree on.

Sources: opencontainers/image-spec ``media-types.md``, ``annotations.md``,
``image-layout.md`` and ``descriptor.md`` (digests); Docker's v2 schema 2
types, which registries still serve for images built by ``docker build``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"  # eStargz layers too
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"  # ".gzip", not "+gzip"
TAR_LAYER_TYPES = frozenset({LAYER_TAR, DOCKER_LAYER_TAR})
GZIP_LAYER_TYPES = frozenset({LAYER_GZIP, DOCKER_LAYER_GZIP})
ZSTD_LAYER_TYPES = frozenset({LAYER_ZSTD})
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"  # the tag, in a layout's index.json
TITLE_ANNOTATION = "org.opencontainers.image.title"
LAYOUT_VERSION = "1.0.0"  # the ``imageLayoutVersion`` of an ``oci-layout`` file

_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # the only algorithm we read or write


def sha256_digest(data: bytes) -> str:
    """``sha256:<64 hex>``, the digest that names ``data`` in a descriptor or a layout."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_sha256_digest(digest: str) -> bool:
    """True for a well-formed sha256 digest: one that is safe to use as a blob's file name."""
    return _SHA256_DIGEST.fullmatch(digest) is not None


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same document always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
