"""The chunk profile document (zerostart/chunkprofile.py) and its plan on a merged index.

The index here is built from real layer entries by the imagefs merge (no
mount); the FUSE and registry side is tests/integration/test_imagefs_profile.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from zerostart import chunkprofile
from zerostart.chunkprofile import Profile, ProfileError, decode, profile_of
from zerostart.estargz import ChunkRef
from zerostart.imagefs._index import Extent, LayerEntry, extents_for
from zerostart.imagefs._profile import Recorder, paths_by_inode, plan
from zerostart.imagefs._tree import merge

C = 1000  # chunk size of the toy index


def _doc(files: object, reads: object, **extra: object) -> bytes:
    return json.dumps(
        {"format": chunkprofile.FORMAT, "version": 1, "files": files, "reads": reads, **extra}
    ).encode()


def test_round_trip_keeps_order_and_lists_each_file_once() -> None:
    p = profile_of([("/usr/lib/a.so", 0), ("b", 5), ("usr/lib/a.so", 4096), ("b", 5)])
    assert p.reads == (("usr/lib/a.so", 0), ("b", 5), ("usr/lib/a.so", 4096))
    doc = json.loads(p.encode())
    assert doc["files"] == ["usr/lib/a.so", "b"]
    assert doc["reads"] == [[0, 0], [1, 5], [0, 4096]]
    assert decode(p.encode()) == p


def _many(reads: int) -> bytes:
    rows = b",".join([b"[0,0]"] * reads)
    return b'{"format":"zerostart.chunk-profile","version":1,"files":["a"],"reads":[%s]}' % rows


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff{", "not JSON"),
        (b"[]", "not a zerostart.chunk-profile"),
        (_doc([], [], format="soci.ztoc"), "not a zerostart.chunk-profile"),
        (_doc([], [], version=2), "version 2"),
        (_doc("a", []), "'files' list"),
        (_doc(["../etc/passwd"], [[0, 0]]), "climbs out"),
        (_doc(["a\0b"], [[0, 0]]), "NUL"),
        (_doc([7], [[0, 0]]), "not a string"),
        (_doc(["a"], [[1, 0]]), "within bounds"),
        (_doc(["a"], [[0, -1]]), "within bounds"),
        (_doc(["a"], [[0, 2**53]]), "within bounds"),
        (_doc(["a"], [[0, 1.5]]), "within bounds"),
        (_doc(["a"], [[0, True]]), "within bounds"),
        (_doc(["a"], [[0]]), "within bounds"),
        (_many(chunkprofile.MAX_READS + 1), "limits"),
        (_many(chunkprofile.MAX_READS + chunkprofile.MAX_FILES + 3), "has over"),  # unparsed
        (b" " * (chunkprofile.MAX_PROFILE_BYTES + 1), "over the"),
    ],
)
def test_malformed_or_hostile_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        decode(data)


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _chunks(layer: int, name: str, size: int) -> tuple[Extent, ...]:
    return tuple(
        Extent(
            layer,
            off,
            min(C, size - off),
            layer * 10**6 + off,
            layer * 10**6 + off + 100,
            ChunkRef(name, 0, 0, off, min(C, size - off), _sha(f"{layer}{name}{off}"), 0),
        )
        for off in range(0, size, C)
    )


def _tree():  # type: ignore[no-untyped-def]
    base = [
        LayerEntry("lib", "dir"),
        LayerEntry("lib/big.so", "reg", size=5 * C, extents=_chunks(0, "lib/big.so", 5 * C)),
        LayerEntry("etc", "dir"),
        LayerEntry("etc/conf", "reg", size=10, extents=_chunks(0, "etc/conf", 10)),
    ]
    top = [LayerEntry("lib/big.so", "reg", size=2 * C, extents=_chunks(1, "lib/big.so", 2 * C))]
    return merge([base, top])


def test_extents_for_finds_the_overlapping_chunks_by_bisection() -> None:
    tree = _tree()
    node, big = tree.find("etc/conf"), tree.find("lib/big.so")
    assert node is not None and node.size == 10 and big is not None and big.size == 2 * C
    assert [x.file_offset for x in extents_for(node, 0, 10)] == [0]
    assert [x.file_offset for x in extents_for(big, 999, 2)] == [0, C]
    assert [x.file_offset for x in extents_for(big, C, 1)] == [C]
    assert extents_for(big, 2 * C, 5) == []


def test_plan_follows_the_profile_and_skips_what_the_image_lacks() -> None:
    tree = _tree()
    profile = Profile(
        (
            ("etc/conf", 0),
            ("lib/big.so", C + 3),  # the top layer's file (2 chunks), chunk 1
            ("lib/big.so", 4 * C),  # past the top layer's file: the base one is hidden
            ("lib/big.so", 0),
            ("lib/big.so", 10),  # the same chunk again: once
            ("no/such", 0),
            ("lib", 0),  # a directory
        )
    )
    todo = plan(tree, profile)
    assert [(x.layer, x.file_offset) for x in todo.extents] == [(0, 0), (1, C), (1, 0)]
    assert todo.summary() == {
        "entries": 7,
        "chunks": 3,
        "bytes": 300,
        "skipped_missing": 2,
        "skipped_offset": 1,
        "skipped_local": 0,
    }
    assert plan(tree, profile, local_layers=frozenset({1})).skipped_local == 3


def test_recorder_names_first_touches_in_order() -> None:
    tree = _tree()
    node = {p: tree.find(p) for p in ("lib/big.so", "etc/conf")}  # the kernel's lookups
    assert {n.ino: p for p, n in node.items() if n is not None} == paths_by_inode(tree)
    rec = Recorder()
    rec.touch(node["lib/big.so"], C + 10, 4096)  # chunk 1
    rec.touch(node["etc/conf"], 0, 4096)
    rec.touch(node["lib/big.so"], 0, 2 * C)  # chunks 0 and 1 (1 already seen)
    assert rec.profile(tree).reads == (("lib/big.so", C), ("etc/conf", 0), ("lib/big.so", 0))


def test_add_profile_cli_adds_one_layer_replaces_it_and_refuses_a_bad_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zerostart.cli.main import main
    from zerostart.estargz import read_toc
    from zerostart.image.layers import Entry, write_layer
    from zerostart.image.oci import ImageConfig, write_oci_layout
    from zerostart.oci import read_oci_layout

    layout = tmp_path / "img"
    app = write_layer("app", [Entry("/app/a.bin", "file", data=b"x" * 5000)], tmp_path / "b")
    before = write_oci_layout(layout, ImageConfig(entrypoint=("/app/a.bin",)), [app], {})
    good = tmp_path / "p.json"
    for reads in ([("app/a.bin", 0)], [("app/a.bin", 0), ("etc/x", 0)]):
        good.write_bytes(profile_of(reads).encode())
        assert main(["imagefs", "add-profile", str(layout), str(good)]) == 0
        image = read_oci_layout(layout)
        assert image.manifest_digest != before.manifest_digest
        assert [la.digest for la in image.layers][:1] == [app.digest]  # untouched
        assert len(image.layers) == 2  # a second profile replaces the first
        assert len(image.config["rootfs"]["diff_ids"]) == 2 == len(image.config["history"])
        toc = read_toc(image.layers[1].path)
        assert chunkprofile.PROFILE_PATH in toc.files
    assert "chunk profile of 2 chunks added" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_bytes(_doc(["../../etc/shadow"], [[0, 0]]))
    assert main(["imagefs", "add-profile", str(layout), str(bad)]) != 0
    assert "climbs out of its folder" in capsys.readouterr().err
    assert len(read_oci_layout(layout).layers) == 2


def test_the_format_module_is_a_leaf() -> None:
    """Build side and node side both import it: it imports neither (nor anything but stdlib)."""
    import ast

    src = Path(chunkprofile.__file__).read_text()
    ours = {
        n.module
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("zerostart")
    }
    assert ours == {"zerostart.errors", "zerostart.paths"}


@pytest.mark.parametrize(
    "entry",
    [
        LayerEntry(chunkprofile.PROFILE_PATH, "dir"),
        LayerEntry(chunkprofile.PROFILE_PATH, "reg", size=chunkprofile.MAX_PROFILE_BYTES + 1),
    ],
    ids=["a-directory", "oversized"],
)
def test_a_profile_entry_that_is_no_profile_is_ignored_unread(
    entry: LayerEntry, caplog: pytest.LogCaptureFixture
) -> None:
    from zerostart.imagefs._profile import load

    def read(node: object) -> bytes:
        raise AssertionError("must not be fetched")

    assert load(merge([[entry]]), read) is None
    assert "chunk profile refused" in caplog.text


def test_the_carried_profile_is_read_and_decoded() -> None:
    from zerostart.imagefs._profile import load

    data = profile_of([("etc/conf", 0)]).encode()
    tree = merge([[LayerEntry(chunkprofile.PROFILE_PATH, "reg", size=len(data))]])
    assert load(tree, lambda node: data) == profile_of([("etc/conf", 0)])
