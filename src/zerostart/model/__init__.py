"""Model bundles: the manifest, the aligned weights file, opening and converting.

``Manifest`` & co. are plain dataclasses (standard library only) and are
imported eagerly; ``Bundle`` and the weights helpers pull in numpy, so they
load on first attribute access and a tokenizer that only needs the manifest
does not pay for numpy. ``zerostart.model.convert.convert`` is build-time code
and is imported explicitly from its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zerostart.model.manifest import (
    FileEntry,
    Manifest,
    ModelConfig,
    Pooling,
    TokenizerSettings,
)

if TYPE_CHECKING:
    from zerostart.model.bundle import Bundle
    from zerostart.model.weights import Weights, map_weights, write_weights

__all__ = [
    "Bundle",
    "FileEntry",
    "Manifest",
    "ModelConfig",
    "Pooling",
    "TokenizerSettings",
    "Weights",
    "map_weights",
    "write_weights",
]

_LAZY = {
    "Bundle": "zerostart.model.bundle",
    "Weights": "zerostart.model.weights",
    "map_weights": "zerostart.model.weights",
    "write_weights": "zerostart.model.weights",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zerostart.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
