"""Where snapshots live, and how identical image files are stored once.

Layout (STORE is :func:`default_store` unless ``--store`` names one)::

    STORE/
      blobs/sha256/ab/abcdef...     every distinct image file, by content, read-only
      snapshots/NAME/               one snapshot (see _manifest for its files)
        images/pages-1.img ...      hardlinks to blobs: CRIU reads them in place
      restores/NAME-<pid>/          CRIU's restore log and pidfile, one per restore

Dedup is by whole file: a hardlink costs nothing at restore (CRIU reads the
files in place, no reassembly), so the restore path stays as fast as a plain
folder. What it catches: snapshots re-taken of an unchanged process
(identical small images, same-content page images of read-only state). Page
images of two runs of a Python program rarely match byte for byte (heap
addresses, random hash seeds), so chunk-level dedup would save more but needs
reassembly (or CRIU's image streamer) before every restore; not done.

Standard library and the leaf :mod:`zerostart.cachedir` only.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from zerostart.cachedir import state_base
from zerostart.paths import PathEscapeError, relative_name
from zerostart.snapshot._errors import CorruptSnapshotError, SnapshotError
from zerostart.snapshot._host import SMALL_FILE_BYTES, sha256_file
from zerostart.snapshot._manifest import IMAGES_DIR, ImageFile

STORE_ENV = "ZEROSTART_SNAPSHOTS"
ROOT_STORE = Path("/var/lib/zerostart/snapshots")  # FHS: a system service's state
LEGACY_USER_STORE = "~/.cache/zerostart/snapshots"  # a user's store until 2026-12 (read on)
log = logging.getLogger("zerostart.snapshot")
_warned: set[Path] = set()  # legacy stores already warned about in this process
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def default_store() -> Path:
    """Where snapshots live when no ``--store`` is given.

    ``$ZEROSTART_SNAPSHOTS``, else ``/var/lib/zerostart/snapshots`` for root
    (system state), else ``$XDG_STATE_HOME/zerostart/snapshots`` (default
    ``~/.local/state/zerostart/snapshots``): a snapshot is state, not a cache
    that may be deleted at will (:mod:`zerostart.cachedir`).

    Before December 2026 a user's snapshots were kept in
    ``~/.cache/zerostart/snapshots`` (:data:`LEGACY_USER_STORE`). Where that
    folder exists and the new one does not, it stays the store, with a warning
    (once per process) that says how to move it: a snapshot of a process
    recorded paths in its folder (CRIU reopens its ``boot.log`` by path; the
    restore marker's folder, :mod:`zerostart.snapshot.marker`, is in its
    environment), so after a move it boots instead of restoring until taken
    again, and the move is the user's call.
    """
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return ROOT_STORE
    store = state_base() / "snapshots"
    legacy = Path(os.path.expanduser(LEGACY_USER_STORE))
    if not store.exists() and legacy.is_dir():
        if legacy not in _warned:
            _warned.add(legacy)
            log.warning(
                "event=snapshot_store_legacy store=%s new=%s hint=%s",
                legacy,
                store,
                f"snapshots are state, kept in {store} since 2026-12; "
                f"`mkdir -p {store.parent} && mv {legacy} {store}` "
                "moves them (then take process snapshots again: they recorded the old path), "
                f"or set {STORE_ENV} to keep them where they are",
            )
        return legacy
    return store


def check_name(name: str) -> str:
    if not name or name.startswith(".") or not set(name) <= _NAME_OK:
        raise SnapshotError(
            f"bad snapshot name {name!r}", hint="use letters, digits, '.', '_' and '-'"
        )
    return name


def snapshot_dir(store: Path, name: str) -> Path:
    return store / "snapshots" / check_name(name)


def _blob_path(store: Path, digest: str) -> Path:
    return store / "blobs" / "sha256" / digest[:2] / digest


def dedup_images(store: Path, images: Path) -> tuple[dict[str, ImageFile], int]:
    """Hash every image file and hardlink it to its blob; returns (digests, bytes saved)."""
    result: dict[str, ImageFile] = {}
    saved = 0
    for path in sorted(images.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        digest = sha256_file(path)
        blob = _blob_path(store, digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if blob.exists() and os.path.samefile(blob, path):
            pass  # already linked (a snapshot folder digested again)
        elif blob.exists() and sha256_file(blob) != digest:
            # The blob was damaged (blobs are hard links, so damage to any snapshot's
            # copy shows here): never link new snapshots to it; this file replaces it.
            tmp_blob = blob.with_name(blob.name + ".new")
            os.link(path, tmp_blob)
            tmp_blob.replace(blob)
            os.chmod(blob, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        elif blob.exists():
            saved += path.stat().st_size
            tmp = path.with_name(path.name + ".link")
            os.link(blob, tmp)
            tmp.replace(path)
        else:
            os.link(path, blob)
            os.chmod(blob, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        st = path.stat()
        result[path.name] = ImageFile(size=st.st_size, sha256=digest, mtime_ns=st.st_mtime_ns)
    return result, saved


def verify_images(folder: Path, images: dict[str, ImageFile], *, full: bool = False) -> None:
    """Refuse a snapshot whose image files are missing, extra, or not the recorded bytes.

    Same cost model as mapped files: one stat per file, sha256 for small files and
    for any file whose mtime moved; ``full`` hashes everything.
    """
    image_dir = folder / IMAGES_DIR
    for name in images:
        _check_image_name(image_dir, name)
    try:
        present = {p.name for p in image_dir.iterdir()}
    except OSError as exc:
        raise CorruptSnapshotError(image_dir, f"unreadable: {exc.strerror}") from exc
    missing = sorted(set(images) - present)
    if missing:
        raise CorruptSnapshotError(image_dir, f"missing image files: {', '.join(missing[:5])}")
    extra = sorted(present - set(images))
    if extra:
        raise CorruptSnapshotError(image_dir, f"unexpected image files: {', '.join(extra[:5])}")
    for name, rec in images.items():
        path = image_dir / name
        st = path.stat()
        if st.st_size != rec.size:
            raise CorruptSnapshotError(path, f"size {st.st_size}, manifest says {rec.size}")
        if not full and st.st_mtime_ns == rec.mtime_ns and st.st_size > SMALL_FILE_BYTES:
            continue
        if sha256_file(path) != rec.sha256:
            raise CorruptSnapshotError(path, "content does not match its sha256 in the manifest")


def _check_image_name(image_dir: Path, name: str) -> None:
    """An ``images`` key of the manifest names one file of ``images/``, nothing else."""
    try:
        clean = relative_name(name)
    except PathEscapeError as exc:
        raise CorruptSnapshotError(image_dir, f"image file name {exc}") from exc
    if clean != name or "/" in clean:
        raise CorruptSnapshotError(image_dir, f"image file name {name!r} is not a file of images/")


def remove_snapshot(store: Path, name: str) -> int:
    """Delete a snapshot and the blobs no other snapshot links; returns bytes freed."""
    folder = snapshot_dir(store, name)
    if not folder.exists():
        raise SnapshotError(f"no snapshot named {name!r} in {store}")
    shutil.rmtree(folder)
    freed = 0
    blobs = store / "blobs" / "sha256"
    if blobs.exists():
        for blob in blobs.glob("*/*"):
            st = blob.stat()
            if st.st_nlink == 1:
                freed += st.st_size
                blob.unlink()
    return freed


def list_snapshots(store: Path) -> list[str]:
    root = store / "snapshots"
    return (
        sorted(p.name for p in root.iterdir() if (p / "manifest.json").exists())
        if root.exists()
        else []
    )
