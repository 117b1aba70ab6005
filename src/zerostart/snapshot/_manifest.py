"""The snapshot manifest: what was frozen, on what host, and the digest of every file.

A snapshot is a folder::

    manifest.json      this schema (format_version 1), sealed by its own sha256
    images/            CRIU's image files (hardlinks into the store's blobs/)
    boot.log           stdout+stderr of the command while it booted

``manifest_sha256`` is the sha256 of the manifest's canonical JSON without that
field. It catches a manifest edited by hand or truncated on disk; it is not a
signature (anyone who can write the folder can re-seal it).

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zerostart.snapshot._errors import CorruptSnapshotError
from zerostart.snapshot._host import FileDigest, HostFingerprint

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
BOOT_LOG_NAME = "boot.log"
SEAL_FIELD = "manifest_sha256"


@dataclass(frozen=True)
class ImageFile:
    """One CRIU image file: restore checks it against these before handing it to CRIU."""

    size: int
    sha256: str
    mtime_ns: int = 0


@dataclass(frozen=True)
class SnapshotManifest:
    """Everything restore needs to decide whether, and how, to bring the process back."""

    name: str
    command: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    ready_url: str | None
    port: int | None
    created: str  # ISO 8601, UTC
    host: HostFingerprint
    mapped_files: tuple[FileDigest, ...]
    images: dict[str, ImageFile]
    pid: int
    cuda: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # What an integration needs to match beyond the host (``zerostart run --snapshot``: the
    # image's manifest digest, the OCI runtime and its version). Absent in older manifests.
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command)
        data["host"]["cpu_flags"] = list(self.host.cpu_flags)
        data["host"]["gpus"] = list(self.host.gpus)
        data["mapped_files"] = [asdict(f) for f in self.mapped_files]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotManifest:
        host = dict(data["host"])
        host["cpu_flags"] = tuple(host.get("cpu_flags", ()))
        host["gpus"] = tuple(host.get("gpus", ()))
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["command"] = tuple(data["command"])
        values["host"] = HostFingerprint(**host)
        values["mapped_files"] = tuple(FileDigest(**f) for f in data["mapped_files"])
        values["images"] = {k: ImageFile(**v) for k, v in data["images"].items()}
        return cls(**values)

    def with_host(self, **changes: Any) -> SnapshotManifest:
        """A copy with host facts changed (tests fake an incompatible host with this)."""
        return replace(self, host=replace(self.host, **changes))


def _canonical(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != SEAL_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(folder: Path, manifest: SnapshotManifest) -> Path:
    """Write manifest.json atomically, sealed with its own digest."""
    data = manifest.to_dict()
    data[SEAL_FIELD] = hashlib.sha256(_canonical(data)).hexdigest()
    path = folder / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: Path) -> SnapshotManifest:
    """Read and unseal manifest.json; a hand-edited or damaged one is refused."""
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CorruptSnapshotError(path, "missing: not a snapshot folder") from exc
    except (OSError, ValueError) as exc:
        raise CorruptSnapshotError(path, f"unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise CorruptSnapshotError(path, "not a JSON object")
    seal = data.get(SEAL_FIELD)
    if seal != hashlib.sha256(_canonical(data)).hexdigest():
        raise CorruptSnapshotError(
            path, "edited or damaged: its content does not match manifest_sha256"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise CorruptSnapshotError(
            path,
            f"format_version {data.get('format_version')!r}, this zerostart reads {FORMAT_VERSION}",
        )
    try:
        return SnapshotManifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise CorruptSnapshotError(path, f"missing or malformed field: {exc}") from exc
