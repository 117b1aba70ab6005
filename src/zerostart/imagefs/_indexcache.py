"""Each layer's index, kept on the node by layer digest: a later mount maps it instead of the TOC.

Theory of operation
-------------------
A first mount of a layer fetches its TOC (a range request or two), parses and
validates it (names, sizes, offsets, symlinks: estargz/_reader.py) or its zTOC
(ztoc/_format.py), or scans the tar of a layer fetched whole, and writes the
result as one compact binary file (imagefs/_layerindex.py) named by the
layer's digest. A layer is immutable, so its index is a function of its digest
(and, for eStargz, of the TOC digest the manifest vouches for, which the file
records and a later mount compares). Any image that has the layer, on any
later mount, maps the file: no TOC request, no JSON, no merge. The layers are
merged name by name as the kernel looks names up (imagefs/_tree.py), so the
work at mount does not grow with the number of files beyond one checksum and a
few C-speed scans of the columns.

Files are written atomically (temporary file + rename) into the node's cache
folder (mode 0700, like the chunk cache). A file that is damaged, cut short,
of another layer or TOC, or that describes something a mount must not show
(imagefs/_layerindex.py lists the checks) is removed, logged, and the layer
indexed again from its TOC; so is a whole-fetched layer's file whose tar is
gone from the cache. A plain gzip layer kept with its zTOC needs no referrers
request on a later mount: its spans' checkpoints are in the file.

Runtime module (the imagefs daemon): standard library only.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zerostart.imagefs._fetch import Layer
from zerostart.imagefs._index import ImageIndexError
from zerostart.imagefs._layerindex import LayerIndex
from zerostart.imagefs._layers import GZIP_TYPES, ZSTD_TYPES, open_layers
from zerostart.imagefs._layerwrite import encode
from zerostart.imagefs._tree import Tree
from zerostart.imagefs._zran import TOC_ANNOTATION, SpanReader, find_ztocs
from zerostart.ztoc import Ztoc

if TYPE_CHECKING:
    from zerostart.registry.ranges import BlobReader

log = logging.getLogger("zerostart.imagefs")

SUFFIX = ".lix"


def index_image(
    reader: BlobReader, manifest_digest: str, manifest: dict[str, Any], cache_dir: Path
) -> tuple[list[Layer], Tree, bool]:
    """``(layers, tree, cached)``: each layer's kept index, else built from its TOC and kept.

    ``cached``: every layer's index came from the cache (no TOC was fetched).
    A failure to keep an index is logged, never raised. Raises
    ImageIndexError / RegistryError as ``open_layers`` does.
    """
    descs: list[dict[str, Any]] = list(manifest.get("layers", []))
    kept: list[tuple[Layer, LayerIndex] | None] = [
        load(cache_dir, i, desc) for i, desc in enumerate(descs)
    ]
    missing = [i for i, k in enumerate(kept) if k is None]
    if missing:
        plain = any(_plain(descs[i]) for i in missing)
        ztocs = find_ztocs(reader, manifest_digest, manifest) if plain else {}
        opened, entries = open_layers(
            reader, [descs[i] for i in missing], cache_dir, ztocs, indexes=missing
        )
        for i, layer, layer_entries in zip(missing, opened, entries, strict=True):
            z = ztocs.get(layer.digest) if layer.spans is not None else None
            meta = _meta(layer, descs[i], z)
            data = encode(layer_entries, meta, z.checkpoints if z is not None else ())
            kept[i] = layer, LayerIndex(data, layer=layer.digest)
            try:
                save(layer_index_path(cache_dir, layer.digest), data)
            except (OSError, ValueError) as exc:
                log.warning("could not keep the index of layer %s: %s", layer.digest, exc)
        for old in (cache_dir / "index").glob("*.idx"):  # the per-manifest files of before
            old.unlink(missing_ok=True)
    done = [k for k in kept if k is not None]
    return [la for la, _ in done], Tree([li for _, li in done]), not missing


def _plain(desc: dict[str, Any]) -> bool:
    annotations = desc.get("annotations") or {}
    plain = desc.get("mediaType") in GZIP_TYPES | ZSTD_TYPES  # what a zTOC may index
    return plain and TOC_ANNOTATION not in annotations


def _meta(layer: Layer, desc: dict[str, Any], z: Ztoc | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "layer": layer.digest,
        "size": layer.size,
        "prefetch_end": layer.prefetch_end,
        "note": layer.note,
        "bound": layer.size,
    }
    if z is not None:
        meta |= {"source": "ztoc", "bound": z.out_size, "out_size": z.out_size}
        meta |= {"span_bytes": z.span_bytes, "blob_size": z.blob_size}
    elif layer.local_path is not None:
        tar_size = layer.local_path.stat().st_size
        meta |= {"source": "whole", "local_path": str(layer.local_path), "bound": tar_size}
        meta["local_size"] = tar_size
    else:
        meta |= {"source": "estargz", "toc": (desc.get("annotations") or {})[TOC_ANNOTATION]}
    return meta


def layer_index_path(cache_dir: Path, layer_digest: str) -> Path:
    """Where the index of the layer with this digest lives (``algo:hex`` -> ``algo-hex.lix``)."""
    algo, _, hexpart = layer_digest.partition(":")
    if not hexpart or not hexpart.isalnum() or not algo.isalnum():
        raise ValueError(f"not a digest: {layer_digest!r}")
    return cache_dir / "index" / "layers" / f"{algo}-{hexpart}{SUFFIX}"


def save(path: Path, data: bytes) -> None:
    """Write one layer's index atomically. Raises OSError when the folder cannot be written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _expect(desc: dict[str, Any]) -> dict[str, Any]:
    toc = (desc.get("annotations") or {}).get(TOC_ANNOTATION)
    if desc.get("mediaType") in GZIP_TYPES and toc is not None:
        return {"size": int(desc.get("size", -1)), "source": "estargz", "toc": toc}
    return {"size": int(desc.get("size", -1))}


def load(cache_dir: Path, index: int, desc: dict[str, Any]) -> tuple[Layer, LayerIndex] | None:
    """Layer number ``index`` (descriptor ``desc``) from its kept index, or None (absent or refused).

    A refused file is removed (the caller indexes the layer again from its TOC).
    """
    digest = str(desc.get("digest", ""))
    try:
        path = layer_index_path(cache_dir, digest)
    except ValueError:
        return None
    try:
        with open(path, "rb") as f:
            data: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        data = None
        problem = str(exc) or "empty"
    else:
        try:
            li = LayerIndex(data, layer=digest, expect=_expect(desc))
            return _layer_of(index, li), li
        except ImageIndexError as exc:
            problem = str(exc)
    log.warning("layer index %s not used (%s): indexing from the TOC", path.name, problem)
    path.unlink(missing_ok=True)
    return None


def _layer_of(index: int, li: LayerIndex) -> Layer:
    m = li.meta
    source = m.get("source")
    layer = Layer(index, m["layer"], int(m["size"]), note=str(m.get("note", "")))
    if source == "estargz":
        layer.prefetch_end = int(m.get("prefetch_end", 0))
    elif source == "whole":
        local = Path(str(m.get("local_path")))
        try:
            whole = local.stat().st_size == m.get("local_size")
        except OSError:
            whole = False
        if not whole:
            raise ImageIndexError(f"the whole-fetched layer's tar {local.name} is gone or changed")
        layer.local_path = local
    elif source == "ztoc":
        z = Ztoc(
            int(m["span_bytes"]), int(m["blob_size"]), int(m["out_size"]), li.checkpoints(), ()
        )
        if not z.checkpoints or z.blob_size != layer.size:
            raise ImageIndexError("a zTOC layer's index without its spans")
        layer.spans = SpanReader(z)
    else:
        raise ImageIndexError(f"unknown source {source!r}")
    return layer
