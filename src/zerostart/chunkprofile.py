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


def decode(data: bytes) -> Profile:
    """Parse and check a profile document. Raises :class:`ProfileError` saying what is wrong."""
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile is {len(data)} bytes, over the {MAX_PROFILE_BYTES} limit")
    if data.count(b"[") > MAX_READS + MAX_FILES + 2:  # every read is a list: refuse unparsed
        raise ProfileError(f"profile has over {MAX_READS} reads (limits)")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProfileError(f"profile is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError(f"not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise ProfileError(f"profile version {doc.get('version')!r} is not {VERSION}")
    files, reads = doc.get("files"), doc.get("reads")
    if not isinstance(files, list) or not isinstance(reads, list):
        raise ProfileError("profile needs a 'files' list and a 'reads' list")
    if len(files) > MAX_FILES or len(reads) > MAX_READS:
        raise ProfileError(
            f"profile names {len(files)} files and {len(reads)} reads "
            f"(limits {MAX_FILES} and {MAX_READS})"
        )
    names = []
    for name in files:
        if not isinstance(name, str):
            raise ProfileError(f"file name {name!r} is not a string")
        try:
            names.append(relative_name(name, absolute="strip"))
        except PathEscapeError as exc:
            raise ProfileError(f"profile entry {exc}: refused") from exc
    out = []
    for row in reads:
        if (
            not isinstance(row, list)
            or len(row) != 2
            or not all(type(v) is int for v in row)
            or not 0 <= row[0] < len(names)
            or not 0 <= row[1] < MAX_OFFSET
        ):
            raise ProfileError(f"read {str(row)[:80]} is not [file index, offset] within bounds")
        out.append((names[row[0]], row[1]))
    return Profile(tuple(out))


def profile_of(reads: Sequence[tuple[str, int]]) -> Profile:
    """A profile of ``(path, offset)`` pairs; later repeats of a pair are dropped."""
    return Profile(tuple(dict.fromkeys((relative_name(p, absolute="strip"), o) for p, o in reads)))
