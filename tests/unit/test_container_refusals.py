"""What `zerostart run` refuses in an image before it runs anything.

Real tar layers unpacked by the real ``unpack_layers`` into a temporary
rootfs, next to "host" files that a hostile layer aims at: a whiteout or an
absolute name must never delete or replace a file outside the rootfs (OCI
whiteouts are applied by our code before tarfile's own filter sees the
member, so the filter alone does not protect them). Real OCI layouts from the
image writer, damaged one way at a time.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from zerostart.container.runtime import Container, unpack_layers
from zerostart.errors import ImageError
from zerostart.image.layers import Entry, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout
from zerostart.oci import ImageRef, LayerRef, read_oci_layout

TAR = "application/vnd.oci.image.layer.v1.tar"


def _layer(path: Path, members: list[tuple[str, bytes | None]]) -> LayerRef:
    """An uncompressed tar layer; ``None`` content makes a directory."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return LayerRef(TAR, "sha256:" + "0" * 64, path.stat().st_size, str(path), "")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder standing for the host next to the rootfs, with files a layer must not touch."""
    victim = tmp_path / "host"
    (victim / "etc").mkdir(parents=True)
    (victim / "etc" / "passwd").write_text("root:x:0:0\n")
    (victim / "keep").write_text("keep\n")
    return victim


def _unpack(tmp_path: Path, *layers: list[tuple[str, bytes | None]]) -> Path:
    refs = tuple(_layer(tmp_path / f"layer{i}.tar", m) for i, m in enumerate(layers))
    root = tmp_path / "rootfs"
    unpack_layers(ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, refs), root)
    return root


def _host_intact(host: Path) -> None:
    assert (host / "keep").read_text() == "keep\n"
    assert (host / "etc" / "passwd").read_text() == "root:x:0:0\n"


def test_control_whiteouts_inside_the_rootfs_apply(tmp_path: Path, host: Path) -> None:
    root = _unpack(
        tmp_path,
        [("app", None), ("app/a", b"a"), ("app/b", b"b"), ("lib", None), ("lib/x", b"x")],
        [("app/.wh.a", b""), ("lib/.wh..wh..opq", b""), ("lib/y", b"y"), ("/app/c", b"c")],
    )
    assert sorted(p.name for p in (root / "app").iterdir()) == ["b", "c"]
    assert [p.name for p in (root / "lib").iterdir()] == ["y"]
    _host_intact(host)


@pytest.mark.parametrize(
    "member",
    [
        "../host/.wh.keep",  # whiteout of a file beside the rootfs
        "../host/.wh..wh..opq",  # opaque whiteout: would empty a host folder
        "app/../../host/.wh.keep",
        "app/.wh...",  # whiteout of "..": the rootfs itself
        "../host/keep",  # a plain file climbing out (tarfile's filter refuses it too)
        "../rootfs-host/.wh.keep",  # a sibling whose name starts with the rootfs's
        "/../rootfs-host/.wh.keep",
    ],
)
def test_members_outside_the_rootfs_are_refused_and_touch_nothing(
    tmp_path: Path, host: Path, member: str
) -> None:
    with pytest.raises(ImageError, match="outside"):
        _unpack(tmp_path, [("app", None), ("app/a", b"a")], [(member, b"evil\n")])
    _host_intact(host)
    assert (tmp_path / "rootfs" / "app" / "a").read_bytes() == b"a"


def test_a_whiteout_through_a_symlink_that_now_leaves_the_rootfs_is_refused(
    tmp_path: Path, host: Path
) -> None:
    """``x -> a/../../host`` stays inside while ``a`` links to ``b/c``; a later layer makes
    ``a`` a plain folder, and ``x`` then points at the host. Each link passed tarfile's
    filter when it was extracted, so only a check at use time catches the whiteout."""
    refs = (
        _layer(tmp_path / "l0.tar", [("b", None), ("b/c", None)]),
        _link_layer(tmp_path / "l1.tar", [("a", "b/c"), ("x", "a/../../host")]),
        _layer(tmp_path / "l2.tar", [(".wh.a", b""), ("a", None)]),
        _layer(tmp_path / "l3.tar", [("x/.wh.keep", b"")]),
    )
    with pytest.raises(ImageError, match="outside"):
        unpack_layers(
            ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, refs), tmp_path / "rootfs"
        )
    _host_intact(host)


def _link_layer(path: Path, links: list[tuple[str, str]]) -> LayerRef:
    with tarfile.open(path, "w") as tar:
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return LayerRef(TAR, "sha256:" + "0" * 64, path.stat().st_size, str(path), "")


@pytest.fixture
def sibling(tmp_path: Path) -> Path:
    """A victim beside the rootfs whose name starts with the rootfs folder's name.

    ``.../rootfs-host`` passes a bare ``startswith(".../rootfs")``; only the
    separator in :func:`zerostart.paths.is_within` keeps it out.
    """
    victim = tmp_path / "rootfs-host"
    victim.mkdir()
    (victim / "keep").write_text("keep\n")
    return victim


@pytest.mark.parametrize(
    "link",
    ["../rootfs-host", "app/../../rootfs-host"],
)
def test_a_whiteout_through_a_link_to_a_sibling_prefix_folder_is_refused(
    tmp_path: Path, sibling: Path, link: str
) -> None:
    """``x -> ../rootfs-host`` then ``x/.wh.keep``: the whiteout's folder resolves to the
    sibling, whose path starts with the rootfs's (the separator must make the difference)."""
    refs = (
        _layer(tmp_path / "l0.tar", [("app", None)]),
        _link_layer(tmp_path / "l1.tar", [("x", link)]),
        _layer(tmp_path / "l2.tar", [("x/.wh.keep", b"")]),
    )
    with pytest.raises(ImageError, match="outside"):
        unpack_layers(
            ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, refs), tmp_path / "rootfs"
        )
    assert (sibling / "keep").read_text() == "keep\n"


def test_a_file_through_a_link_to_a_sibling_prefix_folder_is_refused(
    tmp_path: Path, sibling: Path
) -> None:
    """A plain file written through the link would replace the sibling's file."""
    refs = (
        _link_layer(tmp_path / "l0.tar", [("x", "../rootfs-host")]),
        _layer(tmp_path / "l1.tar", [("x/keep", b"evil\n")]),
    )
    with pytest.raises(ImageError, match="outside"):
        unpack_layers(
            ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, refs), tmp_path / "rootfs"
        )
    assert (sibling / "keep").read_text() == "keep\n"


def test_an_absolute_member_lands_in_the_rootfs_not_on_the_host(tmp_path: Path, host: Path) -> None:
    """tar strips a leading '/' when extracting; replacing the old entry must do the same."""
    root = _unpack(tmp_path, [(str(host / "keep"), b"image's own\n")])
    _host_intact(host)
    assert (root / str(host / "keep").lstrip("/")).read_text() == "image's own\n"


# --------------------------------------------------------------------------- OCI layouts


CFG = ImageConfig(entrypoint=("/bin/app",))


def _layout(tmp_path: Path, cfg: ImageConfig = CFG) -> Path:
    layers = [write_layer("app", [Entry("/bin/app", "file", data=b"#!/bin/sh\n")], tmp_path)]
    return write_oci_layout(tmp_path / "img", cfg, layers, {}).path


def test_a_layer_blob_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    ref = read_oci_layout(_layout(tmp_path))  # control: the intact layout reads
    layer = Path(ref.layers[0].path)
    layer.write_bytes(layer.read_bytes()[:-1])
    with pytest.raises(ImageError, match="missing or has the wrong size"):
        read_oci_layout(ref.path)


def test_an_image_without_entrypoint_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = _layout(tmp_path, ImageConfig(entrypoint=()))
    cache = tmp_path / "cache"
    with pytest.raises(ImageError, match="has no Entrypoint"):
        Container(str(path), port=1, cache_dir=cache).start()
    assert not cache.exists()  # no runtime probed, nothing unpacked


def test_mapped_files_of_a_container_are_hashed_inside_its_rootfs_only(
    tmp_path: Path, sibling: Path
) -> None:
    """`run --snapshot` digests the files the worker maps (paths as the container sees them),
    joined to the rootfs: a link in the image pointing at a sibling folder must not make it
    read a host file."""
    from zerostart.container.snapshot_run import _host_paths
    from zerostart.snapshot import SnapshotError

    root = tmp_path / "rootfs"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libx.so").write_bytes(b"\x7fELF")
    (root / "usr" / "lib" / "gone.so").symlink_to("missing")
    assert _host_paths(str(root), ["/usr/lib/libx.so", "/usr/lib/gone.so"]) == [
        os.path.join(os.path.realpath(root), "usr", "lib", "libx.so")
    ]
    (root / "evil").symlink_to("../rootfs-host")
    with pytest.raises(SnapshotError, match="outside"):
        _host_paths(str(root), ["/usr/lib/libx.so", "/evil/keep"])


def _cut_after(tmp_path: Path, data: bytes, keep: int) -> LayerRef:
    """A tar layer with everything after byte ``keep`` of ``data``'s payload cut off."""
    whole = tmp_path / "whole.tar"
    _layer(whole, [("app", None), ("app/a.txt", b"a" * 700), ("app/last.txt", data)])
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: raw.rindex(data) + keep])
    return LayerRef(TAR, "sha256:" + "0" * 64, cut.stat().st_size, str(cut), "")


def test_a_layer_ending_right_after_its_last_file_unpacks(tmp_path: Path) -> None:
    """umoci writes no padding after the last file and no end-of-archive blocks (Go reads it)."""
    data = b"last file\n"
    layer = _cut_after(tmp_path, data, len(data))
    root = tmp_path / "rootfs"
    unpack_layers(ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, (layer,)), root)
    assert (root / "app" / "last.txt").read_bytes() == data
    assert (root / "app" / "a.txt").read_bytes() == b"a" * 700
    short = _cut_after(tmp_path, data, len(data) - 3)  # inside the file: still refused
    with pytest.raises(ImageError, match="unexpected end of data"):
        unpack_layers(
            ImageRef(str(tmp_path), "sha256:" + "1" * 64, {}, {}, (short,)), tmp_path / "r2"
        )
