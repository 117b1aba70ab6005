"""zTOC: built from real gzip tar layers, checked against Python's gzip and tarfile; hostile indexes refused.

The builder runs zlib's inflate(Z_BLOCK) through ctypes on the system libz;
every span it records is inflated back from its checkpoint alone and
compared with the bytes ``gzip.decompress`` gives, and every entry's offset
with ``tarfile``'s. The refusal tests each encode an index that breaks one
rule (``encode`` checks nothing) and expect ``decode`` to refuse it.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import random
import struct
import tarfile
import zlib

import pytest

from zerostart import ztoc
from zerostart.ztoc import Checkpoint, Entry, Ztoc, ZtocError, decode, encode, inflate_span
from zerostart.ztoc import _format as fmt
from zerostart.ztoc._build import build

SPAN = 64 * 1024


def _tar(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("app")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        t.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_700_000_000
            if name.endswith(".x"):
                info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def _files(seed: int = 3) -> dict[str, bytes]:
    rng = random.Random(seed)
    words = [rng.randbytes(4).hex() for _ in range(500)]
    out = {}
    for i in range(60):
        text = " ".join(rng.choices(words, k=rng.randint(5, 9000))).encode()
        out[f"app/f{i}.txt"] = text
    out["app/random.bin"] = rng.randbytes(300_000)  # stored blocks
    out["app/attr.x"] = b"with an xattr"
    return out


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes, dict[str, bytes]]:
    files = _files()
    raw = _tar(files, links={"app/link": "f1.txt", "app/abs": "/etc/hostname"})
    half = len(raw) // 2  # two gzip members, as `cat a.gz b.gz` makes
    blob = gzip.compress(raw[:half], 9, mtime=0) + gzip.compress(raw[half:], 1, mtime=0)
    return blob, raw, files


def test_spans_inflate_from_their_checkpoint_alone(
    layer: tuple[bytes, bytes, dict[str, bytes]],
) -> None:
    blob, raw, _ = layer
    z = build(io.BytesIO(blob), SPAN)
    assert (z.blob_size, z.out_size) == (len(blob), len(raw))
    assert len(z.checkpoints) >= 6
    assert sum(c.member_start for c in z.checkpoints) == 2
    assert all(c.in_bits % 8 == 0 for c in z.checkpoints)  # byte aligned (see _build.py)
    for i, c in enumerate(z.checkpoints):
        start, end = z.span_range(i)
        assert (
            end - start >= SPAN or i + 1 == len(z.checkpoints) or z.checkpoints[i + 1].member_start
        )
        got = inflate_span(c, blob[start:end], z.span_end(i) - c.out_offset)
        assert got == raw[c.out_offset : z.span_end(i)]


def test_entries_match_tarfile(layer: tuple[bytes, bytes, dict[str, bytes]]) -> None:
    blob, raw, files = layer
    z = decode(encode(build(io.BytesIO(blob), SPAN)), blob_size=len(blob))
    by_name = {e.name: e for e in z.entries}
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        for m in t:
            e = by_name[m.name]
            assert (e.mode, e.mtime, e.uid, e.gid) == (m.mode, m.mtime, m.uid, m.gid)
            if m.isfile():
                assert (e.offset, e.size) == (m.offset_data, m.size)
                assert raw[e.offset : e.offset + e.size] == files[m.name]
    assert by_name["app/link"].link == "f1.txt" and by_name["app/link"].kind == "symlink"
    assert by_name["app/abs"].link == "/etc/hostname"
    assert by_name["app"].kind == "dir"
    assert by_name["app/attr.x"].xattrs == (("user.k", b"v"),)


def test_encoding_is_deterministic_and_small(layer: tuple[bytes, bytes, dict[str, bytes]]) -> None:
    blob, _, _ = layer
    a, b = encode(build(io.BytesIO(blob), SPAN)), encode(build(io.BytesIO(blob), SPAN))
    assert a == b
    assert len(encode(build(io.BytesIO(blob)))) < len(blob) // 20  # default 1 MiB span


def test_a_tar_without_its_end_blocks_is_whole() -> None:
    """umoci writes no padding after the last file and no end-of-archive blocks."""
    files = {"app/a.txt": b"a" * 1000, "app/b.txt": b"bee\n"}
    raw = _tar(files)
    last = raw.rindex(b"bee\n") + 4
    z = build(io.BytesIO(gzip.compress(raw[:last], mtime=0)), SPAN)
    assert [e.name for e in z.entries] == ["app", "app/a.txt", "app/b.txt"]
    cut = raw.rindex(b"bee\n") + 2  # inside the last file's data: truncated, refused
    with pytest.raises(ZtocError, match="not a tar layer"):
        build(io.BytesIO(gzip.compress(raw[:cut], mtime=0)), SPAN)


def test_a_contiguous_file_is_a_regular_file_as_in_the_estargz_table() -> None:
    """tar type "7" (CONTTYPE): the zTOC builder reads tar types with eStargz's one table."""
    from zerostart.estargz import TAR_KINDS

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("app/c.bin")
        info.type, info.size = tarfile.CONTTYPE, 5
        t.addfile(info, io.BytesIO(b"12345"))
    z = build(io.BytesIO(gzip.compress(buf.getvalue(), mtime=0)), SPAN)
    assert [(e.name, e.kind, e.size) for e in z.entries] == [("app/c.bin", "reg", 5)]
    assert TAR_KINDS[tarfile.CONTTYPE] == "reg"


def test_not_gzip_and_cut_short_are_refused() -> None:
    with pytest.raises(ZtocError, match="not a valid gzip"):
        build(io.BytesIO(b"plain bytes, not gzip" * 100), SPAN)
    blob = gzip.compress(_tar({"app/a": b"x" * 100_000}), mtime=0)
    with pytest.raises(ZtocError, match="cut short"):
        build(io.BytesIO(blob[: len(blob) // 2]), SPAN)
    with pytest.raises(ZtocError, match="span"):
        build(io.BytesIO(blob), 1024)


def test_a_tampered_span_is_refused(layer: tuple[bytes, bytes, dict[str, bytes]]) -> None:
    blob, _, _ = layer
    z = build(io.BytesIO(blob), SPAN)
    i = next(i for i, c in enumerate(z.checkpoints) if c.window)  # text refers back into it
    start, end = z.span_range(i)
    raw = bytearray(blob[start:end])
    raw[len(raw) // 2] ^= 0x40
    length = z.span_end(i) - z.checkpoints[i].out_offset
    with pytest.raises(ZtocError):
        inflate_span(z.checkpoints[i], bytes(raw), length)
    wrong_window = dataclasses.replace(z.checkpoints[i], window=bytes(len(z.checkpoints[i].window)))
    with pytest.raises(ZtocError):
        inflate_span(wrong_window, blob[start:end], length)


# -- hostile indexes ----------------------------------------------------------------


def _index(*entries: Entry, out_size: int = 10_000, **changes: object) -> Ztoc:
    cp = Checkpoint(0, 0, b"", True, bytes(32))
    z = Ztoc(4 << 20, 5_000, out_size, (cp,), tuple(entries))
    return dataclasses.replace(z, **changes)  # type: ignore[arg-type]


GOOD = Entry("usr/bin/tool", "reg", size=10, offset=512)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (Entry("../etc/passwd", "reg"), "climbs out"),
        (Entry("usr/../../etc/passwd", "reg"), "climbs out"),
        (Entry("/etc/passwd", "reg"), "absolute"),
        (Entry("usr//bin/./x", "reg"), "not a clean"),
        (Entry("usr/bin\0x", "reg"), "NUL"),
        (Entry("usr/lib/up", "symlink", link="../../../etc/shadow"), "climbs above"),
        (Entry("rootfs/x", "symlink", link="../../rootfs-host/secret"), "climbs above"),
        (Entry("usr/h", "hardlink", link="../rootfs-host/x"), "climbs out"),
        (Entry("usr/h", "hardlink", link="/etc/passwd"), "absolute"),
        (Entry("usr/big", "reg", size=100, offset=9_950), "past the stream"),
        (Entry("usr/far", "reg", size=1, offset=2**64 - 1), "past the stream"),
    ],
)
def test_hostile_entries_are_refused(entry: Entry, problem: str) -> None:
    assert decode(encode(_index(GOOD))).entries == (GOOD,)
    with pytest.raises(ZtocError, match=problem):
        decode(encode(_index(GOOD, entry)))


def _cp(in_bits: int, out: int, window: bytes = b"w", start: bool = False) -> Checkpoint:
    return Checkpoint(in_bits, out, window, start, bytes(32))


@pytest.mark.parametrize(
    ("checkpoints", "problem"),
    [
        ((_cp(0, 0, b"", True), _cp(8 * 6_000, 100)), "past the blob"),
        ((_cp(0, 0, b"", True), _cp(8 * 100, 20_000)), "past the blob or the stream"),
        ((_cp(0, 0, b"", True), _cp(8 * 100 + 3, 100)), "byte boundary"),
        ((_cp(0, 0, b"", True), _cp(800, 100), _cp(400, 200)), "out of order"),
        ((_cp(0, 0, b"", True), _cp(800, 100, bytes(40_000))), "window"),
        ((_cp(0, 0, b"", True), _cp(800, 100, b"w", True)), "no window"),
        ((_cp(8, 0, b"", True),), "checkpoint 0"),
        ((), "no checkpoint"),
    ],
)
def test_hostile_checkpoints_are_refused(checkpoints: tuple[Checkpoint, ...], problem: str) -> None:
    with pytest.raises(ZtocError, match=problem):
        decode(encode(_index(GOOD, checkpoints=checkpoints)))


def test_counts_sizes_and_framing_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    good = encode(_index(GOOD))
    with pytest.raises(ZtocError, match="4999"):
        decode(good, blob_size=4_999)
    body = zlib.decompress(good[len(fmt.MAGIC) :])
    header = list(struct.unpack_from("<IQQQII", body))
    for n_entries, problem in ((fmt.MAX_ENTRIES + 1, "over the limits"), (100_000, "more than")):
        header[5] = n_entries
        forged = struct.pack("<IQQQII", *header) + body[struct.calcsize("<IQQQII") :]
        with pytest.raises(ZtocError, match=problem):
            decode(fmt.MAGIC + zlib.compress(forged))
    with pytest.raises(ZtocError, match="after its last entry"):
        decode(fmt.MAGIC + zlib.compress(body + b"x"))
    with pytest.raises(ZtocError, match="cut short"):
        decode(fmt.MAGIC + zlib.compress(body[:-3]))
    for framing in (good[:-5], good + b"x"):  # the zlib stream cut, or bytes after it
        with pytest.raises(ZtocError, match="cut short or has trailing bytes"):
            decode(framing)
    with pytest.raises(ZtocError, match="magic"):
        decode(b"ZSZTOC9\n" + good[8:])
    monkeypatch.setattr(fmt, "MAX_BODY_BYTES", 1 << 20)
    with pytest.raises(ZtocError, match="inflates past"):  # a zip bomb stops at the limit
        decode(fmt.MAGIC + zlib.compress(bytes(4 << 20)))


def test_public_names() -> None:
    assert ztoc.ARTIFACT_TYPE.startswith("application/vnd.zerostart.")
    assert ztoc.DEFAULT_SPAN_BYTES == 1024 * 1024


def _zstd_frames(raw: bytes, frame_bytes: int) -> bytes:
    """``raw`` as a concatenation of independent zstd frames (as pzstd writes them)."""
    zstandard = pytest.importorskip("zstandard")
    c = zstandard.ZstdCompressor(level=3)
    return b"".join(c.compress(raw[i : i + frame_bytes]) for i in range(0, len(raw), frame_bytes))


def test_a_zstd_layer_is_checkpointed_at_frame_starts(
    layer: tuple[bytes, bytes, dict[str, bytes]],
) -> None:
    _, raw, files = layer
    blob = _zstd_frames(raw, 96 * 1024)
    z = decode(encode(build(io.BytesIO(blob), SPAN)), blob_size=len(blob))
    assert (z.blob_size, z.out_size) == (len(blob), len(raw))
    assert len(z.checkpoints) >= 3
    assert all(cp.member_start and not cp.window for cp in z.checkpoints)
    for i, cp in enumerate(z.checkpoints):  # each span: whole frames, from nothing before
        start, end = z.span_range(i)
        assert blob[start : start + 4] == b"\x28\xb5\x2f\xfd"
        out = inflate_span(cp, blob[start:end], z.span_end(i) - cp.out_offset)
        assert out == raw[cp.out_offset : z.span_end(i)]
    e = next(e for e in z.entries if e.name == "app/f7.txt")
    assert raw[e.offset : e.offset + e.size] == files["app/f7.txt"]


def test_a_tampered_or_cut_zstd_span_is_refused(
    layer: tuple[bytes, bytes, dict[str, bytes]],
) -> None:
    _, raw, _ = layer
    blob = _zstd_frames(raw, 96 * 1024)
    z = build(io.BytesIO(blob), SPAN)
    cp, (start, end) = z.checkpoints[1], z.span_range(1)
    length = z.span_end(1) - cp.out_offset
    bad = bytearray(blob[start:end])
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(ZtocError):
        inflate_span(cp, bytes(bad), length)
    with pytest.raises(ZtocError, match="inflates to"):
        inflate_span(cp, blob[start : end - 100], length)
    with pytest.raises(ZtocError, match="cut short"):
        build(io.BytesIO(blob[:-7]), SPAN)
