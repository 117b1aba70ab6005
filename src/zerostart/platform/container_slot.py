"""Container slots: a warm slot in its own runc container, assigned an image model.

A container slot runs ``python -m zerostart.serve --slot`` from the *slot
image*, an ordinary ``zerostart build`` of the canary bundle with the slot and
canary modules included (``zerostart.image.slot``, build time: the pool is
given its path), under the policy of
``zerostart run``: read-only root, user 65532, no capabilities, no new
privileges, its own pid/ipc/uts/mount namespaces, loopback on the host's
network. It is model-agnostic: its canary is its own ``/model``.

Two host folders are mounted into it:

``/run/slot`` (read-write)
    a per-slot folder owned by the container's user, mode 0700, holding the
    control socket (0600). The pool, root, connects to it; the slot accepts
    its own uid and the pool's (``--allow-uid``), from ``SO_PEERCRED``.
``/models`` (read-only, ``rslave``)
    the pool's *models* folder, made a shared mount point when the pool
    starts. Assigning an image model bind-mounts the bundle of its unpacked
    image (``/model`` of its rootfs, cached per image digest by
    ``zerostart.container``) read-only at ``models/<slot>`` on the host; mount
    propagation makes it appear at ``/models/<slot>`` in the running container,
    and the slot is assigned that path. The model image's own runtime is not
    used: the slot's runtime reads any bundle of this format version.

Needs root (runc, mounts). The container is stopped with ``runc kill`` and
``runc delete`` (killing the foreground ``runc run`` alone would leave the
container's process behind); the model's mount is removed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from zerostart.platform.slot import Assignment, Slot, SlotError

log = logging.getLogger("zerostart.platform.container_slot")

CONTAINER_SOCKET_DIR = "/run/slot"
CONTAINER_MODELS_DIR = "/models"
SLOT_UID = 65532  # zerostart images' user (image/build.py NONROOT_UID)
TOOL_TIMEOUT_S = 30.0


def _tool(cmd: list[str], what: str) -> None:
    """Run mount/umount/runc with a timeout; SlotError with its own message on failure."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise SlotError(f"{what}: {cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlotError(f"{what}: {' '.join(cmd)} timed out after {TOOL_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise SlotError(
            f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        )


_BUNDLES: dict[tuple[str, int, int], Path] = {}  # (layout, index.json mtime, size) -> bundle


def image_bundle(image_path: str) -> Path:
    """The bundle (``/model``) of an OCI layout's image, unpacked once per layout version.

    The first call verifies the layout's digests and unpacks it
    (``zerostart.container``'s cache, per image digest); later calls with an
    unchanged ``index.json`` reuse the result.
    """
    from zerostart.container import read_oci_layout, unpacked_rootfs

    index = Path(image_path, "index.json")
    try:
        st = index.stat()
    except OSError as exc:
        raise SlotError(f"{image_path}: not an OCI image layout ({exc.strerror})") from exc
    key = (os.path.realpath(image_path), st.st_mtime_ns, st.st_size)
    if key not in _BUNDLES:
        bundle = Path(unpacked_rootfs(read_oci_layout(image_path))) / "model"
        if not (bundle / "manifest.json").is_file():
            raise SlotError(f"{image_path}: the image holds no bundle at /model")
        _BUNDLES[key] = bundle
    return _BUNDLES[key]


class ModelsMount:
    """The pool's ``models`` folder: a shared mount point that slots see under ``/models``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self) -> None:
        self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        _tool(["mount", "--bind", str(self.folder), str(self.folder)], "models folder")
        _tool(["mount", "--make-shared", str(self.folder)], "models folder")

    def mount(self, name: str, bundle: Path) -> None:
        """``bundle`` read-only at ``name``, in the slots too.

        A remount to read-only does not propagate (the flag is the mount's own),
        so the read-only bind is made first at a staging point outside the
        shared folder and then bound in: a bind copies the source's flags, and
        so does propagation.
        """
        target = self.folder / name
        staging = self.folder.parent / "staging" / name
        staging.mkdir(parents=True, exist_ok=True)
        target.mkdir(exist_ok=True)
        _tool(["mount", "--bind", str(bundle), str(staging)], f"mount {bundle}")
        try:
            _tool(["mount", "-o", "remount,bind,ro", str(staging)], f"read-only {staging}")
            _tool(["mount", "--bind", str(staging), str(target)], f"mount {target}")
        finally:
            with contextlib.suppress(SlotError):
                _tool(["umount", str(staging)], f"unmount {staging}")
            with contextlib.suppress(OSError):
                staging.rmdir()

    def unmount(self, name: str) -> None:
        target = self.folder / name
        with contextlib.suppress(SlotError):
            _tool(["umount", "-l", str(target)], f"unmount {target}")
        with contextlib.suppress(OSError):
            target.rmdir()

    def close(self) -> None:
        with contextlib.suppress(SlotError):
            _tool(["umount", "-R", "-l", str(self.folder)], "models folder")


class ContainerSlot(Slot):
    """A slot whose process is ``runc run`` in the foreground; stopped through runc."""

    container_id: str = ""
    runtime: str = ""
    work: Path | None = None
    models: ModelsMount | None = None
    model_name: str = ""

    @classmethod
    async def spawn_container(
        cls,
        name: str,
        *,
        image_dir: Path,
        run_dir: Path,
        models: ModelsMount,
        boot_timeout_s: float,
    ) -> ContainerSlot:
        from zerostart.container import read_oci_layout
        from zerostart.container.runtime import STATE_ROOT, choose_runtime, unpacked_rootfs
        from zerostart.container.runtime import runtime_config as oci_config

        t0 = time.perf_counter()
        image = read_oci_layout(image_dir)
        runtime = await asyncio.to_thread(choose_runtime, "runc")
        rootfs = await asyncio.to_thread(unpacked_rootfs, image)
        sock_dir = run_dir / name
        sock_dir.mkdir(mode=0o700)
        os.chown(sock_dir, SLOT_UID, SLOT_UID)
        entry = list(image.config.get("config", {}).get("Entrypoint") or [])
        if len(entry) < 2:
            raise SlotError(f"{image_dir}: the slot image has no usable Entrypoint ({entry})")
        args = [
            *entry[:-1],  # python -m zerostart.serve, without the bundle
            "--slot",
            f"{CONTAINER_SOCKET_DIR}/s.sock",
            "--canary",
            "/model",
            "--allow-uid",
            str(os.getuid()),
        ]
        config = oci_config(image, str(rootfs), args=args)
        config["mounts"] += [
            {
                "destination": CONTAINER_SOCKET_DIR,
                "type": "bind",
                "source": str(sock_dir),
                "options": ["rbind", "rw", "nosuid", "nodev", "noexec"],
            },
            {
                "destination": CONTAINER_MODELS_DIR,
                "type": "bind",
                "source": str(models.folder),
                "options": ["rbind", "ro", "rslave", "nosuid", "nodev", "noexec"],
            },
        ]
        work = run_dir / f"{name}.bundle"
        work.mkdir(mode=0o700)
        import json

        (work / "config.json").write_text(json.dumps(config))
        container_id = f"zerostart-slot-{os.getpid()}-{name}"
        log_path = run_dir / f"{name}.log"
        with open(os.devnull, "rb") as devnull, open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                runtime,
                "--root",
                STATE_ROOT,
                "run",
                "--bundle",
                str(work),
                container_id,
                stdin=devnull,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        slot = cls(name, "cpu", process, sock_dir / "s.sock", log_path)
        slot.container_id, slot.runtime, slot.work, slot.models = (
            container_id,
            runtime,
            work,
            models,
        )
        await slot.handshake(boot_timeout_s, t0)
        return slot

    async def assign_image(self, image_path: str, **kwargs: Any) -> Assignment:
        """Mount the image's bundle read-only where the slot sees it, and assign that.

        The time to find (and, the first time, verify and unpack) the image and
        mount its bundle is the ``image_mount`` phase.
        """
        assert self.models is not None
        t0 = time.perf_counter()
        bundle = await asyncio.to_thread(image_bundle, image_path)
        await asyncio.to_thread(self.models.mount, self.name, bundle)
        self.model_name = self.name
        mount_s = time.perf_counter() - t0
        done = await self.assign(f"{CONTAINER_MODELS_DIR}/{self.name}", **kwargs)
        return dataclasses.replace(
            done,
            phases_s={"image_mount": mount_s, **done.phases_s},
            round_trip_s=done.round_trip_s + mount_s,
        )

    async def kill(self) -> None:
        await asyncio.to_thread(self._runc_cleanup)
        await super().kill()

    async def stop(self, timeout_s: float = 10.0) -> None:
        await super().stop(timeout_s)
        await asyncio.to_thread(self._runc_cleanup)

    def _runc_cleanup(self) -> None:
        from zerostart.container.runtime import STATE_ROOT

        if self.container_id:
            with contextlib.suppress(SlotError):
                _tool(
                    [self.runtime, "--root", STATE_ROOT, "delete", "--force", self.container_id],
                    "runc delete",
                )
        if self.models is not None and self.model_name:
            self.models.unmount(self.model_name)
            self.model_name = ""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
