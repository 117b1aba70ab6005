"""imagefs logic without FUSE or a registry: overlay merge rules and the chunk cache's tiers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zerostart.imagefs._cache import ChunkCache
from zerostart.imagefs._index import Extent, ImageIndexError, LayerEntry, Node
from zerostart.imagefs._tree import Tree, merge


def _names(tree: Tree, path: str) -> list[str]:
    node = tree.find(path)
    assert node is not None and node.children is not None
    return sorted(n.decode() for n in tree.listdir(node))


def f(path: str, size: int = 1) -> LayerEntry:
    return LayerEntry(path, "reg", size=size, extents=(Extent(0, 0, size, 0, 10),))


def test_whiteouts_hide_lower_layers_only() -> None:
    lower = [LayerEntry("etc", "dir"), f("etc/a"), f("etc/b")]
    upper = [f("etc/.wh.a"), f("etc/c")]
    tree = merge([lower, upper])
    assert _names(tree, "etc") == ["b", "c"]
    # a whiteout never hides an entry of its own layer
    tree = merge([lower, [f("etc/a"), f("etc/.wh.a")]])
    assert _names(tree, "etc") == ["a", "b"]


def test_opaque_directory_keeps_only_the_upper_children() -> None:
    lower = [LayerEntry("d", "dir"), f("d/x"), LayerEntry("d/sub", "dir"), f("d/sub/y")]
    upper = [LayerEntry("d", "dir", mode=0o700), f("d/.wh..wh..opq"), f("d/new")]
    tree = merge([lower, upper])
    assert _names(tree, "d") == ["new"]
    d = tree.find("d")
    assert d is not None and d.mode & 0o777 == 0o700


def test_directory_over_directory_merges_and_file_replaces_directory() -> None:
    tree = merge([[f("a/x")], [LayerEntry("a", "dir", mode=0o711), f("a/y")]])
    assert _names(tree, "a") == ["x", "y"]
    tree = merge([[f("a/x")], [f("a")]])
    a = tree.find("a")
    assert a is not None and a.children is None


def test_hardlinks_share_an_inode_and_count_links() -> None:
    tree = merge([[f("a"), LayerEntry("b", "hardlink", link="a")]])
    a, b = tree.find("a"), tree.find("b")
    assert a is b and isinstance(a, Node) and a.nlink == 2
    tree.listdir(tree.root)
    assert len(tree.nodes) == 2  # root + one file
    with pytest.raises(ImageIndexError, match="no such file"):
        merge([[LayerEntry("b", "hardlink", link="missing")]])


def test_format_entries_are_not_part_of_the_image() -> None:
    tree = merge([[f(".prefetch.landmark"), f("stargz.index.json"), f("x")]])
    assert _names(tree, "") == ["x"]


def test_inode_numbers_are_stable() -> None:
    layers = [[f("b"), f("a/z"), f("a/y")]]

    def inodes(tree: Tree) -> dict[str, int]:
        a = tree.find("a")
        assert a is not None
        return {p: n.ino for p in ("a", "b", "a/y", "a/z") if (n := tree.find(p)) is not None}

    first = merge(layers)
    first.find("a/z")  # made in another order: the numbers are the records', not the order's
    assert inodes(first) == inodes(merge(layers))
    assert len(set(inodes(first).values())) == 4


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_cache_tiers_and_lru(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=250, disk_dir=tmp_path, disk_bytes=250)
    chunks = [bytes([i]) * 100 for i in range(3)]
    for c in chunks:
        cache.put(_digest(c), c)
    s = cache.stats()
    assert s["memory_chunks"] == 2 and s["disk_chunks"] == 2 and s["disk_evictions"] == 1
    assert cache.get(_digest(chunks[0])) is None  # evicted from both tiers
    assert cache.get(_digest(chunks[2])) == chunks[2]
    assert cache.stats()["memory_hits"] == 1
    # a new cache over the same folder adopts the chunks left on disk
    again = ChunkCache(memory_bytes=250, disk_dir=tmp_path, disk_bytes=250)
    assert again.get(_digest(chunks[1])) == chunks[1]
    assert again.stats()["disk_hits"] == 1


def test_corrupt_disk_chunk_is_a_miss_and_removed(tmp_path: Path) -> None:
    data = b"chunk" * 20
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    cache.put(_digest(data), data)
    path = next(p for p in tmp_path.rglob("*") if p.is_file())
    path.write_bytes(b"rotten")
    assert cache.get(_digest(data)) is None
    assert cache.stats()["disk_corrupt"] == 1 and not path.exists()


def test_range_requests_are_checked_against_the_answer() -> None:
    from zerostart.registry import _distribution as d

    assert d.range_header(0, 51) == "bytes=0-50"
    d.check_content_range("bytes 100-199/5000", 100, 200)
    d.check_content_range("bytes 100-199/*", 100, 200)
    with pytest.raises(d.ProtocolError, match="registry sent 0-99"):
        d.check_content_range("bytes 0-99/5000", 100, 200)
    with pytest.raises(d.ProtocolError):
        d.check_content_range(None, 0, 10)
    with pytest.raises(d.ProtocolError):
        d.range_header(5, 5)


def test_missing_pyfuse3_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from zerostart.imagefs import mount

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(mount.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(mount.os.path, "exists", lambda p: True)
    monkeypatch.setattr(
        mount.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pyfuse3" else real_find_spec(name, *a),
    )
    lazy = mount.LazyMount("127.0.0.1:5000/x:1", tmp_path / "mnt", cache_dir=tmp_path / "c")
    with pytest.raises(mount.ImagefsError) as err:
        lazy.start()
    assert "pyfuse3 is not installed" in str(err.value)
    assert "zerostart[imagefs]" in str(err.value)
    assert not (tmp_path / "mnt").exists()  # refused before anything is made


def test_toc_mod_times_are_read_as_rfc3339_with_their_offset() -> None:
    from zerostart.imagefs._layers import _mtime_ns

    s = 10**9
    base = 1136214245 * s  # 2006-01-02T15:04:05Z
    assert _mtime_ns("2006-01-02T15:04:05Z") == base
    assert _mtime_ns("2006-01-02T15:04:05+02:00") == base - 2 * 3600 * s
    assert _mtime_ns("2006-01-02T15:04:05.999Z") == base  # whole seconds, as tar keeps
    assert _mtime_ns("1969-12-31T23:59:59.5Z") == -1 * s  # floor before the epoch
    assert _mtime_ns("2006-01-02T15:04:05") == base  # no offset: UTC
    assert _mtime_ns("2006-01-02T15:04:05Zjunk") == base  # reference-like prefix wins
    for bad in ("", "garbage", "2006-13-02T15:04:05Z"):
        assert _mtime_ns(bad) == 0
    seen: dict[str, int] = {}
    assert _mtime_ns("2006-01-02T15:04:05Z", seen) == base and seen == {
        "2006-01-02T15:04:05Z": base
    }
