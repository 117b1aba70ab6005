"""eStargz: seekable, verifiable gzip tar layers (writer, reader, validator). Standard library only.

Theory of operation. An eStargz blob (spec: ``docs/estargz.md`` of
containerd/stargz-snapshotter; ours: ``docs/estargz.md``) is an ordinary
``tar+gzip`` layer cut into many gzip members, so that any regular file (or
4 MiB chunk of one) can be fetched with one HTTP range request and
decompressed on its own::

    member 0            tar headers (dirs, links, ...) up to the first file's header
    member at offset A  file a's payload (+ tar padding) + the next headers
    member at offset B  file b's first chunk
    member at offset C  file b's second chunk (+ padding) + the next headers
    ...
    member at TOC       tar header "stargz.index.json" + TOC JSON + padding + end of archive
    footer (51 bytes)   an empty gzip member whose Extra field says "%016x" % TOC offset

The TOC (table of contents) lists every tar entry with its metadata, and for
every file payload or chunk the gzip member's ``offset``, the chunk's place in
the file (``chunkOffset``, ``chunkSize``) and its ``chunkDigest``. The layer
descriptor carries the TOC's digest (:data:`TOC_DIGEST_ANNOTATION`), so a
verified manifest verifies the TOC, and the TOC verifies every chunk.

Files that a workload reads at start-up come first, then
:data:`PREFETCH_LANDMARK`: the range ``[0, landmark offset)`` is the prefetch
(one range request). A blob without such files starts with
:data:`NO_PREFETCH_LANDMARK` instead.

This module is free of network I/O: :class:`Writer` writes to any binary
stream; :func:`parse_footer`, :func:`parse_toc` and :func:`read_chunk` take
bytes and return values, so the builder, the lazy filesystem and the tests use
the same code whether the bytes come from a file or a registry range request.
Every malformed or hostile input raises :class:`EStargzError` naming the entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from zerostart.errors import ZerostartError

# --------------------------------------------------------------------------- constants (spec)

TOC_TAR_NAME = "stargz.index.json"
TOC_VERSION = 1
FOOTER_SIZE = 51  # 10 gzip header + 2 XLEN + 26 Extra ('S','G', LEN, "%016xSTARGZ") + 5 + 8
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"  # spec: "a regular file entry with 4 bits contents 0xf"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"  # eStargz is a plain gzip layer
ENTRY_TYPES = ("dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk")

# --------------------------------------------------------------------------- constants (ours)

DEFAULT_CHUNK_SIZE = 4 << 20  # bytes; the reference Writer's default (estargz.go chunkSize())
DEFAULT_GZIP_LEVEL = 6  # zlib's default; the reference uses 9 (~2x the time for ~1% fewer bytes)
COPY_BYTES = 1 << 20  # read size while compressing a payload
TAR_BLOCK = 512
# Limits a validator applies to a TOC it did not write. A real TOC is ~150 bytes per
# entry: 128 MiB of JSON is ~800k files, several times the largest images in use.
MAX_TOC_JSON_BYTES = 128 << 20
MAX_TOC_ENTRIES = 2_000_000
MAX_ENTRY_SIZE = 1 << 40  # 1 TiB: larger than any file in a container image, far below int64
MAX_ID = (1 << 32) - 1  # uid, gid, mode bits: 32-bit on Linux
# Deflate cannot expand more than 1032:1 (zlib's technical notes: a 258-byte match per
# 2 bits at best), so a chunk claiming more bytes than that from its compressed span lies.
DEFLATE_MAX_RATIO = 1032
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})$")
_TAR_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class EStargzError(ZerostartError):
    """A blob or TOC is not valid eStargz, or a chunk fails its digest.

    ``entry`` names the TOC entry at fault (``None`` for the footer or the TOC
    as a whole) and ``problem`` says what is wrong with it.
    """

    def __init__(self, entry: str | None, problem: str, *, hint: str | None = None) -> None:
        self.entry = entry
        self.problem = problem
        where = f"eStargz entry {entry!r}" if entry is not None else "eStargz"
        super().__init__(f"{where}: {problem}", hint=hint)


# --------------------------------------------------------------------------- TOC entries

# (attribute, JSON key) in the reference's struct order; each is omitted when empty.
_FIELDS = (
    ("size", "size"),
    ("modtime", "modtime"),
    ("link_name", "linkName"),
    ("mode", "mode"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("user_name", "userName"),
    ("group_name", "groupName"),
    ("offset", "offset"),
    ("inner_offset", "innerOffset"),
    ("dev_major", "devMajor"),
    ("dev_minor", "devMinor"),
    ("xattrs", "xattrs"),
    ("digest", "digest"),
    ("chunk_offset", "chunkOffset"),
    ("chunk_size", "chunkSize"),
    ("chunk_digest", "chunkDigest"),
)
_INT_FIELDS = frozenset(
    (
        "size",
        "mode",
        "uid",
        "gid",
        "offset",
        "inner_offset",
        "dev_major",
        "dev_minor",
        "chunk_offset",
        "chunk_size",
    )
)
_KEY_TO_ATTR = {key: attr for attr, key in _FIELDS}


@dataclass(frozen=True, slots=True)
class TOCEntry:
    """One TOC entry: a tar entry, or (``type == "chunk"``) a later chunk of a regular file.

    ``name`` is the path stored in the tar (a writer's view) or, after
    :func:`parse_toc`, the clean root-relative path ("" for the root, no
    leading or trailing slash). ``mode`` holds the tar header's permission
    bits (file-type bits may be present too; ``type`` is authoritative).
    ``offset`` is the blob offset of the gzip member holding this payload,
    ``inner_offset`` the payload's start within that member's uncompressed
    bytes, ``chunk_offset``/``chunk_size`` its place in the file (bytes).
    ``next_offset`` (reader only, not serialised) ends the compressed range
    to fetch: ``blob[offset:next_offset]`` holds the payload.
    """

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""
    next_offset: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the TOC, with the spec's key names, empty fields omitted."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for attr, key in _FIELDS:
            value = getattr(self, attr)
            if value:
                if attr == "xattrs":
                    import base64  # Go marshals []byte as standard base64

                    value = {k: base64.b64encode(v).decode() for k, v in sorted(value.items())}
                out[key] = value
        return out

    @property
    def is_data(self) -> bool:
        """A payload in the blob: a non-empty regular file's first chunk, or a later chunk."""
        return self.type == "chunk" or (self.type == "reg" and self.size > 0)


# --------------------------------------------------------------------------- footer


def footer_bytes(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty gzip member whose Extra subfield 'SG' holds the TOC offset."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + len(subfield).to_bytes(2, "little") + subfield
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\0\xff"  # FEXTRA, MTIME 0, XFL 0, OS unknown
    empty_stored_block = b"\x01\x00\x00\xff\xff"  # BFINAL=1, BTYPE=00, LEN=0, NLEN=~0
    out = header + len(extra).to_bytes(2, "little") + extra + empty_stored_block + b"\0" * 8
    assert len(out) == FOOTER_SIZE
    return out


def parse_footer(footer: bytes) -> int:
    """The TOC's blob offset from the last :data:`FOOTER_SIZE` bytes of a blob.

    Raises :class:`EStargzError` when the bytes are not an eStargz footer (a
    plain gzip layer, a legacy stargz footer, a truncated blob).
    """
    if len(footer) != FOOTER_SIZE:
        raise EStargzError(None, f"footer is {len(footer)} bytes, expected {FOOTER_SIZE}")
    if footer[:3] != b"\x1f\x8b\x08" or not footer[3] & 0x04:
        raise EStargzError(
            None,
            "no eStargz footer (the blob does not end with a gzip member carrying an Extra field)",
            hint="a plain gzip layer has no table of contents; pull it whole",
        )
    xlen = int.from_bytes(footer[10:12], "little")
    extra = footer[12 : 12 + xlen]
    if xlen != 26 or extra[:2] != b"SG" or int.from_bytes(extra[2:4], "little") != 22:
        raise EStargzError(None, f"footer Extra field is not the eStargz 'SG' subfield: {extra!r}")
    if extra[20:26] != b"STARGZ":
        raise EStargzError(None, "footer lacks the STARGZ magic")
    hex_offset = extra[4:20]
    if not re.fullmatch(rb"[0-9a-fA-F]{16}", hex_offset):
        raise EStargzError(None, f"footer TOC offset {hex_offset!r} is not 16 hex digits")
    return int(hex_offset, 16)


# --------------------------------------------------------------------------- writer


@dataclass(frozen=True)
class WrittenBlob:
    """What :meth:`Writer.close` wrote: the digests an OCI descriptor and config need.

    ``digest``/``size``: the compressed blob; ``diff_id``/``uncompressed_size``:
    the tar stream inside it; ``toc_digest``: sha256 of the TOC JSON (the
    :data:`TOC_DIGEST_ANNOTATION` value); ``toc_offset``: where its member starts;
    ``prefetch_end``: end of the prioritized range (0: none).
    """

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    toc_digest: str
    toc_offset: int
    prefetch_end: int
    entries: int

    def annotations(self) -> dict[str, str]:
        """The layer descriptor annotations that make this layer lazily pullable."""
        return {
            TOC_DIGEST_ANNOTATION: self.toc_digest,
            UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }


class Writer:
    """Write an eStargz blob entry by entry; :meth:`close` appends TOC and footer.

    Call :meth:`add` for each tar entry in the order they should lie in the
    blob (prioritized files first, then :meth:`add_landmark`, then the rest).
    The output is a function of the entries, ``chunk_size`` and ``level``
    (and zlib's version): gzip members carry no name and a zero timestamp.
    """

    def __init__(
        self,
        out: IO[bytes],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        level: int = DEFAULT_GZIP_LEVEL,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._out = out
        self._chunk_size = chunk_size
        self._level = level
        self._blob_sha = hashlib.sha256()
        self._offset = 0  # compressed bytes written
        self._diff_sha = hashlib.sha256()
        self._usize = 0  # uncompressed bytes written
        self._gz: Any = None  # the open gzip member (zlib compressobj) or None
        self._entries: list[TOCEntry] = []
        self._names: set[str] = set()
        self._last_uname: dict[int, str] = {}
        self._last_gname: dict[int, str] = {}
        self._prefetch_end = 0
        self._closed = False

    # -- low level: compressed bytes out, uncompressed bytes in
    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._blob_sha.update(data)
            self._offset += len(data)

    def _write(self, data: bytes) -> None:
        if self._gz is None:
            self._gz = zlib.compressobj(self._level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self._diff_sha.update(data)
        self._usize += len(data)
        self._emit(self._gz.compress(data))

    def _end_member(self) -> None:
        if self._gz is not None:
            self._emit(self._gz.flush())
            self._gz = None

    # -- entries
    def add(self, info: tarfile.TarInfo, payload: IO[bytes] | bytes | None = None) -> None:
        """Append one tar entry; a regular file's ``info.size`` bytes come from ``payload``.

        Raises :class:`EStargzError` for a name given twice, the reserved TOC
        name, an unsupported entry type, or a payload shorter than ``info.size``.
        """
        if self._closed:
            raise EStargzError(info.name, "the writer is closed")
        kind = _TAR_TYPES.get(info.type)
        if kind is None:
            raise EStargzError(info.name, f"unsupported tar entry type {info.type!r}")
        clean = clean_name(info.name)
        if clean == TOC_TAR_NAME:
            raise EStargzError(info.name, "the TOC name is reserved")
        if clean in self._names:
            raise EStargzError(info.name, "added twice")
        self._names.add(clean)
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        stored_name = info.name + "/" if kind == "dir" and not info.name.endswith("/") else ""
        entry = TOCEntry(
            name=stored_name or info.name,
            type=kind,
            size=info.size if kind == "reg" else 0,
            modtime=_rfc3339(int(info.mtime)),
            link_name=info.linkname if kind in ("symlink", "hardlink") else "",
            mode=info.mode,
            uid=info.uid,
            gid=info.gid,
            user_name=_if_changed(self._last_uname, info.uid, info.uname),
            group_name=_if_changed(self._last_gname, info.gid, info.gname),
            dev_major=info.devmajor if kind in ("char", "block") else 0,
            dev_minor=info.devminor if kind in ("char", "block") else 0,
            xattrs={
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in sorted(info.pax_headers.items())
                if k.startswith("SCHILY.xattr.")
            },
        )
        self._write(header)
        if kind != "reg":
            self._entries.append(entry)
            return
        if info.size == 0:
            self._entries.append(_replace(entry, digest=_sha256(b"")))
            return
        src = io.BytesIO(payload) if isinstance(payload, bytes) else payload
        if src is None:
            raise EStargzError(info.name, f"a regular file of {info.size} bytes needs a payload")
        self._add_payload(entry, src)

    def _add_payload(self, first: TOCEntry, src: IO[bytes]) -> None:
        size = first.size
        file_sha = hashlib.sha256()
        chunks: list[TOCEntry] = []
        written = 0
        while written < size:
            n = min(self._chunk_size, size - written)
            self._end_member()  # every chunk starts a gzip member of its own
            offset = self._offset
            chunk_sha = hashlib.sha256()
            left = n
            while left:
                data = src.read(min(COPY_BYTES, left))
                if not data:
                    raise EStargzError(
                        first.name, f"payload ended after {written + n - left} of {size} bytes"
                    )
                left -= len(data)
                chunk_sha.update(data)
                file_sha.update(data)
                self._write(data)
            template = first if written == 0 else TOCEntry(name=first.name, type="chunk")
            last = written + n == size
            chunks.append(
                _replace(
                    template,
                    offset=offset,
                    chunk_offset=written,
                    chunk_size=0 if last else n,  # spec: the last chunk says 0
                    chunk_digest="sha256:" + chunk_sha.hexdigest(),
                )
            )
            written += n
        chunks[0] = _replace(chunks[0], digest="sha256:" + file_sha.hexdigest())
        pad = -size % TAR_BLOCK
        if pad:
            self._write(b"\0" * pad)
        self._entries.extend(chunks)

    def add_landmark(self, prefetch: bool, *, mtime: int = 0) -> None:
        """Append :data:`PREFETCH_LANDMARK` (prioritized files precede it) or the no-prefetch one."""
        name = PREFETCH_LANDMARK if prefetch else NO_PREFETCH_LANDMARK
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(LANDMARK_CONTENTS), 0o644, mtime
        info.uname = info.gname = ""
        self.add(info, LANDMARK_CONTENTS)
        if prefetch:
            self._prefetch_end = self._entries[-1].offset

    def close(self) -> WrittenBlob:
        """Write the TOC member and the footer; return the blob's digests."""
        if self._closed:
            raise EStargzError(None, "the writer is already closed")
        self._closed = True
        self._end_member()
        toc_offset = self._offset
        toc = {"version": TOC_VERSION, "entries": [e.to_json() for e in self._entries]}
        try:
            toc_json = json.dumps(toc, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError as exc:
            raise EStargzError(None, f"a name is not valid UTF-8: {exc}") from exc
        info = tarfile.TarInfo(TOC_TAR_NAME)
        info.size, info.mode, info.mtime = len(toc_json), 0o644, 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._write(toc_json + b"\0" * (-len(toc_json) % TAR_BLOCK))
        self._write(b"\0" * (2 * TAR_BLOCK))  # end of archive
        self._end_member()
        self._emit(footer_bytes(toc_offset))
        return WrittenBlob(
            digest="sha256:" + self._blob_sha.hexdigest(),
            size=self._offset,
            diff_id="sha256:" + self._diff_sha.hexdigest(),
            uncompressed_size=self._usize,
            toc_digest=_sha256(toc_json),
            toc_offset=toc_offset,
            prefetch_end=self._prefetch_end,
            entries=len(self._entries),
        )


def prioritize(
    names: Sequence[str], prioritized: Iterable[str], hardlinks: Mapping[str, str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Split entry names into (prioritized first, the rest, prioritized names not found).

    The reference's order (``build.go`` ``sortEntries``/``moveRec``): each
    prioritized name in the given order, preceded by its parent directories
    and its hardlink target when they are not placed yet; the rest keep the
    order of ``names``. Names are compared clean (:func:`clean_name`).
    """
    links = {clean_name(k): clean_name(v) for k, v in (hardlinks or {}).items()}
    present = {clean_name(n): n for n in names}
    picked: dict[str, None] = {}
    missed: list[str] = []

    def move(name: str) -> None:
        if name in picked:
            return
        parent = name.rpartition("/")[0]
        if parent:
            move(parent)
        if name in links:
            move(links[name])
        if name in present:
            picked[name] = None

    for p in prioritized:
        name = clean_name(p)
        if name not in present:
            missed.append(p)
            continue
        move(name)
    first = [present[n] for n in picked]
    rest = [n for n in names if clean_name(n) not in picked]
    return first, rest, missed


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class TOC:
    """A parsed, validated table of contents.

    ``entries``: every entry in blob order (chunks included), names clean.
    ``files``: name -> its entry (chunks excluded), in blob order; the root
    directory is "" when the tar lists it. ``chunks``: name -> the data
    entries of a non-empty regular file in file order. ``prefetch_end``: the
    blob range ``[0, prefetch_end)`` holds the prioritized files (0: none).
    ``rooted_links``: symlinks whose target is absolute or climbs above the
    layer root; whoever follows them outside a chroot must resolve them with
    :func:`resolve_in_root`, never against the host's root.
    """

    version: int
    digest: str
    toc_offset: int
    entries: tuple[TOCEntry, ...]
    files: Mapping[str, TOCEntry]
    chunks: Mapping[str, tuple[TOCEntry, ...]]
    prefetch_end: int
    has_landmark: bool
    rooted_links: tuple[str, ...]

    def verify(self, expected_digest: str) -> None:
        """Raise :class:`EStargzError` unless the TOC JSON has the descriptor's digest."""
        if self.digest != expected_digest:
            raise EStargzError(
                None,
                f"TOC digest {self.digest} does not match the layer annotation {expected_digest}",
                hint="the blob or the manifest was altered; refuse to mount it",
            )


def toc_range(blob_size: int, toc_offset: int) -> tuple[int, int]:
    """The blob range ``[start, end)`` of the TOC member, checked against the blob's size."""
    end = blob_size - FOOTER_SIZE
    if not 0 <= toc_offset < end:
        raise EStargzError(
            None, f"footer points the TOC at offset {toc_offset}, outside the blob (0..{end})"
        )
    return toc_offset, end


def open_toc(read_at: Callable[[int, int], bytes], blob_size: int) -> TOC:
    """Footer, then TOC, through ``read_at(offset, length)`` (a file or HTTP range reads)."""
    if blob_size < FOOTER_SIZE:
        raise EStargzError(None, f"blob of {blob_size} bytes is smaller than a footer")
    toc_offset = parse_footer(read_at(blob_size - FOOTER_SIZE, FOOTER_SIZE))
    start, end = toc_range(blob_size, toc_offset)
    return parse_toc(read_at(start, end - start), toc_offset)


def read_toc(path: str) -> TOC:
    """The validated TOC of the eStargz blob at ``path``."""
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)

        def read_at(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return open_toc(read_at, size)


def parse_toc(member: bytes, toc_offset: int) -> TOC:
    """Decompress the TOC gzip member (``blob[toc_offset:-FOOTER_SIZE]``), parse and validate it.

    Raises :class:`EStargzError` for a broken member, a tar entry other than
    :data:`TOC_TAR_NAME`, JSON that is not a version-1 TOC, or any entry that
    fails validation (see :func:`validate_entries`).
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = d.decompress(member, MAX_TOC_JSON_BYTES + 3 * TAR_BLOCK)
    except zlib.error as exc:
        raise EStargzError(None, f"TOC gzip member is corrupt: {exc}") from exc
    if not d.eof and d.unconsumed_tail:
        raise EStargzError(None, f"TOC is larger than {MAX_TOC_JSON_BYTES} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            info = tar.next()
            if info is None or clean_name(info.name) != TOC_TAR_NAME:
                got = info.name if info is not None else "nothing"
                raise EStargzError(None, f"TOC member holds {got!r}, not {TOC_TAR_NAME!r}")
            f = tar.extractfile(info)
            toc_json = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise EStargzError(None, f"TOC member is not a tar entry: {exc}") from exc
    if len(toc_json) != info.size:
        raise EStargzError(None, f"TOC is truncated ({len(toc_json)} of {info.size} bytes)")
    try:
        doc = json.loads(toc_json)
    except (ValueError, RecursionError) as exc:
        raise EStargzError(None, f"TOC is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != TOC_VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise EStargzError(None, f"TOC version {version!r} is not {TOC_VERSION}")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise EStargzError(None, "TOC has no 'entries' list")
    if len(raw_entries) > MAX_TOC_ENTRIES:
        raise EStargzError(None, f"TOC lists {len(raw_entries)} entries (limit {MAX_TOC_ENTRIES})")
    parsed = [_entry_from_json(i, e) for i, e in enumerate(raw_entries)]
    return validate_entries(parsed, toc_offset, _sha256(toc_json))


def _entry_from_json(index: int, obj: Any) -> dict[str, Any]:
    """A TOC JSON object as TOCEntry keyword arguments, each field type- and range-checked."""
    if not isinstance(obj, dict):
        raise EStargzError(f"#{index}", "entry is not a JSON object")
    name, kind = obj.get("name"), obj.get("type")
    if not isinstance(name, str):
        raise EStargzError(f"#{index}", "entry has no string 'name'")
    if kind not in ENTRY_TYPES:
        raise EStargzError(name, f"unknown type {kind!r}; expected one of {ENTRY_TYPES}")
    values: dict[str, Any] = {"name": name, "type": kind}
    for key, value in obj.items():
        attr = _KEY_TO_ATTR.get(key)
        if attr is None:
            continue  # name, type; NumLink and future fields are ignored, like the reference
        if attr in _INT_FIELDS:
            if type(value) is not int or value < 0:
                raise EStargzError(name, f"{key} must be a non-negative integer, got {value!r}")
            if value > (MAX_ID if attr in ("mode", "uid", "gid") else MAX_ENTRY_SIZE):
                raise EStargzError(name, f"{key}={value} is beyond any real image")
        elif attr == "xattrs":
            value = _xattrs(name, value)
        elif type(value) is not str:
            raise EStargzError(name, f"{key} must be a string, got {value!r}")
        values[attr] = value
    return values


def _xattrs(name: str, value: Any) -> dict[str, bytes]:
    import base64
    import binascii

    if not isinstance(value, dict):
        raise EStargzError(name, "xattrs must be an object")
    try:
        return {str(k): base64.b64decode(v, validate=True) for k, v in value.items()}
    except (binascii.Error, TypeError) as exc:
        raise EStargzError(name, f"xattrs value is not base64: {exc}") from exc


def validate_entries(entries: Sequence[Mapping[str, Any]], toc_offset: int, digest: str) -> TOC:
    """Check every rule a mounter relies on; return the indexed :class:`TOC`.

    ``entries``: TOCEntry keyword arguments (``name``, ``type``, ``size``,
    ...), as written in the TOC. Rejected, naming the entry: names with
    ``..`` or NUL; the same name twice; an entry under a non-directory; a
    hardlink to a name not listed before it; a link without a target; a
    non-empty file or chunk whose ``offset`` is outside ``[0, toc_offset)``
    or out of blob order; a missing or malformed ``chunkDigest``; chunks
    that do not tile their file exactly; sizes beyond :data:`MAX_ENTRY_SIZE`
    or beyond what deflate can produce from the chunk's compressed span.
    """
    out: list[dict[str, Any]] = []
    types: dict[str, str] = {}  # clean name -> type, of non-chunk entries
    rooted: list[str] = []
    current: dict[str, Any] | None = None  # the regular file whose chunks may follow
    covered = 0
    last_pos = (-1, -1)
    for raw in entries:
        e = dict(raw)
        kind, size = e["type"], e.get("size", 0)
        if kind == "chunk":
            if current is None:
                raise EStargzError(e["name"], "chunk without a regular file before it")
            name = current["name"]
            if e["name"] and clean_name(_checked_name(e["name"])) != name:
                raise EStargzError(e["name"], f"chunk follows {name!r}, another file")
            e["name"] = name
            if e.get("chunk_offset", 0) != covered:
                raise EStargzError(
                    name,
                    f"chunk at {e.get('chunk_offset', 0)}, expected {covered} (gap or overlap)",
                )
            e["chunk_size"] = e.get("chunk_size") or current["size"] - covered
        else:
            if current is not None and covered != current["size"]:
                raise EStargzError(
                    current["name"], f"chunks cover {covered} of its {current['size']} bytes"
                )
            current = None
            name = clean_name(_checked_name(e["name"]))
            if name in types or name == TOC_TAR_NAME:
                raise EStargzError(e["name"], "listed twice" if name in types else "reserved name")
            _check_parent(types, name, e["name"])
            _check_kind(types, e, name, rooted)
            e["name"] = name
            types[name] = kind
            if kind == "reg" and size > 0:
                if e.get("chunk_offset", 0) != 0:
                    raise EStargzError(name, f"first chunk at {e['chunk_offset']}, expected 0")
                e["chunk_size"] = e.get("chunk_size") or size
                current, covered = e, 0
        if current is not None and (kind == "chunk" or size > 0):
            chunk_size = e["chunk_size"]
            if covered + chunk_size > current["size"]:
                raise EStargzError(name, f"chunk of {chunk_size} bytes overruns the file")
            covered += chunk_size
            if not _DIGEST.match(e.get("chunk_digest", "")):
                raise EStargzError(
                    name, f"missing or malformed chunkDigest {e.get('chunk_digest', '')!r}"
                )
            pos = (e.get("offset", 0), e.get("inner_offset", 0))
            if not 0 <= pos[0] < toc_offset:
                raise EStargzError(
                    name, f"offset {pos[0]} lies outside the blob's data (0..{toc_offset})"
                )
            if pos <= last_pos:
                raise EStargzError(name, f"offset {pos} is out of blob order (after {last_pos})")
            last_pos = pos
            e["_data"] = True
        out.append(e)
    if current is not None and covered != current["size"]:
        raise EStargzError(
            current["name"], f"chunks cover {covered} of its {current['size']} bytes"
        )
    return _index(out, toc_offset, digest, rooted)


def _index(out: list[dict[str, Any]], toc_offset: int, digest: str, rooted: list[str]) -> TOC:
    """Fill ``next_offset`` (the reference's rule: the next member's start) and build the maps."""
    last = toc_offset
    for e in reversed(out):
        if not e.get("_data"):
            continue
        offset, inner = e.get("offset", 0), e.get("inner_offset", 0)
        e["next_offset"] = last
        if inner + e["chunk_size"] > DEFLATE_MAX_RATIO * (last - offset):
            raise EStargzError(
                e["name"],
                f"{e['chunk_size']} bytes cannot come from {last - offset} compressed bytes "
                "(deflate expands at most 1032:1)",
            )
        if not inner:
            last = offset
    entries: list[TOCEntry] = []
    files: dict[str, TOCEntry] = {}
    chunks: dict[str, list[TOCEntry]] = {}
    for e in out:
        data = e.pop("_data", False)
        entry = TOCEntry(**e)
        entries.append(entry)
        if entry.type != "chunk":
            files[entry.name] = entry
        if data:
            chunks.setdefault(entry.name, []).append(entry)
    landmark = files.get(PREFETCH_LANDMARK)
    return TOC(
        version=TOC_VERSION,
        digest=digest,
        toc_offset=toc_offset,
        entries=tuple(entries),
        files=files,
        chunks={n: tuple(c) for n, c in chunks.items()},
        prefetch_end=landmark.offset if landmark is not None and landmark.size > 0 else 0,
        has_landmark=landmark is not None or NO_PREFETCH_LANDMARK in files,
        rooted_links=tuple(rooted),
    )


def _checked_name(name: str) -> str:
    if "\0" in name:
        raise EStargzError(name, "name contains NUL")
    if ".." in name.split("/"):
        raise EStargzError(name, "name contains '..' (would escape the layer root)")
    return name


def _check_parent(types: Mapping[str, str], name: str, raw: str) -> None:
    parent = name.rpartition("/")[0]
    while parent:
        above = types.get(parent)
        if above is not None:
            if above != "dir":
                raise EStargzError(raw, f"parent {parent!r} is a {above}, not a directory")
            return  # its own parents were checked when it was added
        parent = parent.rpartition("/")[0]


def _check_kind(types: Mapping[str, str], e: dict[str, Any], name: str, rooted: list[str]) -> None:
    kind = e["type"]
    if kind in ("symlink", "hardlink"):
        link = e.get("link_name", "")
        if not link or "\0" in link:
            raise EStargzError(name, f"{kind} without a valid linkName")
        if kind == "hardlink":
            target = clean_name(_checked_name(link))
            if types.get(target, "dir") == "dir":
                raise EStargzError(
                    name, f"hardlink to {link!r}, which is not a file listed before it"
                )
            e["link_name"] = target
        elif link.startswith("/") or resolve_in_root(name, link) is None:
            rooted.append(name)
    elif kind != "reg" and e.get("size"):
        raise EStargzError(name, f"a {kind} with a size")


def resolve_in_root(link_name: str, target: str) -> str | None:
    """Where symlink ``link_name`` -> ``target`` points, as a clean root-relative path.

    An absolute target is taken from the layer root (as inside the
    container). Returns ``None`` when a relative target climbs above the root
    (the kernel clamps such a path at the container's root: a mounter must
    do the same, never resolve it on the host).
    """
    parts = [] if target.startswith("/") else clean_name(link_name).split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                if target.startswith("/"):
                    continue  # "/.." is "/"
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def read_chunk(entry: TOCEntry, compressed: bytes) -> bytes:
    """Decompress and verify one payload: ``compressed`` is ``blob[entry.offset:entry.next_offset]``.

    Returns the chunk's ``entry.chunk_size`` bytes. Raises :class:`EStargzError`
    when the bytes are not gzip, end early, or fail ``entry.chunk_digest``:
    nothing unverified is ever returned.
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    want = entry.inner_offset + entry.chunk_size
    try:
        data = d.decompress(compressed, want)
    except zlib.error as exc:
        raise EStargzError(entry.name, f"chunk at {entry.offset} is not gzip: {exc}") from exc
    if len(data) < want:
        raise EStargzError(
            entry.name, f"chunk at {entry.offset} ended after {len(data)} of {want} bytes"
        )
    data = data[entry.inner_offset :]
    verify_chunk(entry, data)
    return data


def verify_chunk(entry: TOCEntry, data: bytes) -> None:
    """Raise :class:`EStargzError` unless ``data`` matches ``entry.chunk_digest``."""
    algo, _, want = entry.chunk_digest.partition(":")
    got = hashlib.new(algo, data).hexdigest() if algo else ""
    if got != want:
        raise EStargzError(
            entry.name,
            f"chunk at file offset {entry.chunk_offset} has digest {algo}:{got}, "
            f"the TOC says {entry.chunk_digest}",
            hint="the blob was altered or damaged in transit; it is never served",
        )


# --------------------------------------------------------------------------- small helpers


def clean_name(name: str) -> str:
    """A tar name as a clean root-relative path: "./a//b/" -> "a/b", "/" -> "" (``..`` kept)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _rfc3339(epoch: int) -> str:
    if epoch == 0:
        return ""  # the reference omits a zero time
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _if_changed(last: dict[int, str], ident: int, name: str) -> str:
    """The reference writes a user/group name only when it differs from the last one for that id."""
    if not name or last.get(ident) == name:
        return ""
    last[ident] = name
    return name


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _replace(e: TOCEntry, **changes: Any) -> TOCEntry:
    import dataclasses

    return dataclasses.replace(e, **changes)
