"""Opening an image's layers for a mount: each layer's index by range reads, or the layer whole.

An eStargz layer (gzip, with the TOC digest annotation on its descriptor)
costs one or two range requests: the last :data:`TAIL_BYTES` of the blob hold
the footer and, for a layer of up to ~1000 files, the whole TOC member; a
larger TOC costs one more request for the bytes before the tail. The TOC is parsed and validated
by :mod:`zerostart.estargz` and checked against the annotation, so the
manifest's digest vouches for it; anything it refuses stops the mount.

A plain ``tar+gzip`` layer that a zTOC indexes (``zerostart index``,
imagefs/_zran.py) is read by spans through it. A layer without either (a
plain ``tar+gzip`` or ``tar`` layer, or a layer whose TOC the manifest does
not vouch for) is fetched whole, verified against its
descriptor digest, inflated into ``CACHE/layers/<digest>.tar`` and indexed by
scanning the tar; its files are then read from that local file. The mount
says so in its notes (``imagefs stats``) and the log.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zerostart.estargz import (
    TAR_KINDS,
    TOC_DIGEST_ANNOTATION,
    EStargzError,
    TOCEntry,
    open_toc,
    resolve_in_root,
)
from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import Extent, ImageIndexError, LayerEntry, normalize
from zerostart.imagefs._zran import open_zran
from zerostart.registry.ranges import BlobReader
from zerostart.ztoc import Ztoc

log = logging.getLogger(__name__)

# The blob tail fetched first: footer (51 bytes) plus the TOC member up to ~1000 entries
# (MiniLM runtime layer: 294 entries, 16.8 kB);
# a bigger TOC costs one more request for exactly its missing bytes (never a second copy).
TAIL_BYTES = 64 * 1024
GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
TAR_TYPES = frozenset(
    {"application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"}
)
ZSTD_TYPES = frozenset({"application/vnd.oci.image.layer.v1.tar+zstd"})
OPEN_WORKERS = 8


def _mtime_ns(modtime: str, seen: dict[str, int] | None = None) -> int:
    """An RFC 3339 ``modTime`` ("2006-01-02T15:04:05Z") in whole seconds since the epoch, as ns.

    A time without an offset is UTC; an unreadable one is 0.

    ``seen``: a cache for one TOC (an image's files share few distinct times; a
    36k-file TOC parsed with strptime spent 0.2 s here).
    """
    if not modtime:
        return 0
    if seen is not None:
        hit = seen.get(modtime)
        if hit is not None:
            return hit
    try:  # RFC 3339 with its offset ("Z" or +02:00); fractions of a second are dropped
        stamp: datetime.datetime | None = datetime.datetime.fromisoformat(modtime)
    except ValueError:
        try:  # what the reference writes, with anything after the seconds ignored
            stamp = datetime.datetime.fromisoformat(modtime[:19])
        except ValueError:
            stamp = None
    if stamp is None:
        value = 0
    else:
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=datetime.UTC)
        value = math.floor(stamp.timestamp()) * 10**9
    if seen is not None:
        seen[modtime] = value
    return value


def entries_from_toc(index: int, files: dict[str, TOCEntry], chunks: Any) -> list[LayerEntry]:
    """The layer's entries in our terms (``files``/``chunks`` of a validated TOC)."""
    out = []
    seen: dict[str, int] = {}
    for name, e in files.items():
        extents = tuple(
            Extent(index, c.chunk_offset, c.chunk_size, c.offset, c.next_offset, c)
            for c in chunks.get(name, ())
        )
        out.append(
            LayerEntry(
                path=name,
                kind=e.type,
                mode=e.mode & 0o7777,
                uid=e.uid,
                gid=e.gid,
                size=e.size if e.type == "reg" else 0,
                mtime_ns=_mtime_ns(e.modtime, seen),
                link=e.link_name,
                dev_major=e.dev_major,
                dev_minor=e.dev_minor,
                xattrs=dict(e.xattrs),
                extents=extents,
            )
        )
    return out


def _open_estargz(
    reader: BlobReader, index: int, desc: dict[str, Any]
) -> tuple[Layer, list[LayerEntry]]:
    digest, size = desc["digest"], int(desc["size"])
    tail_start = max(0, size - TAIL_BYTES)
    tail = reader.read(digest, tail_start, size) if size else b""

    def read_at(offset: int, length: int) -> bytes:
        end = offset + length
        if offset >= tail_start:
            return tail[offset - tail_start : end - tail_start]
        head = reader.read(digest, offset, min(end, tail_start))  # only the bytes not in hand
        return head + tail[: max(0, end - tail_start)]

    try:
        toc = open_toc(read_at, size)
        toc.verify(desc["annotations"][TOC_DIGEST_ANNOTATION])
    except EStargzError as exc:
        raise ImageIndexError(f"layer {digest}: {exc}", hint="refusing to mount it") from exc
    for name in toc.rooted_links:
        check_symlink(digest, name, toc.files[name].link_name)
    layer = Layer(
        index,
        digest,
        size,
        prefetch_end=toc.prefetch_end,
        note=f"eStargz, {len(toc.files)} entries, prefetch {toc.prefetch_end} bytes",
    )
    return layer, entries_from_toc(index, dict(toc.files), toc.chunks)


def check_symlink(layer: str, name: str, target: str) -> None:
    """Refuse a relative symlink that climbs above the image root (``a/up -> ../../../etc``).

    Inside the container the kernel would clamp it at the root, but on this
    host the mount is a folder like any other, and a host process following
    the link would leave the image. Absolute targets are the norm in images
    (``/usr/lib/x -> /lib/x``) and are resolved inside the container's root;
    runc resolves its own paths in the root with securejoin.
    """
    if not target.startswith("/") and resolve_in_root(name, target) is None:
        raise ImageIndexError(
            f"layer {layer}: symlink {name!r} -> {target!r} climbs above the image root",
            hint="refusing to mount it",
        )


def _inflater(media_type: str) -> Callable[[bytes], bytes]:
    if media_type in TAR_TYPES:
        return lambda b: b
    if media_type in ZSTD_TYPES:
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImageIndexError(
                f"a {media_type} layer needs the zstandard module", hint="pip install zstandard"
            ) from exc
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress  # type: ignore[no-any-return]
    state = {"d": zlib.decompressobj(zlib.MAX_WBITS | 16)}

    def gunzip(block: bytes) -> bytes:  # a concatenation of members (eStargz is one too)
        out = []
        while block:
            d = state["d"]
            out.append(d.decompress(block))
            if not d.eof:
                break
            block = d.unused_data
            state["d"] = zlib.decompressobj(zlib.MAX_WBITS | 16)
        return b"".join(out)

    return gunzip


def _members(tar: tarfile.TarFile, size: int) -> Iterator[tarfile.TarInfo]:
    """The tar's members; it may end right after its last file's data, unpadded and
    without end-of-archive blocks (umoci writes that, Go's archive/tar reads it)."""
    last = None
    while True:
        try:
            m = tar.next()
        except tarfile.ReadError:
            if last is not None and last.isfile() and last.offset_data + last.size == size:
                return
            raise
        if m is None:
            return
        last = m
        yield m


def _fetch_whole(
    reader: BlobReader, index: int, desc: dict[str, Any], cache_dir: Path, why: str
) -> tuple[Layer, list[LayerEntry]]:
    digest, size, media = desc["digest"], int(desc["size"]), desc.get("mediaType", "")
    if media not in GZIP_TYPES | TAR_TYPES | ZSTD_TYPES:
        raise ImageIndexError(f"layer {digest}: unsupported media type {media!r}")
    folder = cache_dir / "layers"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (digest.replace(":", "-") + ".tar")
    note = f"{why}: fetched whole ({size} bytes)"
    if path.exists():
        note = f"{why}: whole layer from the local cache"
    else:
        inflate = _inflater(media)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".")
        try:
            with os.fdopen(fd, "wb") as out:
                reader.read_all(digest, size, lambda b: out.write(inflate(b)))
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    log.warning("imagefs: layer %s %s", digest[:19], note)
    entries = []
    try:
        with tarfile.open(path, "r:") as tar:
            for m in _members(tar, path.stat().st_size):
                kind = TAR_KINDS.get(m.type)
                if kind is None:
                    continue
                name = normalize(m.name)
                if kind == "symlink":
                    check_symlink(digest, name, m.linkname)
                extents = (
                    (Extent(index, 0, m.size, m.offset_data, m.offset_data + m.size),)
                    if kind == "reg" and m.size
                    else ()
                )
                entries.append(
                    LayerEntry(
                        path=name,
                        kind=kind,
                        mode=m.mode & 0o7777,
                        uid=m.uid,
                        gid=m.gid,
                        size=m.size if kind == "reg" else 0,
                        mtime_ns=int(m.mtime) * 10**9,
                        link=normalize(m.linkname) if kind == "hardlink" else m.linkname,
                        dev_major=m.devmajor,
                        dev_minor=m.devminor,
                        xattrs={
                            k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                            for k, v in m.pax_headers.items()
                            if k.startswith("SCHILY.xattr.")
                        },
                        extents=extents,
                    )
                )
    except (tarfile.TarError, OSError) as exc:
        path.unlink(missing_ok=True)
        raise ImageIndexError(f"layer {digest}: not a tar archive ({exc})") from exc
    return Layer(index, digest, size, local_path=path, note=note), entries


def open_layer(
    reader: BlobReader,
    index: int,
    desc: dict[str, Any],
    cache_dir: Path,
    ztoc: Ztoc | None = None,
) -> tuple[Layer, list[LayerEntry]]:
    """One layer's :class:`Layer` and entries: lazily by its TOC or zTOC, else fetched whole."""
    annotations = desc.get("annotations") or {}
    media = desc.get("mediaType", "")
    if media in GZIP_TYPES and TOC_DIGEST_ANNOTATION in annotations:
        return _open_estargz(reader, index, desc)
    if ztoc is not None and media in GZIP_TYPES | ZSTD_TYPES:
        return open_zran(index, desc, ztoc)
    why = "no eStargz TOC" if media in GZIP_TYPES else f"{media or 'unknown type'}, no TOC"
    return _fetch_whole(reader, index, desc, cache_dir, why)


def open_layers(
    reader: BlobReader,
    descriptors: list[dict[str, Any]],
    cache_dir: Path,
    ztocs: Mapping[str, Ztoc] | None = None,
    indexes: list[int] | None = None,
) -> tuple[list[Layer], list[list[LayerEntry]]]:
    """Open every layer concurrently (one connection each); results in layer order.

    ``ztocs``: zTOCs of plain gzip layers by layer digest (imagefs/_zran.py).
    ``indexes``: each descriptor's layer number in the image (default: 0, 1, ...).
    """
    if not descriptors:
        return [], []
    ztocs = ztocs or {}
    numbers = indexes if indexes is not None else list(range(len(descriptors)))
    with ThreadPoolExecutor(min(OPEN_WORKERS, len(descriptors))) as pool:
        done = list(
            pool.map(
                lambda i_d: open_layer(
                    reader, i_d[0], i_d[1], cache_dir, ztocs.get(str(i_d[1].get("digest")))
                ),
                zip(numbers, descriptors, strict=True),
            )
        )
    return [layer for layer, _ in done], [entries for _, entries in done]
