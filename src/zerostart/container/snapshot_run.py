"""``zerostart run IMAGE --snapshot``: restore a warmed-up container instead of booting it.

Theory of operation::

    name = img-<manifest digest>-p<port>-<host key>   one snapshot per image, address and host
    a snapshot of that name in the store?
      yes: zerostart.snapshot.check (seal, image digests, host, mapped files) + same runc
           runc restore --bundle B --image-path S/images ID  --> GET /health --> "restored"
           any failure: boot as below, and say why
      no:  runc run --bundle B ID --> /health --> replay the build's warm-up (answers checked)
           runc checkpoint --leave-running --> dedup + sealed manifest --> keep serving

The snapshot is an ordinary ``zerostart.snapshot`` folder (``manifest.json``,
``images/`` hardlinked into the store's blobs) plus ``state/``; the manifest's
``labels`` carry the image's manifest digest and the runc version, and its
``mapped_files`` the digests of the image files the worker maps (resolved in
the unpacked rootfs), so a restore is refused when the rootfs changed.

How the container differs from a plain ``zerostart run`` (snapshot mode only), and why:

* **A user namespace, identity-mapped (0-65535).** CRIU reads each task's
  rlimits with prlimit(2), which for a task of another uid (the image's 65532)
  needs CAP_SYS_RESOURCE over it, and root on this kind of host has none in its
  bounding set (CRIU: "Can't get rlimit 0: Operation not permitted"). The owner
  of a user namespace holds every capability inside it, so the dump works. The
  identity map keeps file ownership as it was; the worker still runs as 65532
  with no capabilities.
* **No /sys.** sysfs can only be mounted from a user namespace that owns the
  network namespace, and the container shares the host's. The worker does not
  need it (glibc counts CPUs from /proc when /sys is absent).
* **The snapshot's state/ folder, bind-mounted read-only at**
  ``/tmp/.zerostart-snapshot`` with ``ZEROSTART_SNAPSHOT_DIR`` pointing there:
  after a restore we write ``restore.json`` into it, so the worker's ``/info``
  says mode "restore" with the restore's phases (:mod:`zerostart.snapshot.marker`
  matches the file by wall-clock creation time: CRIU restores a container into
  a new time namespace, so start ticks read from the host are shifted).
* **stdio are runc's pipes** (runc in the foreground, as ``zerostart run``
  does): runc checkpoint records them and runc restore hands the new runc's
  pipes to the restored process (CRIU ``--inherit-fd``); nothing of our
  terminal is in the image. The images folder is made 0700 (runc creates it
  0600, which CRIU inside the user namespace cannot search on a second restore).
* The listening socket comes back on the same address and port (host network
  namespace): the port must be free, else neither restore nor boot can work.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from zerostart.container.runtime import STATE_ROOT, TOOL_TIMEOUT_S, Container, choose_runtime
from zerostart.errors import ImageError, RuntimeToolError
from zerostart.oci import ImageRef, read_oci_layout
from zerostart.paths import PathEscapeError, inside
from zerostart.snapshot import _criu
from zerostart.snapshot._api import check
from zerostart.snapshot._errors import (
    CriuError,
    IncompatibleSnapshotError,
    SnapshotError,
)
from zerostart.snapshot._host import HostFingerprint, digest_file, host_fingerprint, mapped_paths
from zerostart.snapshot._manifest import IMAGES_DIR, MANIFEST_NAME, SnapshotManifest, write_manifest
from zerostart.snapshot._process import wait_connections_closed
from zerostart.snapshot._store import dedup_images, default_store, remove_snapshot, snapshot_dir
from zerostart.snapshot.marker import RESTORE_INFO_NAME, SNAPSHOT_DIR_ENV, start_ticks
from zerostart.warmup import WarmupRequest, recorded_requests, replay

CONTAINER_STATE_DIR = "/tmp/.zerostart-snapshot"  # under the container's tmpfs: no rootfs write
STATE_DIR = "state"
CHECKPOINT_WORK_DIR = "checkpoint"
ID_MAP_SIZE = 65536  # uids/gids 0-65535 map to themselves: covers root and the image's 65532
RUNC_CRIU_FLAGS = ("--ext-unix-sk", "--file-locks")
CHECKPOINT_TIMEOUT_S = _criu.DUMP_TIMEOUT_S
RESTORE_READY_TIMEOUT_S = 30.0  # a restored worker answers at once; waiting longer hides a hang
LABEL_IMAGE_DIGEST = "image_manifest_digest"
LABEL_RUNC_VERSION = "runc_version"


@dataclass
class SnapshotContainer(Container):
    """A container in snapshot mode (see the module docstring): booted, or restored from images."""

    state_dir: str = ""
    restore_images: str | None = None
    restore_work: str | None = None
    rootfs: str = ""

    def _runtime_config(self, image: ImageRef, rootfs: str, args: list[str]) -> dict[str, Any]:
        self.rootfs = rootfs
        self.extra_env = {**self.extra_env, SNAPSHOT_DIR_ENV: CONTAINER_STATE_DIR}
        config = super()._runtime_config(image, rootfs, args)
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys"]
        config["mounts"].append(
            {
                "destination": CONTAINER_STATE_DIR,
                "type": "bind",
                "source": self.state_dir,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }
        )
        linux = config["linux"]
        linux["namespaces"].append({"type": "user"})
        identity = [{"containerID": 0, "hostID": 0, "size": ID_MAP_SIZE}]
        linux["uidMappings"] = identity
        linux["gidMappings"] = identity
        return config

    def _runtime_command(self, runtime: str) -> list[str]:
        if self.restore_images is None:
            return super()._runtime_command(runtime)
        return [
            runtime,
            "--criu",
            _criu.criu_binary(),
            "--root",
            STATE_ROOT,
            "restore",
            "--bundle",
            self._work,
            "--image-path",
            self.restore_images,
            "--work-path",
            self.restore_work or self._work,
            *RUNC_CRIU_FLAGS,
            self.id,
        ]

    def pid(self) -> int:
        """The worker's PID on this host (``runc state``)."""
        done = _run([self._runtime, "--root", STATE_ROOT, "state", self.id], "runc state")
        try:
            return int(json.loads(done.stdout)["pid"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeToolError(
                [self._runtime, "state", self.id], f"unreadable state: {done.stdout[:200]}"
            ) from exc


@dataclass
class SnapshotRun:
    """A running container: restored from its snapshot, or booted (and then snapshotted)."""

    container: SnapshotContainer
    mode: Literal["restored", "booted"]
    name: str
    path: Path
    reason: str | None = None  # why it was booted rather than restored
    snapshot_error: str | None = None  # booted, but no snapshot could be taken
    size_bytes: int = 0  # of the snapshot taken by this run
    timings_s: dict[str, float] = field(default_factory=dict)


def _run(
    cmd: list[str], what: str, timeout_s: float = TOOL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise RuntimeToolError(cmd, "not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeToolError(cmd, f"{what} timed out after {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        raise RuntimeToolError(
            cmd, f"{what} failed", returncode=done.returncode, stderr=done.stderr or done.stdout
        )
    return done


def _runc_error(text: str) -> str:
    """runc's own error message (``level=error msg="..."``) in a log tail, else ""."""
    for line in reversed(text.splitlines()):
        if "level=error" in line and 'msg="' in line:
            return line.split('msg="', 1)[1].rstrip('"').replace("\\n", "; ")
    return ""


def runc_version(runtime: str) -> str:
    """``runc --version``'s first line's version, e.g. "1.1.5+ds1"."""
    first = _run([runtime, "--version"], "runc --version").stdout.splitlines()[:1]
    return first[0].split()[-1] if first else "unknown"


def snapshot_name(image: ImageRef, host: str, port: int, fingerprint: HostFingerprint) -> str:
    """The snapshot's name: what a restore must match is in it, so hosts can share a store."""
    key = json.dumps([host, asdict(fingerprint)], sort_keys=True, default=list)
    host_key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"img-{image.manifest_digest.split(':', 1)[1][:16]}-p{port}-{host_key}"


def warmup_requests(image_path: str) -> list[tuple[WarmupRequest, Any]]:
    """The build's successful warm-up requests with their recorded answers (trace file).

    An image without a trace file (built elsewhere) is warmed up with ``GET /info``.
    """
    recorded = recorded_requests(image_path)
    return [(WarmupRequest("GET", "/info"), None)] if recorded is None else recorded


def _port_in_use(host: str, port: int) -> bool:
    address = "127.0.0.1" if host in ("0.0.0.0", "") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def run_with_snapshot(
    image_path: str,
    *,
    port: int = 8080,
    host: str = "127.0.0.1",
    runtime: str | None = None,
    store: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    full_verify: bool = False,
    take_snapshot: bool = True,
    extra_env: dict[str, str] | None = None,
) -> SnapshotRun:
    """Restore ``image_path``'s container from its snapshot, else boot it and snapshot it.

    Raises (never boots) when the port is taken: a booted worker could not
    listen either. Any other restore failure boots and says why in ``reason``.
    ``extra_env`` goes into a booted container's environment (a restored one
    keeps the environment it was snapshotted with).
    """
    t_all = time.perf_counter()
    image = read_oci_layout(image_path)
    runtime_path = choose_runtime(runtime, cache_dir)
    if os.path.basename(runtime_path) != "runc":
        raise SnapshotError(
            f"snapshots of containers need runc (checkpoint/restore through CRIU), not {runtime_path}",
            hint="apt-get install runc, or run without --snapshot",
        )
    fingerprint = host_fingerprint(_criu.version())
    name = snapshot_name(image, host, port, fingerprint)
    root = Path(store) if store is not None else default_store()
    folder = snapshot_dir(root, name)
    if _port_in_use(host, port):
        raise SnapshotError(
            f"port {port} is already in use, so image {image_path} can be neither restored nor booted",
            hint="stop what listens there, or pick another --port",
        )
    base = {"image_path": image_path, "port": port, "host": host, "runtime": runtime_path}
    env = dict(extra_env or {})
    if (folder / MANIFEST_NAME).exists():
        try:
            return _restore(image, name, folder, root, t_all, full_verify, cache_dir, **base)
        except (SnapshotError, RuntimeToolError, ImageError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "no snapshot of this image for this host and port yet"
    return _boot(image, name, folder, root, reason, t_all, take_snapshot, cache_dir, env, **base)


def _restore(
    image: ImageRef,
    name: str,
    folder: Path,
    root: Path,
    t_all: float,
    full_verify: bool,
    cache_dir: Path | None,
    **base: Any,
) -> SnapshotRun:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = check(name, store=root, full=full_verify)
    problems = []
    if manifest.labels.get(LABEL_IMAGE_DIGEST) != image.manifest_digest:
        problems.append(
            f"image {manifest.labels.get(LABEL_IMAGE_DIGEST)} -> {image.manifest_digest}"
        )
    here = runc_version(base["runtime"])
    if manifest.labels.get(LABEL_RUNC_VERSION) != here:
        problems.append(f"runc {manifest.labels.get(LABEL_RUNC_VERSION)} -> {here}")
    if problems:
        raise IncompatibleSnapshotError(name, problems)
    timings["verify"] = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_mkdir(root / "restores")))
    container = SnapshotContainer(
        base["image_path"],
        port=base["port"],
        host=base["host"],
        runtime=base["runtime"],
        cache_dir=cache_dir,
        ready_timeout_s=RESTORE_READY_TIMEOUT_S,
        state_dir=str(folder / STATE_DIR),
        restore_images=str(folder / IMAGES_DIR),
        restore_work=str(work),
    )
    try:
        timings["restore_to_health"] = container.start()
    except RuntimeToolError as exc:
        log = work / "restore.log"
        try:
            criu_log = log.read_text(errors="replace")
        except OSError:
            criu_log = ""
        raise CriuError(
            f"runc restore failed: {_runc_error(exc.stderr) or exc}",
            command=exc.command,
            returncode=exc.returncode,
            output=_criu._last_errors(criu_log) if criu_log else "",
            hint=f"full log: {log}",
        ) from exc
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.perf_counter() - t_all
    pid = container.pid()
    info = {
        "mode": "restore",
        "snapshot": name,
        "restored_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
        "restored_at_epoch_s": time.time(),
        "pid": pid,
        "start_ticks": start_ticks(pid),  # the host's view; the worker's is shifted (above)
        "phases": {k: round(v, 6) for k, v in timings.items()},
    }
    state = folder / STATE_DIR
    tmp = state / (RESTORE_INFO_NAME + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(state / RESTORE_INFO_NAME)
    return SnapshotRun(container, "restored", name, folder, timings_s=timings)


def _mkdir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def _boot(
    image: ImageRef,
    name: str,
    folder: Path,
    root: Path,
    reason: str,
    t_all: float,
    take_snapshot: bool,
    cache_dir: Path | None,
    extra_env: dict[str, str],
    **base: Any,
) -> SnapshotRun:
    if folder.exists():
        remove_snapshot(root, name)  # and its blobs no other snapshot links
    _mkdir(folder)
    _mkdir(folder / STATE_DIR)  # the worker (uid 65532) reads restore.json here
    container = SnapshotContainer(
        base["image_path"],
        port=base["port"],
        host=base["host"],
        runtime=base["runtime"],
        cache_dir=cache_dir,
        state_dir=str(folder / STATE_DIR),
        extra_env=extra_env,
    )
    timings = {"boot_to_health": container.start()}
    run = SnapshotRun(container, "booted", name, folder, reason=reason, timings_s=timings)
    if not take_snapshot:
        return run
    try:
        run.size_bytes = _take(container, image, name, folder, root, timings, **base)
    except (SnapshotError, RuntimeToolError, ImageError, OSError) as exc:
        run.snapshot_error = f"{type(exc).__name__}: {exc}"
        shutil.rmtree(folder / IMAGES_DIR, ignore_errors=True)  # no manifest: never restored
    timings["total"] = time.perf_counter() - t_all
    return run


def _host_paths(rootfs: str, paths: list[str]) -> list[str]:
    """The host files of the container's mapped ``paths`` (regular files only).

    Resolved under the rootfs (:func:`zerostart.paths.inside`): a symlink in the
    image that points out of it must not make us hash a host file.
    """
    out = []
    for p in paths:
        try:
            host = inside(rootfs, p, absolute="strip")
        except PathEscapeError as exc:
            raise SnapshotError(f"mapped file {p} of the container: {exc}") from exc
        if os.path.isfile(host):
            out.append(host)
    return out


def _take(
    container: SnapshotContainer,
    image: ImageRef,
    name: str,
    folder: Path,
    root: Path,
    timings: dict[str, float],
    **base: Any,
) -> int:
    """Warm the running container up, checkpoint it (it keeps serving), seal the manifest."""
    t0 = time.perf_counter()
    key = container.extra_env.get("API_KEY")  # a worker started with a key wants it
    auth = {"Authorization": f"Bearer {key}"} if key else None
    failures = replay(base["port"], warmup_requests(base["image_path"]), extra_headers=auth)
    if failures:
        raise SnapshotError(
            f"warm-up {'; '.join(failures)}: not what the build recorded, "
            "not freezing a worker that answers wrongly"
        )
    timings["warmup"] = time.perf_counter() - t0
    pid = container.pid()
    wait_connections_closed(pid)
    t0 = time.perf_counter()
    maps = Path(f"/proc/{pid}/maps").read_text()
    mapped = tuple(digest_file(p) for p in _host_paths(container.rootfs, mapped_paths(maps)))
    timings["hash_mapped_files"] = time.perf_counter() - t0
    images = folder / IMAGES_DIR
    work = folder / CHECKPOINT_WORK_DIR
    cmd = [
        base["runtime"],
        "--criu",
        _criu.criu_binary(),
        "--root",
        STATE_ROOT,
        "checkpoint",
        "--image-path",
        str(images),
        "--work-path",
        str(work),
        "--leave-running",
        *RUNC_CRIU_FLAGS,
        container.id,
    ]
    t0 = time.perf_counter()
    try:
        _run(cmd, "runc checkpoint", CHECKPOINT_TIMEOUT_S)
    except RuntimeToolError as exc:
        try:
            dump_log = (work / "dump.log").read_text(errors="replace")
        except OSError:
            dump_log = ""
        raise CriuError(
            "runc checkpoint failed",
            command=cmd,
            returncode=exc.returncode,
            output=_criu._last_errors(dump_log) if dump_log else exc.stderr,
            hint=f"full log: {work / 'dump.log'}",
        ) from exc
    timings["checkpoint"] = time.perf_counter() - t0
    os.chmod(images, 0o700)
    t0 = time.perf_counter()
    digests, _saved = dedup_images(root, images)
    timings["digest_images"] = time.perf_counter() - t0
    entry = list(image.config.get("config", {}).get("Entrypoint") or [])
    health_host = "127.0.0.1" if base["host"] in ("0.0.0.0", "") else base["host"]
    manifest = SnapshotManifest(
        name=name,
        command=(*entry, "--host", base["host"], "--port", str(base["port"])),
        cwd="/",
        env={},
        ready_url=f"http://{health_host}:{base['port']}/health",
        port=base["port"],
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        host=host_fingerprint(_criu.version()),
        mapped_files=mapped,
        images=digests,
        pid=pid,
        timings_s={k: round(v, 6) for k, v in timings.items()},
        labels={
            LABEL_IMAGE_DIGEST: image.manifest_digest,
            LABEL_RUNC_VERSION: runc_version(base["runtime"]),
            "image_path": os.path.abspath(base["image_path"]),
            "rootfs": container.rootfs,
        },
    )
    write_manifest(folder, manifest)
    return sum(f.size for f in digests.values())
