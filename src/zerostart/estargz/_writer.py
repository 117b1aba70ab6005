"""The eStargz writer: tar entries in, one gzip member per file or chunk, TOC and footer out."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from zerostart.estargz._format import (
    COPY_BYTES,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_GZIP_LEVEL,
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TAR_BLOCK,
    TAR_KINDS,
    TOC_DIGEST_ANNOTATION,
    TOC_TAR_NAME,
    TOC_VERSION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EStargzError,
    TOCEntry,
    _sha256,
    clean_name,
    footer_bytes,
)

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
        kind = TAR_KINDS.get(info.type)
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


def _replace(e: TOCEntry, **changes: Any) -> TOCEntry:
    return dataclasses.replace(e, **changes)
