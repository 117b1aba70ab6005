"""Chunk profiles on a mount: record which chunks the reads touch, and turn a profile into a plan.

Recording (``--record FILE``): every FUSE read, served from the cache or the
network, passes :meth:`Recorder.touch` in the event loop before it is
answered; the first read of each chunk appends ``(inode, chunk offset)``,
and the first read of each span of a zTOC layer ``(layer, span)``
(a span profile, :mod:`zerostart.ztoc._profile`, for images zerostart did not build).
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
from collections.abc import Callable, Sequence
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
from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import Extent, Node, extents_for
from zerostart.imagefs._tree import Tree
from zerostart.ztoc import LayerRef, SpanProfile, spans_digest

log = logging.getLogger(__name__)


class Recorder:
    """First touches of chunks (and of zTOC spans), in order. Called from the FUSE event loop only.

    ``layers``: the mount's layers. A read of a file in a zTOC layer (its one
    extent is the file's place in the layer's uncompressed tar) is recorded as
    the spans under the bytes read, ``(layer index, span index)``; any other
    read as ``(inode, chunk offset)``.
    """

    def __init__(self, layers: Sequence[Layer] = ()) -> None:
        self.layers = list(layers)
        self._seen: set[tuple[int, int]] = set()
        self.order: list[tuple[int, int]] = []
        self._spans_seen: set[tuple[int, int]] = set()
        self.spans: list[tuple[int, int]] = []

    def touch(self, node: Node, offset: int, length: int) -> None:
        end = min(offset + length, node.size)
        for x in extents_for(node, offset, length):
            layer = self.layers[x.layer] if x.layer < len(self.layers) else None
            if layer is not None and layer.spans is not None:
                lo = x.start + max(offset, x.file_offset) - x.file_offset
                hi = x.start + min(end, x.file_offset + x.size) - x.file_offset
                for span in layer.spans.spans_for(lo, hi):
                    if (x.layer, span) not in self._spans_seen:
                        self._spans_seen.add((x.layer, span))
                        self.spans.append((x.layer, span))
                continue
            key = (node.ino, x.file_offset)
            if key not in self._seen:
                self._seen.add(key)
                self.order.append(key)

    def profile(self, tree: Tree) -> Profile:
        """The recorded order as a profile of image paths (a hard link: its first name)."""
        names = paths_by_inode(tree)
        return profile_of([(names[ino], off) for ino, off in self.order if ino in names])

    def span_profile(self) -> SpanProfile:
        """The recorded zTOC spans as a span profile (layers in the order first read)."""
        refs: dict[int, int] = {}
        for li, _ in self.spans:
            refs.setdefault(li, len(refs))
        layers = tuple(
            LayerRef(self.layers[li].digest, spans_digest(self.layers[li].spans.z.checkpoints))
            for li in refs
        )
        return SpanProfile(layers, tuple((refs[li], span) for li, span in self.spans))

    def write(self, tree: Tree, path: Path) -> int:
        """Write the profile to ``path`` atomically; returns the number of chunks (or spans) in it.

        An image read through zTOCs gets a span profile (``zerostart index
        REF --add-profile``), any other a chunk profile (``imagefs add-profile``).
        """
        if self.spans:
            data, n = self.span_profile().encode(), len(self.spans)
            if self.order:
                log.warning(
                    "chunk profile: %d eStargz chunks left out of a span profile", len(self.order)
                )
        else:
            profile = self.profile(tree)
            data, n = profile.encode(), len(profile.reads)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return n


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
