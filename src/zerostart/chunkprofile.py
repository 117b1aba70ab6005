"""The chunk profile: which chunks of which files a start read, in the order it read them.

A lazily mounted image is fast when the bytes a start needs arrive in the
order it needs them, and only those. eStargz's landmark names *files*
(everything before ``.prefetch.landmark``), so a start that touches 30 MB of a
434 MB library fetches all of it. A chunk profile names *chunks*: each entry is
a file of the image and the offset of a chunk in it, first read first, page
faults of mapped libraries included (they reach the FUSE daemon as reads).

Format (JSON, UTF-8, at :data:`PROFILE_PATH` in an image layer of its own)::

    {"format": "zerostart.chunk-profile", "version": 1,
     "files": ["usr/lib/libpython3.11.so.1.0", ...],          # image paths, no leading /
     "reads": [[0, 0], [0, 4194304], [7, 0], ...]}            # [index into files, file offset]

Entries name a file and an offset, not a layer and a blob offset: the profile
then does not depend on the bytes of the layers it points into, so it can be
added to an image in a layer of its own after the image was built and
recorded, without changing the layers it describes (and their digests, and
the chunks a node already caches). The reader maps each entry to the chunk
that covers that offset in the image's index.

Decoding checks the document's shape and bounds (:data:`MAX_PROFILE_BYTES`,
:data:`MAX_READS`, :data:`MAX_FILES`, offsets below 2**53) and refuses a name
that climbs out of the image (``..``, NUL): a hostile profile is refused as a
whole. Names the image does not have, and offsets past a file's end, are a
matter of the image: the mount skips those entries and counts them.

Leaf module, standard library only: the build side writes it, imagefs reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zerostart.errors import PathEscapeError, ZerostartError
from zerostart.paths import relative_name

FORMAT = "zerostart.chunk-profile"
VERSION = 1
# Where the profile lies in the image (a format entry, like eStargz's landmarks).
PROFILE_PATH = ".zerostart-profile.json"
# A 1.4 GB image at 64 KiB chunks has ~22,000 chunks; a profile is a fraction of them
# (the PyTorch server's start at 256 KiB: bench/results/lazy_chunks.json). These bounds
# (8 GiB of 64 KiB chunks, 32 GiB of 256 KiB ones) keep a hostile profile to well under a second of parsing.
MAX_PROFILE_BYTES = 16 * 1024 * 1024
MAX_READS = 131_072
MAX_FILES = 131_072
MAX_OFFSET = 2**53  # JSON numbers beyond this are not exact in every reader


class ProfileError(ZerostartError):
    """A chunk profile that is malformed or hostile; the mount ignores it and says why."""


@dataclass(frozen=True)
class Profile:
    """A decoded profile: ``reads`` are ``(image path, file offset)`` in first-read order."""

    reads: tuple[tuple[str, int], ...]

    def encode(self) -> bytes:
        """The JSON document (files listed once, in first-read order); deterministic."""
        files: dict[str, int] = {}
        rows = [[files.setdefault(path, len(files)), off] for path, off in self.reads]
        doc = {"format": FORMAT, "version": VERSION, "files": list(files), "reads": rows}
        return json.dumps(doc, separators=(",", ":")).encode()


def lists_of(
    data: bytes,
    *,
    fmt: str,
    version: int,
    max_bytes: int,
    limits: dict[str, int],
    error: type[ZerostartError],
) -> list[list[Any]]:
    """The lists named by ``limits`` of a ``{"format": fmt, "version": version, ...}`` JSON
    profile, each at most its limit long; raises ``error`` saying what is wrong.

    Shared by the chunk profile and the span profile (zerostart/ztoc/_profile.py):
    the document's size is bounded before parsing, and so is its count of lists
    (every read is one), so a hostile profile costs well under a second.
    """
    if len(data) > max_bytes:
        raise error(f"profile is {len(data)} bytes, over the {max_bytes} limit")
    if data.count(b"[") > sum(limits.values()) + len(limits):  # refuse a huge one unparsed
        raise error(f"profile has over {max(limits.values())} reads (limits)")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise error(f"profile is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"not a {fmt} document")
    if doc.get("version") != version:
        raise error(f"profile version {doc.get('version')!r} is not {version}")
    out = [x for x in (doc.get(key) for key in limits) if isinstance(x, list)]
    if len(out) != len(limits):
        raise error("profile needs " + " and ".join(f"a '{key}' list" for key in limits))
    if any(len(x) > limit for x, limit in zip(out, limits.values(), strict=True)):
        counts = " and ".join(f"{len(x)} {key}" for x, key in zip(out, limits, strict=True))
        raise error(f"profile names {counts} (limits {' and '.join(map(str, limits.values()))})")
    return out


def index_pairs(
    rows: list[Any], bounds: tuple[int, int], what: str, error: type[Exception]
) -> list[tuple[int, int]]:
    """A profile's read rows checked as ``[a, b]`` integer pairs with ``0 <= a < bounds[0]``
    and ``0 <= b < bounds[1]``; raises ``error`` naming the first row that is not, with
    ``what`` saying what the pair means (e.g. "file index, offset")."""
    out = []
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 2
            or not all(type(v) is int for v in row)
            or not 0 <= row[0] < bounds[0]
            or not 0 <= row[1] < bounds[1]
        ):
            raise error(f"read {str(row)[:80]} is not [{what}] within bounds")
        out.append((row[0], row[1]))
    return out


def decode(data: bytes) -> Profile:
    """Parse and check a profile document. Raises :class:`ProfileError` saying what is wrong."""
    files, reads = lists_of(
        data,
        fmt=FORMAT,
        version=VERSION,
        max_bytes=MAX_PROFILE_BYTES,
        limits={"files": MAX_FILES, "reads": MAX_READS},
        error=ProfileError,
    )
    names = []
    for name in files:
        if not isinstance(name, str):
            raise ProfileError(f"file name {name!r} is not a string")
        try:
            names.append(relative_name(name, absolute="strip"))
        except PathEscapeError as exc:
            raise ProfileError(f"profile entry {exc}: refused") from exc
    pairs = index_pairs(reads, (len(names), MAX_OFFSET), "file index, offset", ProfileError)
    return Profile(tuple((names[i], offset) for i, offset in pairs))


def profile_of(reads: Sequence[tuple[str, int]]) -> Profile:
    """A profile of ``(path, offset)`` pairs; later repeats of a pair are dropped."""
    return Profile(tuple(dict.fromkeys((relative_name(p, absolute="strip"), o) for p, o in reads)))
