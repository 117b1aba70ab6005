"""Deterministic layer tarballs: same files in, same bytes (and digests) out.

Reproducible means more than a zero mtime. Every entry of a layer is written
in sorted path order with: mtime = SOURCE_DATE_EPOCH (default 0), uid/gid 0,
empty user/group names, mode normalised to 0755 (directories, executables)
or 0644 (other files) and 0777 for symlinks, no device numbers, PAX format
without time records. Every parent directory gets its own entry, so unpacking
never invents directories with the unpacker's umask. The gzip stream carries
no file name and a zero timestamp; zstd (optional, when the ``zstandard``
module is importable) is deterministic by construction.

The default compression is eStargz (:mod:`zerostart.estargz`): still a
``tar+gzip`` layer that every runtime unpacks, cut into one gzip member per
file (4 MiB chunk) with a table of contents at the end, so that a node can
mount it lazily. The files the warm-up read come first, in the order it read
them (``prioritized``), then ``.prefetch.landmark``, then the rest in path
order: the prefetch is one range request.

Python sources get an *unchecked-hash* pyc (PEP 552) compiled by the traced
interpreter itself in a fresh process with the image path as ``co_filename``:
a timestamp pyc would be rejected (every mtime is the epoch), and an unchecked
one is read without a ``stat`` of the source, which is what a read-only
image wants.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from zerostart import estargz
from zerostart.errors import ImageError, RuntimeToolError
from zerostart.image.closure import ImageFile
from zerostart.oci import LAYER_GZIP, LAYER_TAR, LAYER_ZSTD

GZIP_LEVEL = 6  # zlib's default: level 9 costs ~2x the time for ~1% fewer bytes here
ZSTD_LEVEL = 10
COPY_CHUNK_BYTES = 1 << 20
COMPILE_TIMEOUT_S = 600.0  # a few thousand modules on a slow shared core
STRIP_TIMEOUT_S = 120.0
MEDIA_TYPES = {
    "estargz": estargz.MEDIA_TYPE,
    "gzip": LAYER_GZIP,
    "zstd": LAYER_ZSTD,
    "none": LAYER_TAR,
}
STICKY_DIRS = {"/tmp": 0o1777}  # world-writable with sticky bit, like every distro's /tmp


def source_date_epoch() -> int:
    """The timestamp written into every entry: $SOURCE_DATE_EPOCH, default 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImageError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer") from exc
    if value < 0:
        raise ImageError(f"SOURCE_DATE_EPOCH={value} is negative")
    return value


def compressions() -> tuple[str, ...]:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return ("estargz", "gzip", "none")
    return ("estargz", "gzip", "zstd", "none")


@dataclass(frozen=True)
class Entry:
    """A tar entry to write: content from a file on disk, bytes, a symlink or a directory."""

    path: str  # absolute image path
    kind: str  # "file", "symlink", "dir"
    source: str | None = None
    data: bytes | None = None
    target: str | None = None
    executable: bool = False
    mode: int | None = None  # overrides the normalised mode (sticky /tmp)


@dataclass(frozen=True)
class LayerBlob:
    """A written layer: where its compressed bytes lie and the digests OCI needs."""

    name: str
    path: str  # compressed blob on disk
    media_type: str
    digest: str  # sha256:… of the compressed bytes
    size: int
    diff_id: str  # sha256:… of the uncompressed tar
    uncompressed_size: int
    file_count: int
    files: tuple[tuple[str, int], ...]  # (image path, bytes) of regular files
    toc_digest: str = ""  # eStargz only: sha256 of the TOC JSON
    prefetch_size: int = 0  # eStargz only: compressed bytes before .prefetch.landmark

    def annotations(self) -> dict[str, str]:
        """Layer descriptor annotations: the eStargz TOC digest and uncompressed size."""
        if not self.toc_digest:
            return {}
        return {
            estargz.TOC_DIGEST_ANNOTATION: self.toc_digest,
            estargz.UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts, optionally passing bytes on."""

    def __init__(self, sink: IO[bytes] | Any | None) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def _parents(path: str) -> list[str]:
    out = []
    p = os.path.dirname(path)
    while p not in ("/", ""):
        out.append(p)
        p = os.path.dirname(p)
    return out


def with_parents(entries: Iterable[Entry], extra_dirs: Iterable[str] = ()) -> list[Entry]:
    """Entries plus an explicit entry for every parent directory, sorted by path."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        by_path[e.path] = e
    for d in extra_dirs:
        by_path.setdefault(d, Entry(d, "dir", mode=STICKY_DIRS.get(d)))
    for e in list(by_path.values()):
        for parent in _parents(e.path):
            if parent not in by_path:
                by_path[parent] = Entry(parent, "dir", mode=STICKY_DIRS.get(parent))
            elif by_path[parent].kind != "dir":
                raise ImageError(
                    f"{parent} is a {by_path[parent].kind} and also a directory in one layer"
                )
    return [by_path[k] for k in sorted(by_path, key=lambda p: p.encode("utf-8", "surrogateescape"))]


def write_layer(
    name: str,
    entries: Iterable[Entry],
    out_dir: str | os.PathLike[str],
    *,
    compression: str = "estargz",
    mtime: int | None = None,
    prioritized: Sequence[str] = (),
    chunk_size: int = estargz.DEFAULT_CHUNK_SIZE,
) -> LayerBlob:
    """Write one deterministic layer into ``out_dir`` (named by its digest).

    ``prioritized``: image paths in the order the workload reads them; an
    eStargz layer holds those first (with their parent directories), then the
    prefetch landmark. Other compressions ignore it and keep path order.
    """
    if compression not in MEDIA_TYPES:
        raise ImageError(f"unknown compression {compression!r}; choose from {sorted(MEDIA_TYPES)}")
    mtime = source_date_epoch() if mtime is None else mtime
    ordered = with_parents(entries)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=".tmp")
    files: list[tuple[str, int]] = []
    if compression == "estargz":
        try:
            with os.fdopen(fd, "wb") as raw_out:
                written, files = _write_estargz(raw_out, ordered, mtime, prioritized, chunk_size)
            final = out_dir / written.digest.split(":", 1)[1]
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return LayerBlob(
            name=name,
            path=str(final),
            media_type=MEDIA_TYPES[compression],
            digest=written.digest,
            size=written.size,
            diff_id=written.diff_id,
            uncompressed_size=written.uncompressed_size,
            file_count=len(files),
            files=tuple(files),
            toc_digest=written.toc_digest,
            prefetch_size=written.prefetch_end,
        )
    try:
        with os.fdopen(fd, "wb") as raw_out:
            compressed = _HashingWriter(raw_out)
            comp_stream, closer = _compressor(compression, compressed)
            uncompressed = _HashingWriter(comp_stream)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for e in ordered:
                    size = _add(tar, e, mtime)
                    if e.kind == "file":
                        files.append((e.path, size))
            closer()
        digest = "sha256:" + compressed.sha.hexdigest()
        final = out_dir / compressed.sha.hexdigest()
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide blobs from other users
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return LayerBlob(
        name=name,
        path=str(final),
        media_type=MEDIA_TYPES[compression],
        digest=digest,
        size=compressed.size,
        diff_id="sha256:" + uncompressed.sha.hexdigest(),
        uncompressed_size=uncompressed.size,
        file_count=len(files),
        files=tuple(files),
    )


def _write_estargz(
    out: IO[bytes],
    ordered: list[Entry],
    mtime: int,
    prioritized: Sequence[str],
    chunk_size: int,
) -> tuple[estargz.WrittenBlob, list[tuple[str, int]]]:
    by_name = {e.path.lstrip("/"): e for e in ordered}
    first, rest, _missed = estargz.prioritize(list(by_name), [p.lstrip("/") for p in prioritized])
    writer = estargz.Writer(out, chunk_size=chunk_size, level=GZIP_LEVEL)
    files: list[tuple[str, int]] = []
    if not first:
        writer.add_landmark(False, mtime=mtime)  # the reference puts it first
    for i, tar_name in enumerate([*first, *rest]):
        e = by_name[tar_name]
        info = _tar_info(e, mtime)
        if e.kind != "file":
            writer.add(info)
        elif e.data is not None:
            info.size = len(e.data)
            writer.add(info, e.data)
        else:
            if e.source is None:
                raise ImageError(f"{e.path}: a file entry needs a source or data")
            with open(e.source, "rb") as f:
                info.size = os.fstat(f.fileno()).st_size
                writer.add(info, f)
        if e.kind == "file":
            files.append((e.path, info.size))
        if i == len(first) - 1:
            writer.add_landmark(True, mtime=mtime)  # the end of the prefetch range
    return writer.close(), sorted(files)


def _compressor(kind: str, sink: _HashingWriter) -> tuple[Any, Callable[[], None]]:
    if kind == "gzip":
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=GZIP_LEVEL, mtime=0)
        return gz, gz.close
    if kind == "zstd":
        try:
            import zstandard
        except ImportError as exc:
            raise ImageError(
                "zstd layers need the `zstandard` module (pip install zstandard)"
            ) from exc
        cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=False
        )
        zw = cctx.stream_writer(cast(IO[bytes], sink), closefd=False)  # a file-like sink
        return zw, zw.close
    return sink, lambda: None


def _tar_info(e: Entry, mtime: int) -> tarfile.TarInfo:
    """The normalised tar header of an entry (size left 0 for the caller to set)."""
    info = tarfile.TarInfo(e.path.lstrip("/"))
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if e.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = e.mode if e.mode is not None else 0o755
    elif e.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = e.target or ""
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.mode = e.mode if e.mode is not None else (0o755 if e.executable else 0o644)
    return info


def _add(tar: tarfile.TarFile, e: Entry, mtime: int) -> int:
    info = _tar_info(e, mtime)
    if e.kind != "file":
        tar.addfile(info)
        return 0
    if e.data is not None:
        info.size = len(e.data)
        tar.addfile(info, io.BytesIO(e.data))
        return info.size
    if e.source is None:
        raise ImageError(f"{e.path}: a file entry needs a source or data")
    with open(e.source, "rb") as f:
        info.size = os.fstat(f.fileno()).st_size
        tar.addfile(info, f)
    return info.size


# --------------------------------------------------------------------------- file content


# Compiles each job as py_compile does (unchecked-hash pycs), optionally without the
# docstrings: what -OO drops, but without -O's removal of asserts, so the code runs the same.
PYC_COMPILER = r"""
import ast, json, os, sys
from importlib._bootstrap_external import _code_to_hash_pyc
from importlib.util import source_hash
DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
def without_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, DOC_OWNERS) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.copy_location(ast.Pass(), body[0])]
    return tree
for src, out, dfile, strip_docs in json.load(sys.stdin):
    with open(src, "rb") as f:
        data = f.read()
    tree = ast.parse(data, filename=dfile)
    if strip_docs:
        tree = without_docstrings(tree)
    code = compile(tree, dfile, "exec", dont_inherit=True)
    with open(out, "wb") as f:
        f.write(_code_to_hash_pyc(code, source_hash(data), checked=False))
"""


def compile_pycs(
    python: str, jobs: list[tuple[str, str, str, bool]], timeout_s: float = COMPILE_TIMEOUT_S
) -> None:
    """Compile (source, output pyc, image path, strip docstrings) jobs with ``python`` in one
    fresh process.

    One fresh interpreter with a fixed input list makes the marshalled bytes a
    function of the inputs (marshal's back-references depend on what else is
    alive in the process).
    """
    if not jobs:
        return
    cmd = [python, "-I", "-c", PYC_COMPILER]
    try:
        done = subprocess.run(
            cmd,
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeToolError(cmd[:3], f"timed out after {timeout_s:.0f}s compiling pycs") from exc
    if done.returncode != 0:
        raise RuntimeToolError(
            cmd[:3], "compiling pycs failed", returncode=done.returncode, stderr=done.stderr
        )


def strip_debug(source: str, cache_dir: str | os.PathLike[str]) -> str:
    """A copy of ``source`` without .debug_* sections nor the static symbol table, cached by
    content digest.

    ``--strip-unneeded`` keeps the dynamic symbols a shared library exports and everything
    relocation needs (what Debian's dh_strip does to libraries); it also drops ``.symtab``,
    which only debuggers and ``nm`` read: libpython3.11 6.46 MB -> 5.73 MB (docs/image.md).
    """
    strip = shutil.which("strip")
    if strip is None:
        return source
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    out = Path(cache_dir) / f"{digest}.unneeded"
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = [strip, "--strip-unneeded", "--enable-deterministic-archives", "-o", str(tmp), source]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=STRIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeToolError(cmd, f"timed out after {STRIP_TIMEOUT_S:.0f}s") from exc
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeToolError(cmd, "failed", returncode=done.returncode, stderr=done.stderr)
    os.replace(tmp, out)
    return str(out)


def pyc_path(dest: str, cache_tag: str, *, sourceless: bool) -> str:
    """Image path of the pyc compiled for the Python source at image path ``dest``."""
    head, name = os.path.split(dest)
    if sourceless:
        return f"{head}/{name[:-3]}.pyc"
    return f"{head}/__pycache__/{name[:-3]}.{cache_tag}.pyc"


def layer_entries(
    files: Iterable[ImageFile],
    *,
    python: str,
    cache_tag: str,
    work_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    sourceless: bool = False,
) -> list[Entry]:
    """Turn closure files into tar entries: sources plus their pyc, stripped ELF copies.

    ``sourceless``: ship only the compiled module, as ``name.pyc`` where ``name.py``
    was (the import system's sourceless layout): 4.6 MB less for the runtime
    layer, at the price of tracebacks without source lines in those modules.
    Sourceless modules are compiled without their docstrings too (``help()`` has no
    source to show them from anyway; the stdlib runs under ``-OO``, which drops them
    as well): measured in docs/image.md.
    """
    entries: list[Entry] = []
    jobs: list[tuple[str, str, str, bool]] = []
    pyc_dir = Path(work_dir) / "pyc"
    for f in sorted(files, key=lambda f: f.dest):
        if f.link_target is not None:
            entries.append(Entry(f.dest, "symlink", target=f.link_target))
            continue
        assert f.source is not None
        source = strip_debug(f.source, cache_dir) if f.strip_debug else f.source
        if f.compile_pyc:
            # One snapshot feeds both the .py and its pyc, so an edit during the
            # build cannot leave a pyc that disagrees with the source beside it.
            snapshot = Path(work_dir) / "src" / f.dest.lstrip("/")
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.source, snapshot)
            source = str(snapshot)
        if not (sourceless and f.compile_pyc):
            entries.append(Entry(f.dest, "file", source=source, executable=f.executable))
        if f.compile_pyc:
            pyc_dest = pyc_path(f.dest, cache_tag, sourceless=sourceless)
            out = pyc_dir / pyc_dest.lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((source, str(out), f.dest, sourceless))
            entries.append(Entry(pyc_dest, "file", source=str(out)))
    compile_pycs(python, jobs)
    return entries
