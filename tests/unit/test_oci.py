"""The OCI leaf (zerostart/oci): digests that name files, and layer streams by media type.

Reading a whole layout is tested where images are made (test_image_oci.py,
test_container_refusals.py); these are the checks the leaf adds of its own.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from zerostart.errors import ImageError
from zerostart.oci import (
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    LAYER_GZIP,
    LAYER_TAR,
    blob_path,
    is_sha256_digest,
    open_layer_tar,
)


def test_a_digest_never_names_a_file_outside_the_blobs(tmp_path: Path) -> None:
    good = "sha256:" + "ab" * 32
    assert blob_path(tmp_path, good) == tmp_path / "blobs" / "sha256" / ("ab" * 32)
    for bad in ("sha256:../../etc/passwd", good + "\n", "sha512:" + "ab" * 64, good.upper()):
        assert not is_sha256_digest(bad)
        with pytest.raises(ImageError, match="bad digest"):
            blob_path(tmp_path, bad)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("media_type", [LAYER_GZIP, DOCKER_LAYER_GZIP, LAYER_TAR, DOCKER_LAYER_TAR])
def test_a_layer_reads_as_its_tar_whatever_its_media_type_spelling(
    media_type: str, tmp_path: Path
) -> None:
    """Docker's gzip type ends in ".gzip", not "+gzip": a layer pulled from Docker Hub."""
    files = {"a.txt": b"first member\n", "b/c.bin": bytes(range(256)) * 64}
    raw = _tar(files)
    if media_type in (LAYER_GZIP, DOCKER_LAYER_GZIP):
        # two gzip members, as eStargz writes (one per file): both must be read
        half = len(raw) // 2
        raw = gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    blob = tmp_path / "layer"
    blob.write_bytes(raw)
    with (
        open_layer_tar(str(blob), media_type) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert got == files
