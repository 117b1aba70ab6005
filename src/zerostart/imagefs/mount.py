"""Mounting an image lazily: start the daemon, wait until it is ready, stop it and clean up.

:class:`LazyMount` owns one daemon process (:mod:`zerostart.imagefs._daemon`)
and one mount point. ``start()`` returns once the index is in memory and the
filesystem is mounted; ``stop()`` unmounts whatever happened before: the
daemon is asked (SIGTERM), then killed, and a mount left behind by a dead
daemon is aborted (``/sys/fs/fuse/connections/N/abort``: every read fails at
once) and detached (``fusermount3 -u -z``). The daemon dying on its own never
hangs a reader: the kernel fails the mount's reads (``ENOTCONN``) as soon as
the daemon's ``/dev/fuse`` descriptor closes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.cachedir import cache_base
from zerostart.errors import ZerostartError
from zerostart.imagefs._cache import DEFAULT_DISK_BYTES, DEFAULT_MEMORY_BYTES
from zerostart.procs import stop_process

# The index of an image of any size is in memory within seconds; 60 s covers a
# slow registry and a whole-layer fallback of a few hundred MB on a fast link.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
UNMOUNT_TIMEOUT_S = 10.0
NETWORK_TIMEOUT_S = 10.0  # per range request; a read retries (RetryPolicy) before failing


class ImagefsError(ZerostartError):
    """The lazy mount could not be made, or its daemon died."""


def state_dir() -> Path:
    """Where live mounts publish their stats: ``$ZEROSTART_IMAGEFS_STATE`` or /run/zerostart/imagefs."""
    return Path(os.environ.get("ZEROSTART_IMAGEFS_STATE", "/run/zerostart/imagefs"))


def default_cache_dir() -> Path:
    """Chunks, whole-fetched layers and kept indexes: ``imagefs/`` in the cache (zerostart/cachedir.py)."""
    return cache_base() / "imagefs"


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise ImagefsError(f"{cmd[0]} is not installed", hint="apt-get install fuse3") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImagefsError(f"{' '.join(cmd)} timed out after {timeout_s:.0f} s") from exc


def abort_connection(mountpoint: str | os.PathLike[str]) -> bool:
    """Abort the FUSE connection behind ``mountpoint``: every pending and later request fails."""
    try:
        dev = os.stat(mountpoint).st_dev
    except OSError:
        return False  # ENOTCONN: already aborted (the daemon is gone)
    abort = Path(f"/sys/fs/fuse/connections/{os.minor(dev)}/abort")
    try:
        abort.write_text("1")
        return True
    except OSError:
        return False


def force_unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Detach a FUSE mount whatever its daemon's state (aborted first, then lazily unmounted)."""
    if not is_mounted(mountpoint):
        return
    abort_connection(mountpoint)
    done = _run(["fusermount3", "-u", "-z", str(mountpoint)], UNMOUNT_TIMEOUT_S)
    if done.returncode != 0 and is_mounted(mountpoint):
        done = _run(["umount", "-l", str(mountpoint)], UNMOUNT_TIMEOUT_S)
        if done.returncode != 0:
            raise ImagefsError(f"cannot unmount {mountpoint}: {done.stderr.strip()}")


@dataclass
class LazyMount:
    """One image mounted read-only at ``mountpoint`` by a daemon process."""

    reference: str
    mountpoint: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    disk_bytes: int = DEFAULT_DISK_BYTES
    timeout_s: float = NETWORK_TIMEOUT_S
    attempts: int = 4
    backoff_s: float = 0.2
    prefetch: bool = True
    # Write a chunk profile of what was read to this file when the mount stops
    # (zerostart/chunkprofile.py); record with prefetch=False so the order is the reads' own.
    record: Path | None = None
    prefetch_streams: int = 4  # range requests at once for a chunk profile (imagefs/_fetch.py)
    insecure: bool = False
    log_path: Path | None = None
    ready_timeout_s: float = READY_TIMEOUT_S
    info: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def state_path(self) -> Path:
        key = hashlib.sha256(str(self.mountpoint).encode()).hexdigest()[:12]
        return state_dir() / f"{os.getpid()}-{key}.json"

    def start(self) -> dict[str, Any]:
        """Mount; returns the daemon's ready record (timings, manifest digest, image config)."""
        if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
            raise ImagefsError(
                "FUSE is not available here", hint="apt-get install fuse3; needs /dev/fuse"
            )
        if importlib.util.find_spec("pyfuse3") is None:
            raise ImagefsError(
                "pyfuse3 is not installed (imagefs mounts with it)",
                hint="pip install 'zerostart[imagefs]'; it builds against libfuse3-dev, "
                "which scripts/install_system_deps.sh installs",
            )
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "zerostart.imagefs",
            self.reference,
            str(self.mountpoint),
            f"--cache-dir={self.cache_dir}",
            f"--state={self.state_path}",
            f"--memory-bytes={self.memory_bytes}",
            f"--disk-bytes={self.disk_bytes}",
            f"--timeout={self.timeout_s}",
            f"--attempts={self.attempts}",
            f"--backoff={self.backoff_s}",
            *(["--insecure"] if self.insecure else []),
            *([] if self.prefetch else ["--no-prefetch"]),
            *([f"--record={self.record}"] if self.record else []),
            f"--prefetch-streams={self.prefetch_streams}",
        ]
        log_path = self.log_path or self.mountpoint.with_name(self.mountpoint.name + ".imagefs.log")
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
        try:
            self.info = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.info

    def _wait_ready(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ImagefsError(
                    f"mounting {self.reference} took over {self.ready_timeout_s:.0f} s",
                    hint=f"see {self.log_path}",
                )
            ready, _, _ = select.select([self._proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    break
                line += chunk
        try:
            doc: dict[str, Any] = json.loads(line)
        except ValueError:
            status = self._proc.wait(STOP_TIMEOUT_S)
            raise ImagefsError(
                f"the imagefs daemon exited ({status}) before mounting {self.reference}: "
                f"{self.log_tail()}"
            ) from None
        if not doc.get("ready"):
            raise ImagefsError(f"cannot mount {self.reference}: {doc.get('error')}")
        return doc

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return Path(self.log_path or "").read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def stats(self) -> dict[str, Any]:
        """The daemon's latest stats (bytes fetched, cache tiers, prefetch, errors)."""
        try:
            doc: dict[str, Any] = json.loads(self.state_path.read_text())
            return doc
        except (OSError, ValueError):
            return {}

    def stop(self) -> int | None:
        """Unmount and end the daemon, whatever state it is in; returns its exit status."""
        proc, status = self._proc, None
        if proc is not None:
            status = stop_process(proc, timeout_s=STOP_TIMEOUT_S)
            if proc.stdout is not None:
                proc.stdout.close()
            self._proc = None
        force_unmount(self.mountpoint)
        self.state_path.unlink(missing_ok=True)
        return status

    def __enter__(self) -> LazyMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_stats() -> list[dict[str, Any]]:
    """Stats of every mount whose daemon is alive on this host (stale files are skipped)."""
    out = []
    folder = state_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
            os.kill(int(doc["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        out.append(doc)
    return out
