"""The containment helper every outside name goes through (src/zerostart/paths.py).

Real folders and symlinks in a temporary directory: a root ``x/rootfs`` and a
victim ``x/rootfs-host`` beside it whose path starts with the root's, so a
prefix test without the separator would let names reach it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zerostart.errors import PathEscapeError, ZerostartError
from zerostart.paths import inside, is_within, redact_paths, relative_name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "rootfs" / "app").mkdir(parents=True)
    (tmp_path / "rootfs-host").mkdir()
    (tmp_path / "rootfs-host" / "keep").write_text("keep\n")
    return tmp_path / "rootfs"


def test_is_within_needs_the_separator() -> None:
    assert is_within("/x/rootfs", "/x/rootfs")
    assert is_within("/x/rootfs", "/x/rootfs/app/a")
    assert not is_within("/x/rootfs", "/x/rootfs-host")
    assert not is_within("/x/rootfs", "/x/rootfs-host/keep")
    assert not is_within("/x/rootfs", "/x")
    assert is_within("/", "/etc/passwd")


@pytest.mark.parametrize(
    ("name", "clean"),
    [("a/b", "a/b"), ("./a//b/", "a/b"), ("", ""), (".", ""), ("a/./b", "a/b")],
)
def test_relative_names_are_cleaned(name: str, clean: str) -> None:
    assert relative_name(name) == clean


@pytest.mark.parametrize(
    "name", ["..", "../x", "a/../../x", "a/..", "../rootfs-host/keep", "a\0b", "/etc/passwd"]
)
def test_names_that_leave_or_are_absolute_are_refused(name: str) -> None:
    with pytest.raises(PathEscapeError) as info:
        relative_name(name)
    assert isinstance(info.value, ZerostartError) and info.value.name == name


def test_absolute_names_can_be_taken_relative_to_the_root_as_tar_does() -> None:
    assert relative_name("/etc/passwd", absolute="strip") == "etc/passwd"
    with pytest.raises(PathEscapeError):
        relative_name("/../etc/passwd", absolute="strip")


def test_inside_joins_under_the_resolved_root(root: Path) -> None:
    assert inside(root, "app/a") == os.path.join(os.path.realpath(root), "app", "a")
    assert inside(root, "") == os.path.realpath(root)
    assert inside(root, "/app", absolute="strip") == os.path.join(os.path.realpath(root), "app")


@pytest.mark.parametrize("target", ["../rootfs-host", "app/../../rootfs-host", "/"])
def test_a_symlink_out_of_the_root_is_refused(root: Path, target: str) -> None:
    """Including to the sibling-prefix folder, which only the separator keeps out."""
    (root / "x").symlink_to(target)
    with pytest.raises(PathEscapeError, match="outside"):
        inside(root, "x/keep")
    with pytest.raises(PathEscapeError, match="outside"):
        inside(root, "x")


def test_a_symlink_that_stays_inside_is_followed(root: Path) -> None:
    (root / "x").symlink_to("app")
    assert inside(root, "x/a") == os.path.join(os.path.realpath(root), "app", "a")


def test_a_symlink_loop_is_refused_or_stays_inside(root: Path) -> None:
    """A loop never resolves outside the root: refused, or left unresolved under it."""
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    try:
        got = inside(root, "a/f")
    except PathEscapeError:
        return
    assert is_within(os.path.realpath(root), got)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "model 'a': /srv/models/a/weights.safetensors: size is 661 bytes",
            "model 'a': …/weights.safetensors: size is 661 bytes",
        ),
        ("'/root/.cache/zerostart/x/model': no manifest", "'…/model': no manifest"),
        ("health check of http://127.0.0.1:8000/health failed", None),
        ("POST /embed answered 500", None),
        ("relative a/b/c stays", None),
    ],
)
def test_redact_paths_keeps_the_file_name_and_drops_the_folders(
    text: str, shown: str | None
) -> None:
    assert redact_paths(text) == (text if shown is None else shown)
