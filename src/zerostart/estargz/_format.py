"""eStargz constants, the TOC entry type, the footer, and errors: what writer and reader share.

See :mod:`zerostart.estargz` for the theory of operation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from zerostart.errors import ZerostartError
from zerostart.oci import LAYER_GZIP

# --------------------------------------------------------------------------- constants (spec)

TOC_TAR_NAME = "stargz.index.json"
TOC_VERSION = 1
FOOTER_SIZE = 51  # 10 gzip header + 2 XLEN + 26 Extra ('S','G', LEN, "%016xSTARGZ") + 5 + 8
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"  # spec: "a regular file entry with 4 bits contents 0xf"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
MEDIA_TYPE = LAYER_GZIP  # eStargz is a plain gzip layer
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


# tar header type -> TOC ``type`` (the spec's names). CONTTYPE ("7", a contiguous file) is a
# regular file to every reader (POSIX ustar: "treat as a regular file"); GNU tar writes none.
# (the header's type byte, as tarfile's REGTYPE... constants; spelt out so that reading a
# TOC imports no tarfile)
TAR_KINDS = {
    b"0": "reg",  # REGTYPE
    b"\0": "reg",  # AREGTYPE
    b"7": "reg",  # CONTTYPE
    b"5": "dir",  # DIRTYPE
    b"2": "symlink",  # SYMTYPE
    b"1": "hardlink",  # LNKTYPE
    b"3": "char",  # CHRTYPE
    b"4": "block",  # BLKTYPE
    b"6": "fifo",  # FIFOTYPE
}


class Chunk(Protocol):
    """What reading one payload needs of its TOC entry (a :class:`TOCEntry` or a :class:`ChunkRef`)."""

    @property
    def name(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def inner_offset(self) -> int: ...
    @property
    def chunk_offset(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def chunk_digest(self) -> str: ...
    @property
    def next_offset(self) -> int: ...


class ChunkRef(NamedTuple):
    """The fields of a TOC entry that locate and verify one payload, as a cheap tuple.

    The lazy filesystem makes one per chunk of a file when the file is first
    looked up (imagefs/_layerindex.py); an image holds ~10^5 chunks, and a
    :class:`TOCEntry` dataclass each would cost much more. Field meanings are
    :class:`TOCEntry`'s.
    """

    name: str
    offset: int
    inner_offset: int
    chunk_offset: int
    chunk_size: int
    chunk_digest: str
    next_offset: int


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


# --------------------------------------------------------------------------- small helpers


def clean_name(name: str) -> str:
    """A tar name as a clean root-relative path: "./a//b/" -> "a/b", "/" -> "" (``..`` kept)."""
    if (
        name
        and name[0] not in "/."
        and name[-1] != "/"
        and "//" not in name
        and "/./" not in name
        and not name.endswith("/.")
    ):
        return name  # already clean: the common case, without splitting
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
