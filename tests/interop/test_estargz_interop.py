"""Our eStargz against the reference implementation, both directions.

The reference is containerd/stargz-snapshotter's Go ``estargz`` package (the
code behind ``ctr-remote`` and the snapshotter), built from Debian's packages
by tests/estargz_reference.py:

- a layer zerostart wrote is opened by the reference, its TOC verified
  against our annotation digest and every chunk against its chunkDigest, and
  every file it serves has the content we put in;
- a layer the reference wrote (from a tar holding every entry type, long and
  non-ASCII names, a file of several chunks, prioritized files) is parsed by
  our reader, its TOC digest is the reference's, and every file's chunks,
  read and verified by us, give the tar's bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from estargz_reference import run_reference
from zerostart import estargz as E
from zerostart.image.layers import Entry, write_layer

pytestmark = pytest.mark.integration

CHUNK = 64 << 10  # small chunks, so that a 200 KB file spans several


@pytest.fixture(scope="module")
def reference(estargz_reference_tool: Path) -> Path:
    return estargz_reference_tool


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reference_accepts_and_serves_our_layer(reference: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    contents = {
        "/opt/app/weights.bin": os.urandom(200_000) + bytes(30_000),
        "/opt/app/main.py": b"print('hi')\n",
        "/usr/lib/libx.so.1": os.urandom(5000),
        "/etc/empty": b"",
    }
    entries = []
    for i, (path, data) in enumerate(sorted(contents.items())):
        (src / str(i)).write_bytes(data)
        entries.append(Entry(path, "file", source=str(src / str(i)), executable=path.endswith("1")))
    entries += [
        Entry("/usr/lib/libx.so", "symlink", target="libx.so.1"),
        Entry("/usr/bin/python", "symlink", target="/usr/local/bin/python3.11"),
        Entry("/tmp", "dir", mode=0o1777),
    ]
    blob = write_layer(
        "t",
        entries,
        tmp_path / "out",
        prioritized=["/opt/app/main.py", "/opt/app/weights.bin"],
        chunk_size=CHUNK,
    )
    _, served, _ = run_reference(reference, "verify", blob.path, blob.toc_digest)
    ours = E.read_toc(blob.path)
    assert set(served) == {n for n in ours.files if n}  # the reference sees the same tree
    for path, data in contents.items():
        got = served[path.lstrip("/")]
        assert (got["type"], got["size"], got["sha256"]) == ("reg", len(data), _sha(data))
        assert got.get("chunks", 0) == len(ours.chunks.get(path.lstrip("/"), ()))
    assert served["opt/app/weights.bin"]["chunks"] == 4  # 230 000 bytes in 64 KiB chunks
    assert served["usr/lib/libx.so.1"]["mode"] == 0o755
    assert served["tmp"]["mode"] == 0o1777
    assert served["usr/bin/python"]["linkName"] == "/usr/local/bin/python3.11"
    assert E.PREFETCH_LANDMARK in served

    # The check can fail: a wrong TOC digest and a flipped payload byte are refused.
    status, _, err = run_reference(
        reference, "verify", blob.path, "sha256:" + "0" * 64, check=False
    )
    assert status != 0 and "TOC" in err
    raw = bytearray(Path(blob.path).read_bytes())
    chunk = ours.chunks["usr/lib/libx.so.1"][0]
    raw[chunk.offset + 20] ^= 0xFF
    tampered = tmp_path / "tampered"
    tampered.write_bytes(raw)
    status, _, err = run_reference(reference, "verify", str(tampered), blob.toc_digest, check=False)
    assert status != 0


def _reference_input(path: Path) -> dict[str, bytes]:
    """A plain tar with every entry type the spec lists; returns the regular files' bytes."""
    files = {
        "bin/tool": os.urandom(10_000),
        "lib/big.so": os.urandom(150_000) + bytes(60_000),  # 4 chunks of 64 KiB
        "share/émoji ✓.txt": "naïve\n".encode(),
        "share/" + "long-name-" * 12 + ".txt": b"a name longer than ustar's 100 bytes\n",
        "etc/empty": b"",
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "lib", "share", "etc", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        specials = [
            ("lib/big.so.1", tarfile.SYMTYPE, "big.so"),
            ("bin/tool2", tarfile.LNKTYPE, "bin/tool"),
            ("dev/fifo", tarfile.FIFOTYPE, ""),
            ("dev/null", tarfile.CHRTYPE, ""),
        ]
        for name, kind, link in specials:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o666
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    return files


def test_we_read_a_layer_the_reference_wrote(reference: Path, tmp_path: Path) -> None:
    tar_path = tmp_path / "in.tar"
    files = _reference_input(tar_path)
    blob_path = tmp_path / "blob"
    _, written, _ = run_reference(
        reference, "build", str(tar_path), str(blob_path), str(CHUNK), "bin/tool", "lib/big.so"
    )
    blob = blob_path.read_bytes()
    toc = E.read_toc(str(blob_path))
    toc.verify(written["tocDigest"])  # our digest of its TOC is its own
    assert "sha256:" + _sha(gzip.decompress(blob)) == written["diffID"]
    for name, data in files.items():
        chunks = toc.chunks.get(name, ())
        got = b"".join(E.read_chunk(c, blob[c.offset : c.next_offset]) for c in chunks)
        assert got == data, name
        assert toc.files[name].size == len(data)
    assert len(toc.chunks["lib/big.so"]) == 4
    assert toc.files["bin/tool2"].type == "hardlink"
    assert toc.files["bin/tool2"].link_name == "bin/tool"
    assert toc.files["lib/big.so.1"].link_name == "big.so"
    assert toc.files["dev/fifo"].type == "fifo"
    assert (toc.files["dev/null"].dev_major, toc.files["dev/null"].dev_minor) == (1, 3)
    assert toc.files["bin/tool"].modtime == "2023-11-14T22:13:20Z"
    # its prioritized files (with their parent dirs) precede its landmark, the rest follow
    order = [e.name for e in toc.entries if e.type != "chunk"]
    landmark = order.index(E.PREFETCH_LANDMARK)
    assert set(order[:landmark]) == {"bin", "bin/tool", "lib", "lib/big.so"}
    assert toc.prefetch_end == toc.files[E.PREFETCH_LANDMARK].offset
    assert all(c.next_offset <= toc.prefetch_end for c in toc.chunks["lib/big.so"])


def test_reference_and_we_agree_on_the_layer_digests(reference: Path, tmp_path: Path) -> None:
    """Our writer on the reference's input: same tar stream layout rules, so both blobs verify."""
    tar_path = tmp_path / "in.tar"
    _reference_input(tar_path)
    ours = tmp_path / "ours"
    with tarfile.open(tar_path) as tar, open(ours, "wb") as out:
        w = E.Writer(out, chunk_size=CHUNK)
        w.add_landmark(False)
        for member in tar.getmembers():
            w.add(member, tar.extractfile(member) if member.isreg() else None)
        written = w.close()
    _, served, _ = run_reference(reference, "verify", str(ours), written.toc_digest)
    assert served["lib/big.so"]["chunks"] == 4
    assert served["bin/tool2"]["type"] == "reg"  # the reference resolves hardlinks to the file
