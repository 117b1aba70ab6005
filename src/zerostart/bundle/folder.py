"""Open a bundle: read the manifest, check the files against it, map the weights.

This is on the cold-start path, so what it checks by default is chosen by
cost (numbers in docs/bundle.md). Hashing the whole weights file reads every
byte of it before the first request, which is most of a cold start on a lazily
pulled image. The default, ``verify="fast"``, therefore checks:

* every file listed in the manifest exists and has the recorded size;
* every file up to ``SMALL_FILE_MAX_BYTES`` (the vocabulary) has the recorded sha256;
* the weights file's safetensors header (names, dtypes, shapes, offsets,
  metadata) has the recorded sha256.

It does not catch a same-size change inside tensor data (a flipped bit); that
is what ``verify="full"`` (or ``Bundle.verify_full()``, e.g. from a health check
or at image build time) is for. ``verify="none"`` skips all of it.

Runtime module: standard library + numpy only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zerostart._records import Frozen
from zerostart.bundle.layout import LAYOUT_VERSION
from zerostart.bundle.manifest import VOCAB_NAME, WEIGHTS_NAME, Manifest
from zerostart.bundle.weights import Weights, map_weights
from zerostart.errors import BundleError

VERIFY_MODES = ("full", "fast", "none")
SMALL_FILE_MAX_BYTES = 4 * 1024 * 1024  # hashed even in fast mode: < 10 ms at ~1 GB/s
HASH_CHUNK_BYTES = 8 * 1024 * 1024
_REBUILD_HINT = "re-run zerostart convert"


class Bundle(Frozen):
    """A verified, mapped bundle: everything an engine and a tokenizer need.

    Immutable (a plain class: ``zerostart._records``, on the worker's import path).
    """

    __slots__ = ("manifest", "path", "weights")
    path: Path
    manifest: Manifest
    weights: Weights

    def __init__(self, path: Path, manifest: Manifest, weights: Weights) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "manifest", manifest)
        object.__setattr__(self, "weights", weights)

    @property
    def vocab_path(self) -> Path:
        return self.path / VOCAB_NAME

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer's tables: vocab.txt (WordPiece) or tokenizer.bin (other kinds)."""
        return self.path / self.manifest.tokenizer.tables_name

    @classmethod
    def open(cls, path: str | Path, *, verify: str = "fast") -> Bundle:
        """Open the bundle folder ``path``; raise BundleError naming the bad file.

        ``verify``: "fast" (default), "full" or "none"; see the module docstring.
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        root = Path(path)
        manifest = Manifest.load(root)
        for required in (WEIGHTS_NAME, manifest.tokenizer.tables_name):
            if required not in manifest.files:
                raise BundleError(root / required, "not listed in the manifest", hint=_REBUILD_HINT)
        if verify != "none":
            _check_sizes(root, manifest)
        weights = map_weights(root / WEIGHTS_NAME)
        layout = weights.metadata.get("zerostart.layout")
        if layout != LAYOUT_VERSION:
            raise BundleError(
                root / WEIGHTS_NAME,
                f"weights are in engine layout {layout!r}; this zerostart reads {LAYOUT_VERSION!r}",
                hint=_REBUILD_HINT,
            )
        bundle = cls(root, manifest, weights)
        if verify == "fast":
            bundle._verify_fast()
        elif verify == "full":
            bundle.verify_full()
        return bundle

    def verify_full(self) -> None:
        """Hash every file and compare with the manifest (reads the whole bundle)."""
        _check_sizes(self.path, self.manifest)
        for name, entry in self.manifest.files.items():
            if name == WEIGHTS_NAME:
                digest = hashlib.sha256(self.weights.buffer or b"").hexdigest()
            else:
                digest = _sha256_file(self.path / name)
            _compare(self.path / name, digest, entry.sha256)

    def _verify_fast(self) -> None:
        for name, entry in self.manifest.files.items():
            file = self.path / name
            if name == WEIGHTS_NAME:
                if not entry.header_sha256:
                    raise BundleError(file, "manifest has no header digest", hint=_REBUILD_HINT)
                head = (
                    self.weights.buffer[: self.weights.header_size] if self.weights.buffer else b""
                )
                _compare(
                    file, hashlib.sha256(head).hexdigest(), entry.header_sha256, what="header "
                )
            elif entry.size <= SMALL_FILE_MAX_BYTES:
                _compare(file, _sha256_file(file), entry.sha256)


def _check_sizes(root: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        file = root / name
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            raise BundleError(file, "file is missing", hint=_REBUILD_HINT) from None
        if size != entry.size:
            raise BundleError(
                file, f"size is {size} bytes, the manifest says {entry.size}", hint=_REBUILD_HINT
            )


def _compare(file: Path, actual: str, expected: str, *, what: str = "") -> None:
    if actual != expected:
        raise BundleError(
            file,
            f"{what}sha256 mismatch: the file is {actual[:16]}…, the manifest says {expected[:16]}…"
            " (corrupted or tampered with)",
            hint=_REBUILD_HINT,
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    except FileNotFoundError:
        raise BundleError(path, "file is missing", hint=_REBUILD_HINT) from None
    return digest.hexdigest()
