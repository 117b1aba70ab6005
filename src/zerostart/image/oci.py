"""OCI image documents and the two on-disk formats the builder writes: OCI layout and docker-archive.

An OCI image layout (image-spec ``image-layout.md``; read back with
:func:`zerostart.oci.read_oci_layout`) is a folder::

    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           one manifest descriptor, tagged with org.opencontainers.image.ref.name
    blobs/sha256/<hex>   the manifest, the config and every layer, named by their digest

A docker-archive is what ``docker save`` writes and ``docker load`` reads: a
tar with ``manifest.json`` (config and layer file names per image), the
config JSON and one uncompressed ``layer.tar`` per layer.

Every JSON document is serialised with sorted keys and no whitespace, so the
same image always has the same manifest digest.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerostart.image.layers import LayerBlob, source_date_epoch
from zerostart.oci import (
    LAYOUT_VERSION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    TITLE_ANNOTATION,
    canonical_json,
    open_layer_tar,
    sha256_digest,
)


def iso_time(epoch: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageConfig:
    """The run-time settings an image carries (OCI config ``config`` object)."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = "65532:65532"
    working_dir: str = "/"
    exposed_ports: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = "SIGTERM"
    architecture: str = "amd64"
    os: str = "linux"


def config_document(cfg: ImageConfig, layers: list[LayerBlob]) -> dict[str, Any]:
    created = iso_time(source_date_epoch())
    return {
        "architecture": cfg.architecture,
        "os": cfg.os,
        "created": created,
        "config": {
            "User": cfg.user,
            "Env": list(cfg.env),
            "Entrypoint": list(cfg.entrypoint),
            "Cmd": list(cfg.cmd),
            "WorkingDir": cfg.working_dir,
            "ExposedPorts": {p: {} for p in cfg.exposed_ports},
            "Labels": dict(cfg.labels),
            "StopSignal": cfg.stop_signal,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": created,
                "created_by": f"zerostart build: {layer.name} layer",
                "comment": layer.name,
            }
            for layer in layers
        ],
    }


def manifest_document(
    config: bytes, layers: list[LayerBlob], annotations: dict[str, str]
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": {
                    TITLE_ANNOTATION: f"zerostart {layer.name} layer",
                    **layer.annotations(),
                },
            }
            for layer in layers
        ],
        "annotations": dict(sorted(annotations.items())),
    }


@dataclass(frozen=True)
class WrittenImage:
    path: str
    format: str
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerBlob, ...]


def write_oci_layout(
    out: str | os.PathLike[str],
    cfg: ImageConfig,
    layers: list[LayerBlob],
    annotations: dict[str, str],
    *,
    tag: str = "latest",
) -> WrittenImage:
    """Write (or replace) an OCI image layout at ``out``; layer blobs are moved in."""
    out = Path(out)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    config = canonical_json(config_document(cfg, layers))
    manifest = canonical_json(manifest_document(config, layers, annotations))
    for layer in layers:
        dest = blobs / layer.digest.split(":", 1)[1]
        if os.path.realpath(layer.path) != os.path.realpath(dest):
            shutil.copyfile(layer.path, dest)
    for doc in (config, manifest):
        (blobs / hashlib.sha256(doc).hexdigest()).write_bytes(doc)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256_digest(manifest),
                "size": len(manifest),
                "annotations": {REF_NAME_ANNOTATION: tag},
                "platform": {"architecture": cfg.architecture, "os": cfg.os},
            }
        ],
    }
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    (out / "index.json").write_bytes(canonical_json(index))
    _remove_stale_blobs(
        blobs, {sha256_digest(config), sha256_digest(manifest), *(la.digest for la in layers)}
    )
    return WrittenImage(
        str(out), "oci", sha256_digest(manifest), sha256_digest(config), tuple(layers)
    )


def _remove_stale_blobs(blobs: Path, keep: set[str]) -> None:
    for p in blobs.iterdir():
        if "sha256:" + p.name not in keep:
            p.unlink()


def write_docker_archive(
    out: str | os.PathLike[str],
    cfg: ImageConfig,
    layers: list[LayerBlob],
    *,
    repo_tag: str,
) -> WrittenImage:
    """Write a ``docker load``-able tar: uncompressed layers, Docker's manifest.json."""
    config = canonical_json(config_document(cfg, layers))
    config_hex = hashlib.sha256(config).hexdigest()
    mtime = source_date_epoch()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):  # type: ignore[call-overload]
            names = []
            entries: list[tuple[str, Any]] = []
            for layer in layers:
                hex_id = layer.diff_id.split(":", 1)[1]
                names.append(f"{hex_id}/layer.tar")
                entries.append((f"{hex_id}/layer.tar", layer))
            manifest = [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": names}]
            repo, _, tag = repo_tag.rpartition(":")
            repositories = {repo: {tag: layers[-1].diff_id.split(":", 1)[1]}} if layers else {}
            small = {
                f"{config_hex}.json": config,
                "manifest.json": canonical_json(manifest),
                "repositories": canonical_json(repositories),
            }
            items: list[tuple[str, Any]] = [*entries, *small.items()]
            for name, payload in sorted(items, key=lambda x: x[0]):
                if "/" in name:
                    _tar_dir(tar, name.split("/", 1)[0], mtime)
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                    mtime,
                    0o644,
                    0,
                    0,
                    "",
                    "",
                )
                if isinstance(payload, bytes):
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                else:
                    info.size = payload.uncompressed_size
                    with open_layer_tar(payload.path, payload.media_type) as f:
                        tar.addfile(info, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return WrittenImage(str(out), "docker-archive", "", sha256_digest(config), tuple(layers))


def _tar_dir(tar: tarfile.TarFile, name: str, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
        tarfile.DIRTYPE,
        0o755,
        mtime,
        0,
        0,
        "",
        "",
    )
    tar.addfile(info)
