"""The local side of push and pull: an OCI image layout folder.

``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``, as the image
builder writes them. Every file is written atomically (temporary file, then
rename), so a crash never leaves a half-written blob under its digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from zerostart.oci import LAYOUT_VERSION, OCI_INDEX, REF_NAME_ANNOTATION, sha256_digest
from zerostart.registry import _distribution as d
from zerostart.registry._http import IO_BLOCK_BYTES
from zerostart.registry.errors import ImageLayoutError


class Layout:
    """An OCI image layout directory: ``oci-layout``, ``index.json``, ``blobs/sha256/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, digest: str) -> Path:
        algo, _, hexd = d.check_digest(digest).partition(":")
        return self.root / "blobs" / algo / hexd

    def index(self) -> dict[str, Any]:
        marker = self.root / "oci-layout"
        if not marker.is_file():
            raise ImageLayoutError(self.root, "not an OCI image layout (no oci-layout file)")
        try:
            data: dict[str, Any] = json.loads((self.root / "index.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise ImageLayoutError(self.root / "index.json", f"unreadable: {exc}") from exc
        return data

    def checked_blob(self, desc: dict[str, Any]) -> Path:
        digest, size, _ = d.descriptor_for(desc)
        path = self.blob(digest)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise ImageLayoutError(path, f"blob {digest} missing from the layout") from None
        if actual != size:
            raise ImageLayoutError(path, f"{actual} bytes, descriptor says {size}")
        return path

    def read_verified(self, desc: dict[str, Any]) -> bytes:
        digest = d.descriptor_for(desc)[0]
        data = self.checked_blob(desc).read_bytes()
        if sha256_digest(data) != digest:
            raise ImageLayoutError(self.blob(digest), f"content does not match {digest}")
        return data

    def has_blob(self, digest: str, size: int) -> bool:
        """True only for a complete, verified blob; pull re-fetches anything else."""
        path = self.blob(digest)
        if not path.is_file() or path.stat().st_size != size:
            return False
        verifier = d.Verifier(digest, size)
        with path.open("rb") as f:
            while chunk := f.read(IO_BLOCK_BYTES):
                verifier.update(chunk)
        try:
            verifier.check()
        except d.ProtocolError:
            return False
        return True

    def write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def add_to_index(self, desc: dict[str, Any]) -> None:
        """Record a pulled image in ``index.json``, replacing an entry with the same name."""
        self.write_atomic(
            self.root / "oci-layout",
            json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode(),
        )
        index_path = self.root / "index.json"
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if index_path.is_file():
            index = json.loads(index_path.read_bytes())
        name = desc.get("annotations", {}).get(REF_NAME_ANNOTATION)
        kept = [
            m
            for m in index.get("manifests", [])
            if m.get("digest") != desc["digest"]
            and (name is None or m.get("annotations", {}).get(REF_NAME_ANNOTATION) != name)
        ]
        index["manifests"] = [*kept, desc]
        self.write_atomic(index_path, (json.dumps(index, indent=2) + "\n").encode())
