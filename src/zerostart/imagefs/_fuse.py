"""The FUSE operations: a read-only filesystem over the merged index and the chunk reader.

Binding: pyfuse3 on libfuse3 (see :mod:`zerostart.imagefs` for why). Metadata
operations (``lookup``, ``getattr``, ``readdir``, ``readlink``, xattrs,
``statfs``) are answered from the in-memory index in the event loop, with no
I/O. ``read`` runs the blocking chunk fetch in a worker thread, so one slow
chunk does not stall the metadata of the whole mount; a chunk that cannot be
fetched or verified fails that read with ``EIO`` (the message goes to the log
and to ``imagefs stats``).

The image is immutable, so the kernel may cache everything for as long as it
likes: long entry/attribute timeouts and ``keep_cache`` on open (page cache
survives close and re-open). Writes cannot reach us: the mount is ``ro``,
and an open for writing is refused with ``EROFS`` anyway.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import pyfuse3
import trio

from zerostart.imagefs._fetch import ChunkReader, ChunkReadError
from zerostart.imagefs._index import ImageIndexError, Node
from zerostart.imagefs._profile import Recorder
from zerostart.imagefs._tree import Tree

log = logging.getLogger(__name__)

# The image never changes under a mount: let the kernel cache names and attributes for an hour.
CACHE_TIMEOUT_S = 3600.0
BLOCK_SIZE = 4096
NAME_MAX = 255
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class ImageOperations(pyfuse3.Operations):  # type: ignore[misc]
    """pyfuse3 callbacks; ``tree`` is read-only after mount, ``reader`` is thread-safe."""

    def __init__(self, tree: Tree, reader: ChunkReader, recorder: Recorder | None = None) -> None:
        super().__init__()
        self.tree, self.reader, self.recorder = tree, reader, recorder

    def _node(self, inode: int) -> Node:
        node = self.tree.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = CACHE_TIMEOUT_S
        a.attr_timeout = CACHE_TIMEOUT_S
        a.st_mode = node.mode
        a.st_nlink = node.nlink if node.children is None else 2
        a.st_uid, a.st_gid = node.uid, node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attr(parent)
        try:
            child = self.tree.lookup(parent, name)
        except ImageIndexError as exc:  # a record the layer's index holds but cannot show
            log.error("lookup of %r: %s", name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if child is None:
            # A negative entry the kernel caches: an interpreter probes every sys.path
            # folder for every import, and the answer never changes in an image.
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = 0
            missing.entry_timeout = CACHE_TIMEOUT_S
            return missing
        return self._attr(child)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.link

    async def opendir(self, inode: int, ctx: Any) -> int:
        if self._node(inode).children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        try:
            children = self.tree.listdir(node) if node.children is not None else {}
        except ImageIndexError as exc:
            log.error("listing inode %d: %s", fh, exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        names = sorted(children)
        for i in range(start_id, len(names)):
            if not pyfuse3.readdir_reply(token, names[i], self._attr(children[names[i]]), i + 1):
                return

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if not node.extents:
            return b""
        if self.recorder is not None:  # in the event loop: one thread, in arrival order
            self.recorder.touch(node, off, size)
        cached = self.reader.read_cached(node, off, size)  # memory or trusted disk: no thread hop
        if cached is not None:
            return cached
        try:
            return await trio.to_thread.run_sync(self.reader.read, node, off, size)
        except ChunkReadError as exc:
            raise pyfuse3.FUSEError(errno.EIO) from exc

    async def release(self, fh: int) -> None:
        return None

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        used = self.tree.total_bytes  # every layer's files, hidden ones included
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = (used + BLOCK_SIZE - 1) // BLOCK_SIZE
        s.f_bfree = s.f_bavail = 0
        s.f_files = self.tree.entries
        s.f_ffree = s.f_favail = 0
        s.f_namemax = NAME_MAX
        return s

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._node(inode).xattrs.get(name.decode("utf-8", "surrogateescape"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [k.encode("utf-8", "surrogateescape") for k in self._node(inode).xattrs]
