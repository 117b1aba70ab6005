"""Deterministic layers: same input, same bytes; every metadata field normalised."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from zerostart.errors import ImageError
from zerostart.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    TOC_TAR_NAME,
    UNCOMPRESSED_SIZE_ANNOTATION,
    read_toc,
)
from zerostart.image.layers import Entry, with_parents, write_layer
from zerostart.oci import open_layer_tar


def _entries(root: Path) -> list[Entry]:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o700)
    data = root / "data.txt"
    data.write_text("payload\n")
    data.chmod(0o600)
    return [
        Entry("/usr/local/bin/tool", "file", source=str(tool), executable=True),
        Entry("/usr/share/z/data.txt", "file", source=str(data)),
        Entry("/usr/local/bin/alias", "symlink", target="tool"),
        Entry("/etc/inline", "file", data=b"inline\n"),
        Entry("/tmp", "dir", mode=0o1777),
    ]


def test_same_input_same_digest_whatever_the_host_metadata(tmp_path: Path) -> None:
    a = write_layer("t", _entries(tmp_path / "src"), tmp_path / "a")
    for p in (tmp_path / "src").rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))  # touching sources changes nothing
    b = write_layer("t", _entries(tmp_path / "src"), tmp_path / "b")
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()


def test_entries_are_normalised_sorted_and_have_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567")
    blob = write_layer("t", _entries(tmp_path / "src"), tmp_path / "out")
    raw = Path(blob.path).read_bytes()
    assert blob.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    plain = gzip.decompress(raw)
    assert blob.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert raw[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert raw[3] & 0x08 == 0  # no FNAME
    with tarfile.open(blob.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    # eStargz without prioritized files: the no-prefetch landmark first, the TOC last
    assert names[0] == NO_PREFETCH_LANDMARK and names[-1] == TOC_TAR_NAME
    names = names[1:-1]
    assert names == sorted(names)
    for parent in ("usr", "usr/local", "usr/local/bin", "usr/share", "usr/share/z", "etc"):
        assert parent in names
    by = {m.name: m for m in members}
    for m in members[:-1]:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1234567)
    assert by["usr/local/bin/tool"].mode == 0o755
    assert by["usr/share/z/data.txt"].mode == 0o644
    assert by["usr/local"].mode == 0o755
    assert by["tmp"].mode == 0o1777
    assert by["usr/local/bin/alias"].issym() and by["usr/local/bin/alias"].linkname == "tool"
    assert blob.file_count == 3


def test_source_date_epoch_changes_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_layer("t", _entries(tmp_path / "src"), tmp_path / "a")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    b = write_layer("t", _entries(tmp_path / "src"), tmp_path / "b")
    assert a.diff_id != b.diff_id


def test_uncompressed_layer_digest_is_its_diff_id(tmp_path: Path) -> None:
    blob = write_layer("t", _entries(tmp_path / "src"), tmp_path / "out", compression="none")
    assert blob.digest == blob.diff_id and blob.media_type.endswith(".tar")


def test_a_file_cannot_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="also a directory"):
        with_parents([Entry("/a", "file", data=b""), Entry("/a/b", "file", data=b"")])


def test_estargz_layer_puts_the_read_order_first(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3000))
    entries = [*_entries(tmp_path / "src"), Entry("/opt/big.bin", "file", source=str(big))]
    read = ["/opt/big.bin", "/usr/local/bin/tool", "/not/in/this/layer"]
    blob = write_layer("t", entries, tmp_path / "out", prioritized=read, chunk_size=1024)
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    toc = read_toc(blob.path)
    toc.verify(blob.toc_digest)
    names = [e.name for e in toc.entries if e.type != "chunk"]
    landmark = names.index(PREFETCH_LANDMARK)
    # each read file after its parent directories, in read order, then the landmark
    first = ["opt", "opt/big.bin", "usr", "usr/local", "usr/local/bin", "usr/local/bin/tool"]
    assert names[:landmark] == first
    assert names[landmark + 1 :] == sorted(names[landmark + 1 :])  # the rest in path order
    assert blob.prefetch_size == toc.prefetch_end > 0
    assert [c.chunk_size for c in toc.chunks["opt/big.bin"]] == [1024, 1024, 952]
    assert blob.annotations() == {
        TOC_DIGEST_ANNOTATION: blob.toc_digest,
        UNCOMPRESSED_SIZE_ANNOTATION: str(blob.uncompressed_size),
    }
    again = write_layer("t", entries, tmp_path / "again", prioritized=read, chunk_size=1024)
    assert Path(again.path).read_bytes() == Path(blob.path).read_bytes()
    # the read order is part of the layer: another order, another digest
    other = write_layer("t", entries, tmp_path / "other", prioritized=read[1::-1], chunk_size=1024)
    assert other.digest != blob.digest and other.diff_id != blob.diff_id


def test_multi_member_gzip_layer_unpacks_whole(tmp_path: Path) -> None:
    """open_layer_tar (docker-archive export, runc unpack) reads every gzip member."""
    blob = write_layer("t", _entries(tmp_path / "src"), tmp_path / "out", chunk_size=8)
    with open_layer_tar(blob.path, blob.media_type) as f:
        plain = f.read()
    assert hashlib.sha256(plain).hexdigest() == blob.diff_id.split(":")[1]
    assert len(plain) == blob.uncompressed_size


def test_plain_gzip_is_still_available(tmp_path: Path) -> None:
    blob = write_layer("t", _entries(tmp_path / "src"), tmp_path / "out", compression="gzip")
    assert blob.toc_digest == "" and blob.annotations() == {}
    with tarfile.open(blob.path) as tar:
        names = tar.getnames()
    assert names == sorted(names) and TOC_TAR_NAME not in names
