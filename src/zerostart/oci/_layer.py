"""A layer blob's tar stream: gzip (one member or many, as eStargz writes), zstd, or plain.

What unpacking an image (``zerostart.container``), inspecting one
(``zerostart inspect``) and converting one to a docker-archive
(``zerostart.image.oci``) read. The lazy filesystem reads layers by range
instead, through its own index (``zerostart.imagefs``).
"""

from __future__ import annotations

import io
import zlib
from typing import Any

from zerostart.oci._media import GZIP_LAYER_TYPES, ZSTD_LAYER_TYPES

READ_CHUNK_BYTES = 1 << 20  # blob bytes read per step: few syscalls, bounded memory
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's "gzip header and trailer" mode (zlib.h, inflateInit2)


class _Decompressed(io.RawIOBase):
    """A file-like view of a compressed blob's uncompressed bytes (gzip, zstd or plain)."""

    def __init__(self, path: str, media_type: str) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._buf = b""
        # by name: Docker's gzip type ends in ".gzip"; the OCI suffixes also cover
        # non-distributable layers (image-spec media-types.md)
        self._gzip = media_type in GZIP_LAYER_TYPES or media_type.endswith("+gzip")
        if self._gzip:
            self._d: Any = zlib.decompressobj(_GZIP_WBITS)
        elif media_type in ZSTD_LAYER_TYPES or media_type.endswith("+zstd"):
            import zstandard

            self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        else:
            self._d = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while len(self._buf) < len(b):
            chunk = self._f.read(READ_CHUNK_BYTES)
            if not chunk:
                break
            self._buf += self._decompress(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        if self._d is None:
            return chunk
        if not self._gzip:
            return bytes(self._d.decompress(chunk))
        # A gzip layer may be many members (eStargz: one per file): start a new
        # decompressor wherever one ends, as gzip(1) and every runtime do.
        out = []
        while chunk:
            out.append(self._d.decompress(chunk))
            if not self._d.eof:
                break
            chunk = self._d.unused_data
            self._d = zlib.decompressobj(_GZIP_WBITS)
        return b"".join(out)

    def close(self) -> None:
        self._f.close()
        super().close()


def open_layer_tar(path: str, media_type: str) -> io.BufferedReader:
    """The uncompressed tar stream of the layer blob at ``path``, by its ``media_type``.

    gzip (OCI ``…+gzip``, Docker's ``…tar.gzip``) and zstd (``…+zstd``) are
    decompressed as read (zstd needs the ``zstandard`` module, imported only
    then); anything else is read as is.
    """
    return io.BufferedReader(_Decompressed(path, media_type), READ_CHUNK_BYTES)
