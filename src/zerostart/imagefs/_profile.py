"""Chunk profiles on a mount: record which chunks the reads touch, and turn a profile into a plan.

Recording (``--record FILE``): every FUSE read, served from the cache or the
network, passes :meth:`Recorder.touch` in the event loop before it is
answered; the first read of each chunk appends ``(inode, chunk offset)``.
Reads the kernel serves from its page cache never reach us, and need not: on
a fresh mount the page cache of its files is empty, so the first touch of
every page, ``read(2)`` and page fault of a mapped library alike, arrives
here. At the end the inodes are named (each node keeps the name it was first
looked up under) and the profile is written (:mod:`zerostart.chunkprofile`).

Applying (:func:`plan`): each ``(path, offset)`` is looked up in the merged
tree; entries for a name the image lacks, for something that is not a regular
file, or for an offset past the file's end are skipped and counted (a profile
recorded on another build of the image), never an error. The result is the
extents to prefetch, in profile order, each chunk once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zerostart.chunkprofile import (
    MAX_PROFILE_BYTES,
    PROFILE_PATH,
    Profile,
    ProfileError,
    decode,
    profile_of,
)
from zerostart.imagefs._index import Extent, Node, extents_for
from zerostart.imagefs._tree import Tree

log = logging.getLogger(__name__)


class Recorder:
    """First touches of chunks, in order. Called from the FUSE event loop only (one thread)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()
        self.order: list[tuple[int, int]] = []

    def touch(self, node: Node, offset: int, length: int) -> None:
        for x in extents_for(node, offset, length):
            key = (node.ino, x.file_offset)
            if key not in self._seen:
                self._seen.add(key)
                self.order.append(key)

    def profile(self, tree: Tree) -> Profile:
        """The recorded order as a profile of image paths (a hard link: its first name)."""
        names = paths_by_inode(tree)
        return profile_of([(names[ino], off) for ino, off in self.order if ino in names])

    def write(self, tree: Tree, path: Path) -> int:
        """Write the profile to ``path`` atomically; returns the number of chunks in it."""
        profile = self.profile(tree)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(profile.encode())
        tmp.replace(path)
        return len(profile.reads)


def paths_by_inode(tree: Tree) -> dict[int, str]:
    """Inode -> image path (no leading ``/``) of every regular file made so far (a hard link:
    the name it was first looked up under). The kernel reads only what it looked up."""
    return {ino: n.path for ino, n in tree.nodes.items() if n.kind == "reg"}


def lookup(tree: Tree, path: str) -> Node | None:
    return tree.find(path)


@dataclass
class Plan:
    """What a profile asks for on this image: the extents in order, and what was skipped."""

    extents: list[Extent] = field(default_factory=list)
    entries: int = 0
    skipped_missing: int = 0  # a name the image does not have, or not a regular file
    skipped_offset: int = 0  # past the file's end
    skipped_local: int = 0  # in a layer fetched whole or read through a zTOC: not by chunk

    def summary(self) -> dict[str, int]:
        return {
            "entries": self.entries,
            "chunks": len(self.extents),
            "bytes": sum(x.end - x.start for x in self.extents),
            "skipped_missing": self.skipped_missing,
            "skipped_offset": self.skipped_offset,
            "skipped_local": self.skipped_local,
        }


def plan(tree: Tree, profile: Profile, *, local_layers: frozenset[int] = frozenset()) -> Plan:
    """The chunks ``profile`` names in ``tree``, in its order, each once (see the module doc)."""
    out = Plan(entries=len(profile.reads))
    seen: set[str] = set()
    nodes: dict[str, Node | None] = {}
    for path, offset in profile.reads:
        node = nodes[path] if path in nodes else nodes.setdefault(path, lookup(tree, path))
        if node is None or node.kind != "reg":
            out.skipped_missing += 1
            continue
        if offset >= node.size:
            out.skipped_offset += 1
            continue
        for x in extents_for(node, offset, 1):
            if x.layer in local_layers or x.digest is None:
                out.skipped_local += 1
            elif x.digest not in seen:
                seen.add(x.digest)
                out.extents.append(x)
    return out


def load(tree: Tree, read: Callable[[Node], bytes]) -> Profile | None:
    """The profile the image carries at :data:`PROFILE_PATH`, or None (absent, or refused: logged).

    ``read``: the whole file's bytes (the chunk reader's: verified against the TOC).
    Raises what ``read`` raises (a chunk that cannot be fetched).
    """
    node = lookup(tree, PROFILE_PATH)
    if node is None:
        return None
    try:
        if node.kind != "reg":
            raise ProfileError(f"{PROFILE_PATH} is not a regular file")
        if node.size > MAX_PROFILE_BYTES:
            raise ProfileError(f"profile is {node.size} bytes, over the {MAX_PROFILE_BYTES} limit")
        return decode(read(node))
    except ProfileError as exc:
        log.warning("chunk profile refused, prefetching by landmark instead: %s", exc)
        return None
