"""Small real images for the imagefs tests, written by our builder's own layer writer.

``make_image`` writes an OCI layout of three layers and returns what a correct
mount must show (path -> bytes, symlinks, what whiteouts removed):

* ``base`` (eStargz, 64 KiB chunks): text files, a 300 kB random file (5
  chunks), a symlink, a directory that the next layer makes opaque, a file
  the next layer whites out, and ``app/shared.bin``, a file whose bytes are
  the same as ``lib/copy.bin`` in the top layer (one chunk fetch serves both);
* ``top`` (eStargz): a whiteout, an opaque directory, an override of a base
  file, ``lib/copy.bin``;
* ``plain`` (plain gzip, no TOC): the fallback path, fetched whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from zerostart.image.layers import Entry, LayerBlob, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout

CHUNK_BYTES = 64 * 1024
BIG_BYTES = 300_000


@dataclass
class Expected:
    files: dict[str, bytes] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    layers: list[LayerBlob] = field(default_factory=list)


def make_image(out: Path, seed: int = 7, *, plain_layer: bool = True) -> Expected:
    rng = random.Random(seed)
    big = rng.randbytes(BIG_BYTES)
    shared = rng.randbytes(100_000)
    base = [
        Entry("/etc/hostname", "file", data=b"zerostart\n"),
        Entry("/etc/gone.conf", "file", data=b"whited out by the top layer\n"),
        Entry("/app/model/weights.bin", "file", data=big),
        Entry("/app/model/config.json", "file", data=b'{"hidden": 384}\n'),
        Entry("/app/shared.bin", "file", data=shared),
        Entry("/app/run.sh", "file", data=b"#!/bin/sh\necho hi\n", executable=True),
        Entry("/app/link", "symlink", target="model/config.json"),
        Entry("/app/abs", "symlink", target="/etc/hostname"),
        Entry("/data/old/a.txt", "file", data=b"old a\n"),
        Entry("/data/old/b.txt", "file", data=b"old b\n"),
        Entry("/empty.txt", "file", data=b""),
    ]
    top = [
        Entry("/etc/.wh.gone.conf", "file", data=b""),
        Entry("/data/old/.wh..wh..opq", "file", data=b""),
        Entry("/data/old/new.txt", "file", data=b"new in top\n"),
        Entry("/app/model/config.json", "file", data=b'{"hidden": 768}\n'),
        Entry("/lib/copy.bin", "file", data=shared),
    ]
    blobs = out.parent / f".{out.name}-blobs"
    layers = [
        write_layer(
            "base",
            base,
            blobs,
            prioritized=["/etc/hostname", "/app/model/weights.bin"],
            chunk_size=CHUNK_BYTES,
        ),
        write_layer("top", top, blobs, chunk_size=CHUNK_BYTES),
    ]
    exp = Expected(
        files={
            "etc/hostname": b"zerostart\n",
            "app/model/weights.bin": big,
            "app/model/config.json": b'{"hidden": 768}\n',
            "app/shared.bin": shared,
            "lib/copy.bin": shared,
            "app/run.sh": b"#!/bin/sh\necho hi\n",
            "data/old/new.txt": b"new in top\n",
            "empty.txt": b"",
        },
        symlinks={"app/link": "model/config.json", "app/abs": "/etc/hostname"},
        absent=["etc/gone.conf", "data/old/a.txt", "data/old/b.txt", "etc/.wh.gone.conf"],
    )
    if plain_layer:
        plain_data = rng.randbytes(50_000)
        layers.append(
            write_layer(
                "plain",
                [Entry("/plain/blob.bin", "file", data=plain_data)],
                blobs,
                compression="gzip",
            )
        )
        exp.files["plain/blob.bin"] = plain_data
    write_oci_layout(out, ImageConfig(entrypoint=("/app/run.sh",)), layers, {})
    exp.layers = layers
    return exp
