"""eStargz writer and reader: round trips, the blob's structure, and every rejection rule.

The reference implementation is exercised in tests/interop/; here our own
code is checked against the spec's structure and against Python's gzip and
tarfile modules (an eStargz blob must stay an ordinary tar+gzip layer).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from typing import Any

import pytest

from zerostart import estargz as E

BIG = os.urandom(2500) + b"\0" * 1000  # 3.5 chunks of 1000 bytes


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _write(prioritized: bool = True, chunk_size: int = 1000) -> tuple[bytes, E.WrittenBlob]:
    out = io.BytesIO()
    w = E.Writer(out, chunk_size=chunk_size)
    w.add(_info("usr", tarfile.DIRTYPE))
    w.add(_info("usr/big", size=len(BIG)), BIG)
    if prioritized:
        w.add_landmark(True)
    else:
        w.add_landmark(False)
    w.add(_info("usr/empty", size=0))
    w.add(_info("usr/abs", tarfile.SYMTYPE, linkname="/etc/passwd"))
    w.add(_info("usr/up", tarfile.SYMTYPE, linkname="../../../etc/shadow"))
    w.add(_info("usr/rel", tarfile.SYMTYPE, linkname="big"))
    w.add(_info("usr/hard", tarfile.LNKTYPE, linkname="usr/big"))
    w.add(_info("usr/fifo", tarfile.FIFOTYPE))
    w.add(_info("usr/small", size=5, uname="alice", uid=1000), io.BytesIO(b"hello"))
    written = w.close()
    return out.getvalue(), written


def _toc(blob: bytes) -> E.TOC:
    return E.open_toc(lambda off, n: blob[off : off + n], len(blob))


def test_blob_is_a_plain_tar_gzip_with_toc_and_footer() -> None:
    blob, w = _write()
    assert (len(blob), "sha256:" + hashlib.sha256(blob).hexdigest()) == (w.size, w.digest)
    plain = gzip.decompress(blob)  # every member, the footer included
    assert (len(plain), "sha256:" + hashlib.sha256(plain).hexdigest()) == (
        w.uncompressed_size,
        w.diff_id,
    )
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = tar.getmembers()
        by = {m.name: m for m in members}
        big = tar.extractfile(by["usr/big"])
        assert big is not None and big.read() == BIG
        toc_file = tar.extractfile(by[E.TOC_TAR_NAME])
        assert toc_file is not None
        toc_json = toc_file.read()
    assert members[-1].name == E.TOC_TAR_NAME  # the TOC is the last entry
    assert "sha256:" + hashlib.sha256(toc_json).hexdigest() == w.toc_digest
    footer = blob[-E.FOOTER_SIZE :]
    assert footer == E.footer_bytes(w.toc_offset)
    assert E.parse_footer(footer) == w.toc_offset
    assert footer[16:38] == b"%016xSTARGZ" % w.toc_offset
    assert blob[w.toc_offset : w.toc_offset + 2] == b"\x1f\x8b"
    assert w.annotations() == {
        E.TOC_DIGEST_ANNOTATION: w.toc_digest,
        E.UNCOMPRESSED_SIZE_ANNOTATION: str(w.uncompressed_size),
    }


def test_toc_round_trip_chunks_digests_and_offsets() -> None:
    blob, w = _write()
    toc = _toc(blob)
    toc.verify(w.toc_digest)
    chunks = toc.chunks["usr/big"]
    assert [(c.type, c.chunk_offset, c.chunk_size) for c in chunks] == [
        ("reg", 0, 1000),
        ("chunk", 1000, 1000),
        ("chunk", 2000, 1000),
        ("chunk", 3000, 500),
    ]
    for c in chunks:  # every payload starts a gzip member of its own
        assert blob[c.offset : c.offset + 2] == b"\x1f\x8b" and c.inner_offset == 0
    data = b"".join(E.read_chunk(c, blob[c.offset : c.next_offset]) for c in chunks)
    assert data == BIG
    assert toc.files["usr/big"].digest == "sha256:" + hashlib.sha256(BIG).hexdigest()
    assert toc.files["usr/empty"].digest == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert toc.files["usr/hard"].link_name == "usr/big"
    assert toc.files["usr/fifo"].type == "fifo"
    assert toc.files["usr/small"].user_name == "alice"
    assert toc.files["usr"].type == "dir" and toc.files["usr"].mode == 0o755


def test_chunk_size_spec_rule_last_chunk_says_zero() -> None:
    blob, w = _write()
    member = gzip.decompress(blob[w.toc_offset : -E.FOOTER_SIZE])
    doc = json.loads(member[512:].split(b"\0", 1)[0])
    big = [e for e in doc["entries"] if e["name"] == "usr/big"]
    assert [e.get("chunkSize", 0) for e in big] == [1000, 1000, 1000, 0]
    assert all(e["chunkDigest"].startswith("sha256:") for e in big)


def test_prioritized_files_precede_the_landmark() -> None:
    blob, w = _write(prioritized=True)
    toc = _toc(blob)
    landmark = toc.files[E.PREFETCH_LANDMARK]
    assert toc.prefetch_end == landmark.offset == w.prefetch_end > 0
    assert all(c.next_offset <= toc.prefetch_end for c in toc.chunks["usr/big"])
    assert toc.chunks["usr/small"][0].offset > toc.prefetch_end
    blob2, _ = _write(prioritized=False)
    toc2 = _toc(blob2)
    assert toc2.prefetch_end == 0 and toc2.has_landmark
    assert E.NO_PREFETCH_LANDMARK in toc2.files


def test_same_entries_same_bytes() -> None:
    assert _write()[0] == _write()[0]


def test_symlinks_that_point_outside_are_recorded_and_resolved_inside() -> None:
    toc = _toc(_write()[0])
    assert toc.rooted_links == ("usr/abs", "usr/up")
    assert E.resolve_in_root("usr/abs", "/etc/passwd") == "etc/passwd"
    assert E.resolve_in_root("usr/up", "../../../etc/shadow") is None
    assert E.resolve_in_root("usr/rel", "big") == "usr/big"
    assert E.resolve_in_root("a/b", "/../x") == "x"


def test_prioritize_follows_the_reference_order() -> None:
    names = ["a", "a/b", "a/b/c.py", "a/d.py", "e", "e/f.so", "z.txt"]
    first, rest, missed = E.prioritize(names, ["/e/f.so", "a/b/c.py", "nope"])
    assert first == ["e", "e/f.so", "a", "a/b", "a/b/c.py"]
    assert rest == ["a/d.py", "z.txt"]
    assert missed == ["nope"]
    first, _, _ = E.prioritize(["x", "x/h", "x/t"], ["x/h"], hardlinks={"x/h": "x/t"})
    assert first == ["x", "x/t", "x/h"]


def test_writer_refuses_duplicates_short_payloads_and_the_toc_name() -> None:
    w = E.Writer(io.BytesIO())
    w.add(_info("a", size=1), b"x")
    with pytest.raises(E.EStargzError, match="added twice"):
        w.add(_info("./a", size=1), b"x")
    with pytest.raises(E.EStargzError, match="payload ended after 2 of 5"):
        w.add(_info("b", size=5), b"ab")
    with pytest.raises(E.EStargzError, match="reserved"):
        w.add(_info(E.TOC_TAR_NAME, size=1), b"x")


# --------------------------------------------------------------------------- footer


def test_plain_gzip_has_no_footer() -> None:
    blob = gzip.compress(os.urandom(10240), mtime=0)
    with pytest.raises(E.EStargzError, match="no eStargz footer") as info:
        _toc(blob)
    assert info.value.hint and "pull it whole" in info.value.hint


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f[:16] + b"x" + f[17:], "16 hex digits"),
        (lambda f: f[:32] + b"STARGY" + f[38:], "STARGZ magic"),
        (lambda f: f[:12] + b"XG" + f[14:], "'SG' subfield"),
    ],
)
def test_broken_footers(mutate: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(E.EStargzError, match=message):
        E.parse_footer(mutate(E.footer_bytes(1234)))


def test_footer_offset_outside_the_blob() -> None:
    blob, _ = _write()
    bad = blob[: -E.FOOTER_SIZE] + E.footer_bytes(len(blob))
    with pytest.raises(E.EStargzError, match="outside the blob"):
        _toc(bad)


# --------------------------------------------------------------------------- hostile TOCs


def _member(doc: Any) -> bytes:
    raw = json.dumps(doc).encode()
    info = tarfile.TarInfo(E.TOC_TAR_NAME)
    info.size = len(raw)
    tar = info.tobuf(tarfile.PAX_FORMAT) + raw + b"\0" * (-len(raw) % 512) + b"\0" * 1024
    return gzip.compress(tar, mtime=0)


DIGEST = "sha256:" + "ab" * 32


def _reg(name: str, size: int = 10, offset: int = 100, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "reg", "size": size, "offset": offset, "chunkDigest": DIGEST} | (
        extra
    )


@pytest.mark.parametrize(
    ("entries", "entry", "message"),
    [
        ([_reg("../etc/passwd")], "../etc/passwd", r"'\.\.'"),
        ([_reg("a/../../x")], "a/../../x", r"'\.\.'"),
        ([_reg("a"), _reg("./a", offset=200)], "./a", "listed twice"),
        ([_reg("a", size=1 << 50)], "a", "beyond any real image"),
        ([_reg("a", size=10**6, offset=100)], "a", "deflate expands at most"),
        ([_reg("a", offset=10**6)], "a", "outside the blob"),
        ([{"name": "a", "type": "reg", "size": 3, "offset": 100}], "a", "chunkDigest"),
        ([_reg("a", chunkDigest="md5:00")], "a", "chunkDigest"),
        ([_reg("a", offset=200), _reg("b", offset=100)], "b", "out of blob order"),
        ([{"name": "a", "type": "bogus"}], "a", "unknown type"),
        ([{"name": "a", "type": "reg", "size": -1}], "a", "non-negative"),
        ([{"name": "a", "type": "reg", "size": True}], "a", "non-negative"),
        ([{"name": "a", "type": "dir", "mode": "755"}], "a", "non-negative"),
        ([_reg("f"), _reg("f/g", offset=200)], "f/g", "not a directory"),
        ([{"name": "h", "type": "hardlink", "linkName": "missing"}], "h", "hardlink"),
        ([{"name": "s", "type": "symlink"}], "s", "linkName"),
        ([{"name": "a\0b", "type": "dir"}], "a\0b", "NUL"),
        ([{"type": "chunk", "name": "x", "offset": 5, "chunkDigest": DIGEST}], "x", "chunk"),
        (
            [_reg("a", size=30, chunkSize=10), {"name": "a", "type": "chunk", "offset": 200}],
            "a",
            "expected 10",
        ),
        (
            [
                _reg("a", size=30, chunkSize=10),
                {"name": "a", "type": "chunk", "offset": 200, "chunkOffset": 10}
                | {"chunkSize": 10, "chunkDigest": DIGEST},
                _reg("b", offset=300),
            ],
            "a",
            "chunks cover 20 of its 30",
        ),
        ([{"name": "stargz.index.json", "type": "reg"}], "stargz.index.json", "reserved"),
    ],
)
def test_hostile_toc_entries_are_rejected_naming_the_entry(
    entries: list[dict[str, Any]], entry: str, message: str
) -> None:
    with pytest.raises(E.EStargzError, match=message) as info:
        E.parse_toc(_member({"version": 1, "entries": entries}), toc_offset=1000)
    assert info.value.entry == entry


def test_a_valid_hand_written_toc_is_accepted() -> None:
    toc = E.parse_toc(
        _member(
            {
                "version": 1,
                "entries": [
                    {"name": "./", "type": "dir", "mode": 0o40755, "NumLink": 0},
                    _reg("a", size=30, chunkSize=10),
                    {
                        "name": "a",
                        "type": "chunk",
                        "offset": 200,
                        "chunkOffset": 10,
                        "chunkSize": 10,
                    }
                    | {"chunkDigest": DIGEST},
                    {"name": "a", "type": "chunk", "offset": 300, "chunkOffset": 20}
                    | {"chunkDigest": DIGEST},
                    {"name": "b", "type": "hardlink", "linkName": "a"},
                ],
            }
        ),
        toc_offset=1000,
    )
    assert [c.chunk_size for c in toc.chunks["a"]] == [10, 10, 10]
    assert [c.next_offset for c in toc.chunks["a"]] == [200, 300, 1000]
    assert "" in toc.files and toc.files["b"].link_name == "a"


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (b"not gzip at all", "corrupt"),
        (gzip.compress(b"x" * 600), "not a tar entry|holds"),
        (_member({"version": 2, "entries": []}), "version 2"),
        (_member({"version": 1}), "entries"),
        (_member([1, 2]), "version None"),
    ],
)
def test_broken_toc_members(member: bytes, message: str) -> None:
    with pytest.raises(E.EStargzError, match=message):
        E.parse_toc(member, toc_offset=1000)


def test_toc_digest_must_match_the_annotation() -> None:
    blob, _ = _write()
    with pytest.raises(E.EStargzError, match="does not match the layer annotation"):
        _toc(blob).verify("sha256:" + "0" * 64)


# --------------------------------------------------------------------------- chunks


def test_a_tampered_chunk_is_never_returned() -> None:
    blob, _ = _write(chunk_size=1 << 20)
    toc = _toc(blob)
    chunk = toc.chunks["usr/small"][0]
    good = blob[chunk.offset : chunk.next_offset]
    assert E.read_chunk(chunk, good) == b"hello"
    evil = gzip.compress(b"HELLO", mtime=0)  # valid gzip, wrong content
    with pytest.raises(E.EStargzError, match="the TOC says") as info:
        E.read_chunk(chunk, evil)
    assert info.value.entry == "usr/small"
    with pytest.raises(E.EStargzError, match="ended after"):
        E.read_chunk(chunk, good[:12])
    with pytest.raises(E.EStargzError, match="not gzip"):
        E.read_chunk(chunk, b"garbage" * 10)


def test_toc_tar_header_forms() -> None:
    """The hand-read ustar header, a PAX header (through tarfile) and a corrupt one."""
    doc = {"version": 1, "entries": [{"name": "d", "type": "dir"}]}
    raw = json.dumps(doc).encode()
    info = tarfile.TarInfo(E.TOC_TAR_NAME)
    info.size = len(raw)
    info.pax_headers = {"comment": "forces a PAX header"}
    body = raw + b"\0" * (-len(raw) % 512) + b"\0" * 1024
    pax = info.tobuf(tarfile.PAX_FORMAT) + body
    assert pax[156:157] == b"x"
    assert list(E.parse_toc(gzip.compress(pax), toc_offset=10).files) == ["d"]
    plain = bytearray(gzip.decompress(_member(doc)))
    plain[0:1] = b"X"  # the checksum no longer matches
    with pytest.raises(E.EStargzError, match="checksum"):
        E.parse_toc(gzip.compress(bytes(plain)), toc_offset=10)


def test_reading_a_toc_does_not_import_the_writer_or_tarfile() -> None:
    """A mount pays only for what it uses: no tarfile (~20 ms of imports on a busy core)."""
    import subprocess
    import sys

    blob, _ = _write()
    code = (
        "import sys; from zerostart import estargz as E; "
        "blob = sys.stdin.buffer.read(); "
        "E.open_toc(lambda o, n: blob[o:o + n], len(blob)); "
        "print(sorted(m for m in sys.modules if m in ('tarfile', 'zerostart.estargz._writer')))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"[]"


def test_a_contiguous_file_entry_is_a_regular_file_to_writer_and_reader() -> None:
    """tar type "7" (CONTTYPE): the writer and the lazy filesystem share one table that says reg."""
    from zerostart.imagefs._layers import TAR_KINDS as imagefs_kinds

    assert imagefs_kinds is E.TAR_KINDS and E.TAR_KINDS[tarfile.CONTTYPE] == "reg"
    out = io.BytesIO()
    w = E.Writer(out, chunk_size=4)
    w.add(_info("data.bin", tarfile.CONTTYPE, size=10), b"0123456789")
    blob = out.getvalue() if w.close() else b""
    toc = _toc(blob)
    assert toc.files["data.bin"].type == "reg" and toc.files["data.bin"].size == 10
    got = b"".join(E.read_chunk(c, blob[c.offset : c.next_offset]) for c in toc.chunks["data.bin"])
    assert got == b"0123456789"


def test_the_tar_type_table_spells_tarfiles_constants() -> None:
    names = ("REGTYPE", "AREGTYPE", "CONTTYPE", "DIRTYPE", "SYMTYPE", "LNKTYPE", "CHRTYPE",
             "BLKTYPE", "FIFOTYPE")  # fmt: skip
    assert set(E.TAR_KINDS) == {getattr(tarfile, n) for n in names}
