"""The eStargz reader: footer -> TOC -> validated index; chunks decompressed and verified."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zerostart.estargz._format import (
    _DIGEST,
    _INT_FIELDS,
    _KEY_TO_ATTR,
    DEFLATE_MAX_RATIO,
    ENTRY_TYPES,
    FOOTER_SIZE,
    MAX_ENTRY_SIZE,
    MAX_ID,
    MAX_TOC_ENTRIES,
    MAX_TOC_JSON_BYTES,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TAR_BLOCK,
    TOC_TAR_NAME,
    TOC_VERSION,
    Chunk,
    EStargzError,
    TOCEntry,
    _sha256,
    clean_name,
    parse_footer,
)
from zerostart.paths import PathEscapeError, relative_name

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
    toc_json = _tar_payload(raw)
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


def _tar_payload(raw: bytes) -> bytes:
    """The payload of the TOC member's single tar entry, which must be :data:`TOC_TAR_NAME`.

    A ustar header is read by hand (tarfile costs a mount ~20 ms of imports);
    PAX or GNU long-name headers, which a short fixed name never needs, go
    through tarfile.
    """
    header = raw[:TAR_BLOCK]
    if len(header) < TAR_BLOCK:
        raise EStargzError(None, "TOC member is not a tar entry (shorter than a header)")
    if _octal(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise EStargzError(None, "TOC member is not a tar entry (bad header checksum)")
    if header[156:157] in (b"x", b"g", b"L", b"K"):
        return _tar_payload_slow(raw)
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
    if clean_name(full) != TOC_TAR_NAME:
        raise EStargzError(None, f"TOC member holds {full!r}, not {TOC_TAR_NAME!r}")
    field = header[124:136]  # octal, or GNU base-256 when the high bit is set
    size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else _octal(field)
    payload = raw[TAR_BLOCK : TAR_BLOCK + size]
    if size < 0 or len(payload) != size:
        raise EStargzError(None, f"TOC is truncated ({len(payload)} of {size} bytes)")
    return payload


def _octal(field: bytes) -> int:
    """A tar header's octal number; -1 when it is not one (fails the checks that use it)."""
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return -1


def _tar_payload_slow(raw: bytes) -> bytes:
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            info = tar.next()
            if info is None or clean_name(info.name) != TOC_TAR_NAME:
                got = info.name if info is not None else "nothing"
                raise EStargzError(None, f"TOC member holds {got!r}, not {TOC_TAR_NAME!r}")
            f = tar.extractfile(info)
            payload = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise EStargzError(None, f"TOC member is not a tar entry: {exc}") from exc
    if len(payload) != info.size:
        raise EStargzError(None, f"TOC is truncated ({len(payload)} of {info.size} bytes)")
    return payload


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
    """``name`` unchanged, unless it leaves the layer root (``..``) or holds NUL.

    A leading ``/`` is the root's, as in tar (:func:`zerostart.paths.relative_name`).
    """
    try:
        relative_name(name, absolute="strip")
    except PathEscapeError as exc:
        raise EStargzError(name, f"name {exc.problem} (would escape the layer root)") from exc
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


def read_chunk(entry: Chunk, compressed: bytes) -> bytes:
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


def verify_chunk(entry: Chunk, data: bytes) -> None:
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
