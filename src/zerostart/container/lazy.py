"""``zerostart run REF --lazy``: a container whose root is an image mounted from its registry.

Root filesystem, bottom to top::

    imagefs (FUSE, read-only, bytes fetched on first read)   WORK/lower
    overlayfs: lower = imagefs, upper + work = WORK/upper     WORK/rootfs  -> runc's root.path

The overlay gives runc a root it may create its mount points in (``/proc``,
``/dev``, ``/sys``, ``/tmp`` need not exist in the image) and gives the image
nothing else: the runtime config keeps the root read-only and ``/tmp`` a
tmpfs, as for an unpacked image (:mod:`zerostart.container.runtime`).

Teardown runs on every exit path (``stop()``: normal exit, Ctrl-C, a start
that failed): container deleted, overlay unmounted, imagefs daemon stopped and
its mount detached, work folder removed. If the imagefs daemon dies while the
container runs, the container's reads fail (the kernel answers ``ENOTCONN``
for a FUSE mount whose daemon is gone) rather than hang, and :meth:`wait`
raises :class:`~zerostart.imagefs.ImagefsError` saying so.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.container.runtime import TOOL_TIMEOUT_S, Container, _run_tool
from zerostart.errors import ImageError, RuntimeToolError
from zerostart.imagefs.mount import ImagefsError, LazyMount, is_mounted
from zerostart.oci import ImageRef

WATCH_INTERVAL_S = 0.2


@dataclass
class LazyContainer(Container):
    """A :class:`Container` whose ``image_path`` is a registry reference, mounted lazily."""

    mount_options: dict[str, Any] = field(default_factory=dict)
    mount: LazyMount | None = None
    mount_info: dict[str, Any] = field(default_factory=dict)

    def _refuse_early(self) -> None:
        """Nothing to read before the mount: the config arrives with the index."""

    def _root(self) -> tuple[ImageRef, str]:
        work = Path(self._work)
        lower, rootfs = work / "lower", work / "rootfs"
        for d in (lower, rootfs, work / "upper", work / "overlay-work"):
            d.mkdir()
        self.mount = LazyMount(
            self.image_path, lower, log_path=work / "imagefs.log", **self.mount_options
        )
        self.mount_info = self.mount.start()
        options = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'overlay-work'}"
        cmd = ["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)]
        done = _run_tool(cmd)
        if done.returncode != 0:
            raise RuntimeToolError(
                cmd, "cannot mount the overlay", returncode=done.returncode, stderr=done.stderr
            )
        digest = str(self.mount_info["manifest_digest"])
        image = ImageRef(self.image_path, digest, {}, dict(self.mount_info["config"]), ())
        return image, str(rootfs)

    def _release_root(self) -> None:
        if not self._work:
            return
        rootfs = Path(self._work) / "rootfs"
        if is_mounted(rootfs):
            done = _run_tool(["umount", str(rootfs)], TOOL_TIMEOUT_S)
            if done.returncode != 0:  # busy (a process still holds a file): detach it
                _run_tool(["umount", "-l", str(rootfs)], TOOL_TIMEOUT_S)
        if self.mount is not None:
            self.mount.stop()
            self.mount = None
        if is_mounted(rootfs) or is_mounted(Path(self._work) / "lower"):
            raise ImageError(f"could not unmount {self._work}; left in place for inspection")

    def daemon_failure(self) -> str | None:
        """Why the imagefs daemon is gone (None while it runs)."""
        if self.mount is None or self.mount.alive():
            return None
        return (
            f"the imagefs daemon exited with status {self.mount.returncode}: reads in the "
            f"container now fail with ENOTCONN ({self.mount.log_tail(500)})"
        )

    def wait(self) -> int:
        """Block until the container exits; raise if the imagefs daemon dies first."""
        if self._proc is None:
            raise ImageError("the container is not running")
        while True:
            try:
                return self._proc.wait(WATCH_INTERVAL_S)
            except subprocess.TimeoutExpired:
                pass
            failure = self.daemon_failure()
            if failure:
                raise ImagefsError(failure)

    def stats(self) -> dict[str, Any]:
        return self.mount.stats() if self.mount is not None else {}
