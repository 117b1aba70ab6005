"""Span profiles for images zerostart did not build: recorded, carried beside the zTOCs, applied.

The image is test_zran_index.py's (umoci + skopeo, plain ``tar+gzip``, two
layers, indexed at 1 MiB spans by ``zerostart index``), each test in a
repository of its own so that their referrers do not mix. Real registry
(Debian's docker-registry: the referrers fallback tag), real FUSE, real runc:

* a mount with ``record`` writes which spans a reader touched, in order
  (``read`` and page faults of an ``mmap``), as the zTOC says they lie;
* ``zerostart index REF --add-profile FILE`` pushes it in a new artifact and
  leaves the image's digest as it was;
* the next mount streams those spans in that order (the proxy sees the range
  requests), and a real lazy start with the profile answers like a full pull;
* hostile or damaged profiles are refused with the reason in the stats and
  log, nothing of them is fetched, and the mount serves every file on demand.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import test_zran_index as zran_index
from fault_proxy import fault_proxy
from foreign_images import expected_answer, skopeo_push
from test_imagefs_profile import _prefetched
from test_zran_index import CLI_TIMEOUT_S, Foreign, _index

from zerostart.cli.imagefs import format_stats
from zerostart.imagefs._zran import find_ztocs
from zerostart.imagefs.mount import LazyMount, is_mounted
from zerostart.imagefs.zindex import _blob, _push_artifact
from zerostart.procs import free_port
from zerostart.registry import _distribution as d
from zerostart.registry.ranges import BlobReader
from zerostart.registry.referrers import list_referrers
from zerostart.ztoc import (
    ARTIFACT_TYPE,
    PROFILE_MEDIA_TYPE,
    ZTOC_MEDIA_TYPE,
    LayerRef,
    SpanProfile,
    Ztoc,
    spans_digest,
)
from zerostart.ztoc._profile import FORMAT, MAX_PROFILE_BYTES
from zerostart.ztoc._profile import decode as decode_profile

pytestmark = zran_index.pytestmark  # the same skips: registry, umoci, root, FUSE, pyfuse3
foreign = zran_index.foreign  # the image fixture (built once for this module)
PREFETCH_WAIT_S = 20.0
BIG = "app/data/big.bin"
# A reader touching the big file out of its order, with read-ahead off (POSIX_FADV_RANDOM,
# MADV_RANDOM) so each access reaches exactly the spans under it: pread at 6 MB, the notes
# file, pread at 1 MB, then a page fault of a mapping at 4 MB.
READER = f"""
import mmap, os, sys
root = sys.argv[1]
fd = os.open(os.path.join(root, "{BIG}"), os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
assert len(os.pread(fd, 4096, 6_000_000)) == 4096
open(os.path.join(root, "app/data/notes.txt"), "rb").read()
assert len(os.pread(fd, 4096, 1_000_000)) == 4096
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print(m[4_000_000])
m.close()
os.close(fd)
"""
ACCESSES = [(BIG, 6_000_000, 4096), ("app/data/notes.txt", 0, 1000), (BIG, 1_000_000, 4096)]
ACCESSES.append((BIG, 4_000_000, 1))


def _repo(foreign: Foreign, name: str) -> str:
    """The test image in a repository of its own, indexed; returns its reference."""
    ref = f"{foreign.reg.address}/prof/{name}:1"
    skopeo_push(foreign.layout, "1", ref)
    _index(ref)
    return ref


def _ztocs(ref: str) -> tuple[str, list[str], dict[str, Ztoc]]:
    reader = BlobReader(ref)
    digest, manifest = reader.manifest()
    layers = [str(x["digest"]) for x in manifest["layers"]]
    return digest, layers, find_ztocs(reader, digest, manifest)


def _spans_of(z: Ztoc, path: str, offset: int, length: int) -> list[int]:
    """The spans under bytes ``[offset, offset + length)`` of ``path`` (a page, for a fault)."""
    (entry,) = [e for e in z.entries if e.name == path]
    lo = entry.offset + offset
    hi = entry.offset + min(entry.size, max(offset + length, offset + 4096))
    starts = [c.out_offset for c in z.checkpoints]
    return [i for i in range(len(starts)) if starts[i] < hi and z.span_end(i) > lo]


def _add_profile_cli(ref: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerostart.cli", "index", ref, "--add-profile", str(path)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_profile_is_recorded_carried_beside_the_ztocs_and_prefetched_in_order(
    foreign: Foreign, tmp_path: Path
) -> None:
    ref = _repo(foreign, "ordered")
    digest, layers, ztocs = _ztocs(ref)
    base = ztocs[layers[0]]
    record = tmp_path / "spans.json"
    with LazyMount(ref, tmp_path / "mnt", cache_dir=tmp_path / "c1", prefetch=False, record=record):
        subprocess.run([sys.executable, "-c", READER, str(tmp_path / "mnt")], check=True)
    assert not is_mounted(tmp_path / "mnt")
    profile = decode_profile(record.read_bytes())
    want = list(dict.fromkeys(s for a in ACCESSES for s in _spans_of(base, *a)))
    assert len(want) >= 3 and want != sorted(want)  # out of the layer's order
    assert profile.layers == (LayerRef(layers[0], spans_digest(base.checkpoints)),)
    assert [s for _, s in profile.reads] == want

    done = _add_profile_cli(ref, record)
    assert done.returncode == 0, done.stderr
    reader = BlobReader(ref)
    assert reader.manifest()[0] == digest  # the image is as it was
    newest = list_referrers(reader, digest, ARTIFACT_TYPE)[-1]
    artifact, _, _ = reader.manifest_document(newest["digest"])
    kinds = sorted(x["mediaType"] for x in artifact["layers"])
    assert kinds == [PROFILE_MEDIA_TYPE, ZTOC_MEDIA_TYPE, ZTOC_MEDIA_TYPE]
    assert artifact["subject"]["digest"] == digest

    # The spans, one stream, in the profile's order: one range request per run of adjacent spans.
    starts: list[int] = []
    end = -1
    for s in want:
        a, b = base.span_range(s)
        if a != end:
            starts.append(a)
        end = b
    with fault_proxy(foreign.reg.address) as proxy:
        pref = ref.replace(foreign.reg.address, proxy.address)
        mount = LazyMount(pref, tmp_path / "mnt", cache_dir=tmp_path / "c2", prefetch_streams=1)
        with mount:
            stats = _prefetched(mount)
            before = stats["reads"]["registry_fetches"]
            subprocess.run([sys.executable, "-c", READER, str(tmp_path / "mnt")], check=True)
            for name, body in foreign.data.items():
                assert (tmp_path / "mnt" / name).read_bytes() == body, name
            time.sleep(0.6)
            after = mount.stats()
    pre = stats["reads"]["prefetch"]
    assert pre["state"] == "done" and pre["source"] == "profile", pre
    assert pre["profile"]["spans"] == len(want)
    got = [int(r.split("=")[1].split("-")[0]) for dg, r in proxy.ranges if dg == layers[0]]
    assert got[: len(starts)] == starts, (got, starts)
    # the recorded reads again: every span from the cache; the rest of the files on demand
    assert after["reads"]["failed_reads"] == 0
    assert after["reads"]["registry_fetches"] > before  # what the profile did not name


def test_run_lazy_with_a_recorded_profile_answers_like_a_full_pull(
    foreign: Foreign, tmp_path: Path, oci_runtime: None
) -> None:
    """A real start records (ld.so's page faults of libc included); the next start prefetches."""
    from zerostart.container.lazy import LazyContainer
    from zerostart.warmup import WarmupRequest, send

    ref = _repo(foreign, "start")
    _, layers, ztocs = _ztocs(ref)
    record = tmp_path / "start.json"
    answers, stats = [], []
    for i, options in enumerate([{"record": record, "prefetch": False}, {}]):
        with tempfile.TemporaryDirectory() as cache:
            c = LazyContainer(
                ref, port=free_port(), mount_options={"cache_dir": Path(cache), **options}
            )
            with c:
                status, answer = send(c.port, WarmupRequest("GET", "/answer", None))
                assert status == 200
                answers.append(answer)
                if i == 1:
                    deadline = time.monotonic() + PREFETCH_WAIT_S
                    while c.stats()["reads"]["prefetch"]["state"] in ("none", "running"):
                        assert time.monotonic() < deadline
                        time.sleep(0.3)
                    time.sleep(0.6)
                stats.append(c.stats())
        if i == 0:
            done = _add_profile_cli(ref, record)
            assert done.returncode == 0, done.stderr
    assert answers[0] == answers[1] == expected_answer(foreign.data)
    profile = decode_profile(record.read_bytes())
    base = ztocs[layers[0]]
    libc = next(e for e in base.entries if e.name.endswith("/libc.so.6") and e.kind == "reg")
    mapped = set(_spans_of(base, libc.name, 64 * 1024, libc.size - 64 * 1024))
    recorded = {s for li, s in profile.reads if profile.layers[li].digest == layers[0]}
    assert mapped & recorded  # libc's text, past its ELF headers: page faults of the mapping
    pre = stats[1]["reads"]["prefetch"]
    assert pre["source"] == "profile" and pre["state"] == "done", pre
    assert pre["profile"]["spans"] == len(profile.reads)
    assert stats[1]["reads"]["failed_reads"] == 0
    assert f"span profile: {len(profile.reads)} spans" in format_stats(stats[1])  # `run`'s report


def _push_profile_blob(ref: str, raw: bytes, *, size: int | None = None) -> str:
    """A new index artifact with the image's zTOCs and ``raw`` as its profile, unchecked
    (as a hostile pusher would): what add_profile does, without its checks. Returns the
    profile blob's digest. ``size``: a descriptor size to claim instead of the real one."""
    reader = BlobReader(ref)
    digest, _ = reader.manifest()
    _, subject_bytes, subject_type = reader.manifest_document(digest)
    old, _, _ = reader.manifest_document(
        list_referrers(reader, digest, ARTIFACT_TYPE)[-1]["digest"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp)
        layers = []
        for desc in old["layers"]:
            _blob(layout, reader.read(desc["digest"], 0, int(desc["size"])))
            layers.append(desc)
        blob = _blob(layout, raw)
        layers.append({"mediaType": PROFILE_MEDIA_TYPE, **blob, "size": size or blob["size"]})
        subject = {"mediaType": subject_type, "digest": digest, "size": len(subject_bytes)}
        _push_artifact(reader, layout, subject, layers, {}, insecure=None, auth=None)
    return str(blob["digest"])


def _hostile(ref: str, kind: str) -> tuple[bytes, str]:
    """``kind``'s profile bytes and the message its refusal carries."""
    _, layers, ztocs = _ztocs(ref)
    z = ztocs[layers[0]]
    good = LayerRef(layers[0], spans_digest(z.checkpoints))
    if kind == "span-out-of-range":  # one past the layer's last span
        p = SpanProfile((good,), ((0, 0), (0, len(z.checkpoints))))
        return p.encode(), f"span {len(z.checkpoints)} of layer"
    if kind == "wrong-layer-digest":
        p = SpanProfile((LayerRef("sha256:" + "e" * 64, good.spans),), ((0, 0),))
        return p.encode(), "not a zTOC layer of this image"
    if kind == "other-spans":  # recorded on the other layer's zTOC
        p = SpanProfile(
            (LayerRef(layers[0], spans_digest(ztocs[layers[1]].checkpoints)),), ((0, 0),)
        )
        return p.encode(), "recorded on other spans"
    if kind == "not-json":
        return b"\x00\xff" + FORMAT.encode(), "not JSON"
    raise AssertionError(kind)


HOSTILE = ["span-out-of-range", "wrong-layer-digest", "other-spans", "not-json"]
DAMAGED = ["blob-digest", "blob-size"]


@pytest.mark.parametrize("kind", HOSTILE + DAMAGED)
def test_hostile_or_damaged_profile_is_refused_and_spans_come_on_demand(
    kind: str, foreign: Foreign, tmp_path: Path
) -> None:
    ref = _repo(foreign, kind)
    _, layers, _ = _ztocs(ref)
    if kind in HOSTILE:
        raw, message = _hostile(ref, kind)
        tmp_path.joinpath("p.json").write_bytes(raw)
        done = _add_profile_cli(ref, tmp_path.joinpath("p.json"))  # the CLI checks first
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        _push_profile_blob(ref, raw)
    elif kind == "blob-digest":  # the registry's copy of the profile is not the one named
        good = SpanProfile((), ()).encode()
        blob = _push_profile_blob(ref, good)
        foreign.reg.blob_data(blob).write_bytes(good[:-3] + b"X" + good[-2:])  # same length
        message = "does not match its digest"
    else:  # a descriptor claiming more than a profile may be: refused before any fetch
        _push_profile_blob(ref, b"{}", size=MAX_PROFILE_BYTES + 1)
        message = "over the"
    with fault_proxy(foreign.reg.address) as proxy:
        pref = ref.replace(foreign.reg.address, proxy.address)
        with LazyMount(pref, tmp_path / "mnt", cache_dir=tmp_path / "cache") as m:
            stats = _prefetched(m)
            spans_before = sum(1 for dg, _ in proxy.ranges if dg in layers)
            for name, body in foreign.data.items():
                assert (tmp_path / "mnt" / name).read_bytes() == body, name
            assert m.alive()
    pre = stats["reads"]["prefetch"]
    assert pre["source"] == "on demand" and "profile" not in pre, pre
    assert message in pre["profile_refused"], pre
    assert spans_before == 0  # nothing of a refused profile is fetched
    assert f"span profile refused: {pre['profile_refused']}" in format_stats(stats)
    assert "span profile refused, reading spans on demand" in m.log_tail(20_000)


def test_add_profile_without_an_index_names_the_fix(foreign: Foreign, tmp_path: Path) -> None:
    ref = f"{foreign.reg.address}/prof/unindexed:1"
    skopeo_push(foreign.layout, "1", ref)
    path = tmp_path / "p.json"
    path.write_bytes(SpanProfile((), ()).encode())
    done = _add_profile_cli(ref, path)
    assert done.returncode == 1, done.stderr
    assert f"zerostart index {ref}" in done.stderr and "Traceback" not in done.stderr
    assert d.check_digest(BlobReader(ref).manifest()[0])
