"""``zerostart inspect``: what each layer costs and which files, pulled in by what.

Sizes come from the image itself (each layer is read once, decompressed as
a stream); the "why" of each file comes from the trace saved next to the
image at build time, so the report reads like::

    runtime       22.7 MB gz   70.5 MB  446 files
    ...
    24.0 MB  /usr/local/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-….so
             ← numpy._core._multiarray_umath
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import ImageError
from zerostart.estargz import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from zerostart.oci import TITLE_ANNOTATION, open_layer_tar, read_oci_layout
from zerostart.warmup import TRACE_NAME

# eStargz's own entries (table of contents, prefetch landmarks): not files of the image
ESTARGZ_METADATA = frozenset((TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK))
DEFAULT_TOP = 15
MB = 1e6


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    layer: str
    reason: str


@dataclass(frozen=True)
class LayerInfo:
    name: str
    digest: str
    media_type: str
    size: int  # compressed bytes (what a pull transfers)
    uncompressed_size: int
    file_count: int


@dataclass
class ImageReport:
    path: str
    manifest_digest: str
    labels: dict[str, str]
    layers: list[LayerInfo] = field(default_factory=list)
    files: list[FileInfo] = field(default_factory=list)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # layer -> kind -> bytes

    @property
    def total_size(self) -> int:
        return sum(la.size for la in self.layers)

    @property
    def total_uncompressed(self) -> int:
        return sum(la.uncompressed_size for la in self.layers)

    def layer(self, name: str) -> LayerInfo:
        for la in self.layers:
            if la.name == name:
                return la
        raise KeyError(name)

    def to_dict(self, top: int = DEFAULT_TOP) -> dict[str, Any]:
        return {
            "path": self.path,
            "manifest_digest": self.manifest_digest,
            "labels": self.labels,
            "size": self.total_size,
            "uncompressed_size": self.total_uncompressed,
            "layers": [la.__dict__ for la in self.layers],
            "groups": self.groups,
            "largest_files": [f.__dict__ for f in self.largest(top)],
        }

    def largest(self, top: int = DEFAULT_TOP, layer: str | None = None) -> list[FileInfo]:
        files = [f for f in self.files if layer is None or f.layer == layer]
        return sorted(files, key=lambda f: (-f.size, f.path))[:top]


def _kind(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".pyc"):
        return "pyc"
    if name.endswith(".py"):
        return "python source"
    if ".so" in name or "/bin/" in path:
        return "native code"
    return "data"


def _reasons(image_path: str) -> dict[str, str]:
    trace = Path(image_path) / TRACE_NAME
    try:
        doc = json.loads(trace.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ImageError(f"{trace}: unreadable trace: {exc}") from exc
    return {f["path"]: f["reason"] for f in doc.get("files", [])}


def inspect_image(path: str | os.PathLike[str]) -> ImageReport:
    """Read an OCI layout built by zerostart (or anyone) and size every layer and file."""
    image = read_oci_layout(path)
    reasons = _reasons(str(path))
    labels = dict(image.config.get("config", {}).get("Labels") or {})
    report = ImageReport(str(path), image.manifest_digest, labels)
    for ref in image.layers:
        name = ref.title.removeprefix("zerostart ").removesuffix(" layer") or ref.digest[7:19]
        total = count = 0
        groups: dict[str, int] = {}
        try:
            with open_layer_tar(ref.path, ref.media_type) as raw:
                counter = _Counter(raw)
                with tarfile.open(fileobj=counter, mode="r|") as tar:  # type: ignore[call-overload]
                    for m in tar:
                        if not m.isfile() or m.name in ESTARGZ_METADATA:
                            continue
                        count += 1
                        kind = _kind("/" + m.name)
                        groups[kind] = groups.get(kind, 0) + m.size
                        p = "/" + m.name
                        reason = reasons.get(p, "")
                        if not reason and p.endswith(".pyc"):
                            reason = "compiled from its .py (no stat, no compile at start)"
                        report.files.append(FileInfo(p, m.size, name, reason))
                    # drain the end-of-archive blocks so the byte count is the tar's size
                    while counter.read(1 << 16):
                        pass
                total = counter.count
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImageError(f"{path}: cannot read layer {ref.digest}: {exc}") from exc
        report.layers.append(LayerInfo(name, ref.digest, ref.media_type, ref.size, total, count))
        report.groups[name] = groups
    return report


class _Counter:
    """Counts the bytes tarfile reads from a stream."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.count += len(data)
        return data


def _mb(n: int) -> str:
    return f"{n / MB:7.1f} MB"


def format_report(report: ImageReport, top: int = DEFAULT_TOP) -> str:
    """A plain-text size table: layers, what kind of bytes, the largest files and why."""
    lines = [f"image {report.path}  {report.manifest_digest[:19]}…"]
    title = report.labels.get(TITLE_ANNOTATION)
    if title:
        lines.append(f"  {title}")
    lines.append(f"  {'layer':<12} {'compressed':>11} {'unpacked':>11} {'files':>6}")
    for la in report.layers:
        lines.append(
            f"  {la.name:<12} {_mb(la.size):>11} {_mb(la.uncompressed_size):>11} {la.file_count:>6}"
        )
    lines.append(
        f"  {'total':<12} {_mb(report.total_size):>11} {_mb(report.total_uncompressed):>11} "
        f"{sum(la.file_count for la in report.layers):>6}"
    )
    no_model = [la for la in report.layers if la.name != "model"]
    if len(no_model) != len(report.layers):
        lines.append(
            f"  {'w/o model':<12} {_mb(sum(la.size for la in no_model)):>11} "
            f"{_mb(sum(la.uncompressed_size for la in no_model)):>11}"
        )
    for name, groups in report.groups.items():
        parts = ", ".join(
            f"{k} {v / MB:.1f} MB" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"  {name}: {parts}")
    lines.append(f"largest files (of {len(report.files)}):")
    for f in report.largest(top):
        why = f"  ← {f.reason}" if f.reason else ""
        lines.append(f"  {_mb(f.size)}  {f.path}{why}")
    return "\n".join(lines)


def summary_line(report: ImageReport, top: int = 4) -> str:
    """One line in the spirit of "libcublasLt 501 MB, libmax 143 MB …"."""
    items = [f"{os.path.basename(f.path)} {f.size / MB:.1f} MB" for f in report.largest(top)]
    return ", ".join(items) + " …"
