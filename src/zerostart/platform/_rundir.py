"""The warm pool's private folder: owned by a lock, cleaned up by the next pool if its owner died.

A pool (``pool.py``) makes ``zerostart-pool-XXXX`` in the temp folder and
holds an exclusive ``flock(2)`` on ``owner.lock`` inside it for its whole life.
A gateway killed with SIGKILL runs no cleanup code, so its folder (control
sockets, slot logs, the canary: a few MB) stays; but the kernel drops its
lock with its last file descriptor. The next pool to start, in the same temp
folder and as the same user, removes every such folder whose lock it can take:

* the lock is taken (``LOCK_EX | LOCK_NB`` succeeds): its owner is dead, remove it;
* ``EWOULDBLOCK``: a live pool owns it, leave it;
* no ``owner.lock`` (an older pool's, or one being made this instant): leave it;
* another user's folder, or one with a mount under it (container slots bind
  bundles into ``models/``): leave it, with a log line.

The lock file appears already locked: it is created and locked under a
temporary name, then renamed into place (rename keeps the inode the lock is
on), so no other pool can ever take a live pool's lock in the instant
between its creation and its locking.

Standard library only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("zerostart.platform.pool")

PREFIX = "zerostart-pool-"
LOCK_NAME = "owner.lock"


def make_run_dir(parent: str | os.PathLike[str] | None = None) -> tuple[Path, int]:
    """A new 0700 pool folder and the open, locked descriptor that marks it alive.

    Keep the descriptor open for the pool's life; closing it (or dying) frees the folder
    for :func:`reap_dead_pools`.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))  # 0700
    staging = run_dir / f".{LOCK_NAME}.{os.getpid()}"
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(staging, run_dir / LOCK_NAME)
    except BaseException:
        os.close(fd)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir, fd


def reap_dead_pools(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the pool folders in ``parent`` (default: the temp folder) whose owner died.

    Returns the folders removed. Never raises for a folder it cannot read or remove.
    """
    root = Path(parent if parent is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(root.glob(PREFIX + "*"))
    except OSError:
        return removed
    mounts = _mount_points()
    for folder in candidates:
        if _reap_one(folder, mounts):
            removed.append(folder)
    return removed


def _reap_one(folder: Path, mounts: list[str]) -> bool:
    try:
        st = folder.lstat()
    except OSError:
        return False
    if not folder.is_dir() or folder.is_symlink() or st.st_uid != os.geteuid():
        return False
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file: an older pool's folder, or one being made
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its pool is alive
        inside = str(folder) + os.sep
        if any(m.startswith(inside) for m in mounts):
            log.warning("pool: %s was left by a dead pool but has mounts under it; kept", folder)
            return False
        # Holding its lock: no other pool reaps it at the same time.
        shutil.rmtree(folder, ignore_errors=True)
        log.info("pool: removed %s, left by a pool that died", folder)
        return not folder.exists()
    finally:
        os.close(fd)


def _mount_points() -> list[str]:
    """Every mount point of this mount namespace (``/proc/self/mountinfo``, field 5)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [ln.split()[4].replace("\\040", " ") for ln in lines if len(ln.split()) > 4]
