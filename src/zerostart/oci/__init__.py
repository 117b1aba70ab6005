"""OCI image facts shared by every part that reads or writes an image: a leaf.

    _media.py    media types, annotations, digests, canonical JSON (image-spec)
    _layout.py   reading an OCI image layout folder (``read_oci_layout``)
    _layer.py    a layer blob's tar stream, decompressed (gzip, zstd or plain)

The image builder (``zerostart.image``) writes images with these names, the
registry client (``zerostart.registry``) moves them, and the node
(``zerostart.container``, ``zerostart.platform``) runs them, so none of those
imports another for a format fact. This package imports only
``zerostart.errors``; a test (``tests/unit/test_layering.py``) holds that.
"""

from __future__ import annotations

from zerostart.oci._layer import open_layer_tar
from zerostart.oci._layout import ImageRef, LayerRef, blob_path, read_oci_layout
from zerostart.oci._media import (
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    GZIP_LAYER_TYPES,
    INDEX_TYPES,
    LAYER_GZIP,
    LAYER_TAR,
    LAYER_ZSTD,
    LAYOUT_VERSION,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    TAR_LAYER_TYPES,
    TITLE_ANNOTATION,
    ZSTD_LAYER_TYPES,
    canonical_json,
    is_sha256_digest,
    sha256_digest,
)

__all__ = [
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "GZIP_LAYER_TYPES",
    "INDEX_TYPES",
    "LAYER_GZIP",
    "LAYER_TAR",
    "LAYER_ZSTD",
    "LAYOUT_VERSION",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "REF_NAME_ANNOTATION",
    "TAR_LAYER_TYPES",
    "TITLE_ANNOTATION",
    "ZSTD_LAYER_TYPES",
    "ImageRef",
    "LayerRef",
    "blob_path",
    "canonical_json",
    "is_sha256_digest",
    "open_layer_tar",
    "read_oci_layout",
    "sha256_digest",
]
