"""snapshot() and restore(): the two things a user does.

snapshot: start the command detached, wait for its health URL, run the
warm-up, checkpoint its GPU state (if it holds a CUDA context), record what a
restore depends on, CRIU-dump it, digest and dedup the images, seal the
manifest.

restore: read and check the manifest (seal, image digests, host, mapped
files), CRIU-restore, CUDA-restore, health check. Any failure on that path
falls back to booting the same command (unless ``fallback=False``), and the
result says which happened and why.

Standard library only (plus ctypes for GPU snapshots).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from zerostart.errors import ZerostartError
from zerostart.snapshot import _compat, _criu, _process
from zerostart.snapshot._errors import CriuError, ReadinessError, SnapshotError
from zerostart.snapshot._host import digest_file, host_fingerprint, mapped_paths, uses_cuda
from zerostart.snapshot._manifest import (
    BOOT_LOG_NAME,
    IMAGES_DIR,
    SnapshotManifest,
    read_manifest,
    write_manifest,
)
from zerostart.snapshot._process import Warmup
from zerostart.snapshot._store import dedup_images, default_store, snapshot_dir, verify_images
from zerostart.snapshot.marker import RESTORE_INFO_NAME, SNAPSHOT_DIR_ENV, start_ticks

if TYPE_CHECKING:
    from zerostart.snapshot._cuda import CudaCheckpointer

RESTORE_READY_TIMEOUT_S = 30.0  # a restored process answers at once; waiting longer hides a hang
PID_FREE_WAIT_S = 5.0  # init reaps a killed restored process within ~1 s here
# Environment worth recording for a cold-boot fallback and for a reader of the manifest;
# secrets are not copied into a file on disk.
ENV_PREFIXES = (
    "ZEROSTART_",
    "HF_",
    "TRANSFORMERS_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "CUDA_",
    "PYTHON",
    "LC_",
)
ENV_NAMES = ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "TZ")

log = logging.getLogger("zerostart.snapshot")


@dataclass(frozen=True)
class SnapshotResult:
    """What ``snapshot`` made: where, how big, and where the time went."""

    name: str
    path: Path
    manifest: SnapshotManifest
    size_bytes: int
    dedup_saved_bytes: int
    timings_s: dict[str, float]


@dataclass(frozen=True)
class RestoreResult:
    """A running worker: restored from the snapshot, or booted because restoring was not possible."""

    name: str
    mode: Literal["restored", "booted"]
    reason: str | None
    pid: int
    url: str | None
    port: int | None
    timings_s: dict[str, float] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL) and wait until its PID is free."""
        _process.stop(self.pid)


def _env_subset(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items()) if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


def _store(store: str | os.PathLike[str] | None) -> Path:
    return Path(store) if store is not None else default_store()


def _cuda_checkpointer() -> CudaCheckpointer:
    from zerostart.snapshot._cuda import CudaCheckpointer

    return CudaCheckpointer()


def snapshot(
    name: str,
    command: Sequence[str],
    *,
    ready_url: str | None = None,
    warmup: Warmup | None = None,
    store: str | os.PathLike[str] | None = None,
    leave_running: bool = False,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = _process.READY_TIMEOUT_S,
) -> SnapshotResult:
    """Boot ``command``, wait until ``ready_url`` answers 200, warm it up, freeze it as ``name``.

    ``ready_url`` defaults to http://127.0.0.1:PORT/health for a command with
    ``--port PORT``. An existing snapshot of the same name is replaced. The
    process is killed once frozen unless ``leave_running``.
    """
    t_all = time.perf_counter()
    command = list(command)
    ready_url = ready_url or _process.default_ready_url(command)
    if ready_url is None:
        raise SnapshotError(
            "no readiness URL",
            hint="pass --ready http://HOST:PORT/health (or a --port in the command)",
        )
    root = _store(store)
    folder = snapshot_dir(root, name)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cwd = os.path.abspath(cwd or os.getcwd())
    run_env = dict(os.environ if env is None else env)
    run_env[SNAPSHOT_DIR_ENV] = str(folder)
    timings: dict[str, float] = {}
    criu_version = _criu.version()  # fail before booting anything if CRIU is missing
    log_path = folder / BOOT_LOG_NAME
    proc = _process.start_detached(command, log_path, cwd=cwd, env=run_env)
    try:
        timings["boot_to_ready"] = _process.wait_ready(
            ready_url, pid=proc.pid, timeout_s=ready_timeout_s, log_path=log_path
        )
        if warmup is not None:
            t0 = time.perf_counter()
            _process.run_warmup(ready_url, warmup)
            timings["warmup"] = time.perf_counter() - t0
        _process.wait_connections_closed(proc.pid)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        t0 = time.perf_counter()
        mapped = tuple(digest_file(p) for p in mapped_paths(maps) if os.path.isfile(p))
        timings["hash_mapped_files"] = time.perf_counter() - t0
        cuda = uses_cuda(maps)
        driver, gpus = None, ()
        if cuda:
            ckpt = _cuda_checkpointer()
            driver = ckpt.driver_version()
            timings.update(ckpt.checkpoint(proc.pid))
        try:
            timings["criu_dump"] = _criu.dump(
                proc.pid, folder / IMAGES_DIR, leave_running=leave_running
            )
        finally:
            if cuda and leave_running:
                ckpt.resume(proc.pid)
        if not leave_running:
            proc.wait(_process.STOP_TIMEOUT_S)
    except BaseException:
        _process.stop(proc.pid)
        raise
    t0 = time.perf_counter()
    images, saved = dedup_images(root, folder / IMAGES_DIR)
    timings["digest_images"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    manifest = SnapshotManifest(
        name=name,
        command=tuple(command),
        cwd=cwd,
        env=_env_subset(run_env),
        ready_url=ready_url,
        port=_process.url_port(ready_url),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        host=host_fingerprint(criu_version, cuda_driver=driver, gpus=gpus),
        mapped_files=mapped,
        images=images,
        pid=proc.pid,
        cuda=cuda,
        timings_s={k: round(v, 6) for k, v in timings.items()},
    )
    write_manifest(folder, manifest)
    size = sum(f.size for f in images.values())
    return SnapshotResult(name, folder, manifest, size, saved, timings)


def check(
    name: str, *, store: str | os.PathLike[str] | None = None, full: bool = False
) -> SnapshotManifest:
    """Raise CorruptSnapshotError / IncompatibleSnapshotError unless ``name`` can be restored here."""
    folder = snapshot_dir(_store(store), name)
    if not folder.exists():
        raise SnapshotError(
            f"no snapshot named {name!r} in {folder.parent.parent}",
            hint="list them with `zerostart snapshot --list`",
        )
    manifest = read_manifest(folder)
    verify_images(folder, manifest.images, full=full)
    here = host_fingerprint(
        _criu.version(),
        cuda_driver=manifest.host.cuda_driver and _cuda_driver_here(),
        gpus=manifest.host.gpus,
    )
    problems = _compat.host_problems(manifest.host, here) + _compat.file_problems(
        manifest.mapped_files, full=full
    )
    if problems:
        from zerostart.snapshot._errors import IncompatibleSnapshotError

        raise IncompatibleSnapshotError(name, problems)
    return manifest


def _cuda_driver_here() -> str | None:
    try:
        return _cuda_checkpointer().driver_version()
    except ZerostartError:
        return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((_process.DEFAULT_HOST, port)) == 0


def _wait_pid_free(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def restore(
    name: str,
    *,
    store: str | os.PathLike[str] | None = None,
    fallback: bool = True,
    full_verify: bool = False,
    ready_timeout_s: float = RESTORE_READY_TIMEOUT_S,
    lazy_pages: bool | None = None,
) -> RestoreResult:
    """Bring snapshot ``name`` back and wait for its health URL; boot the command if that fails.

    Raises (never falls back) when the port is taken: a booted command could
    not listen either. With ``fallback=False`` every failure raises.
    ``lazy_pages``: memory pages arrive on first touch (CRIU ``lazy-pages`` over
    userfaultfd) while the rest streams behind; None takes ``$ZEROSTART_LAZY_PAGES``
    (``1`` on), default off (docs/snapshot.md has the measurements). A lazy
    restore that cannot start its page daemon restores eagerly.
    """
    if lazy_pages is None:
        lazy_pages = os.environ.get("ZEROSTART_LAZY_PAGES", "") == "1"
    t_all = time.perf_counter()
    root = _store(store)
    folder = snapshot_dir(root, name)
    timings: dict[str, float] = {}
    try:
        manifest = read_manifest(folder)
    except SnapshotError:
        if not folder.exists():
            raise SnapshotError(f"no snapshot named {name!r} in {root}") from None
        raise  # without a readable manifest there is no command to boot either
    if manifest.port is not None and _port_in_use(manifest.port):
        raise SnapshotError(
            f"port {manifest.port} is already in use, so snapshot {name!r} can be neither restored nor booted",
            hint="stop the running instance first, or restore inside its own network namespace (a container)",
        )
    try:
        t0 = time.perf_counter()
        check(name, store=root, full=full_verify)
        timings["verify"] = time.perf_counter() - t0
        if not _wait_pid_free(manifest.pid, PID_FREE_WAIT_S):
            raise SnapshotError(f"PID {manifest.pid} (the snapshot's) is taken by another process")
        work = root / "restores" / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        t0 = time.perf_counter()
        pid = _criu_restore(folder / IMAGES_DIR, work, lazy_pages=lazy_pages)
        timings["criu_restore"] = time.perf_counter() - t0
        if manifest.cuda:
            timings.update(_cuda_checkpointer().restore(pid))
        assert manifest.ready_url is not None
        timings["health"] = _process.wait_ready(
            manifest.ready_url, pid=pid, timeout_s=ready_timeout_s
        )
        timings["total"] = time.perf_counter() - t_all
        _write_restore_info(folder, pid, timings)
        return RestoreResult(
            name, "restored", None, pid, manifest.ready_url, manifest.port, timings
        )
    except (SnapshotError, OSError) as exc:
        if not fallback:
            raise
        reason = f"{type(exc).__name__}: {exc}"
    return _boot(manifest, folder, reason, t_all)


def _criu_restore(images: Path, work: Path, *, lazy_pages: bool) -> int:
    if lazy_pages:
        try:
            return _criu.restore(images, work, lazy_pages=True)
        except CriuError as exc:
            if "lazy-pages did not start" not in str(exc):
                raise
            log.warning("lazy restore unavailable (%s): restoring eagerly", exc)
    return _criu.restore(images, work)


def _write_restore_info(folder: Path, pid: int, timings: dict[str, float]) -> None:
    info = {
        "mode": "restore",
        "restored_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
        "restored_at_epoch_s": time.time(),
        "pid": pid,
        "start_ticks": start_ticks(pid),
        "phases": {k: round(v, 6) for k, v in timings.items()},
    }
    tmp = folder / (RESTORE_INFO_NAME + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(folder / RESTORE_INFO_NAME)


def _boot(manifest: SnapshotManifest, folder: Path, reason: str, t_all: float) -> RestoreResult:
    """The fallback: run the snapshot's command from scratch, with its recorded cwd and environment."""
    env = {**os.environ, **manifest.env, SNAPSHOT_DIR_ENV: str(folder)}
    proc = _process.start_detached(
        list(manifest.command), folder / "fallback.log", cwd=manifest.cwd, env=env
    )
    timings: dict[str, float] = {}
    assert manifest.ready_url is not None
    try:
        timings["boot_to_ready"] = _process.wait_ready(
            manifest.ready_url, pid=proc.pid, log_path=folder / "fallback.log"
        )
    except ReadinessError as exc:
        _process.stop(proc.pid)
        raise SnapshotError(
            f"restore failed ({reason}) and booting the command failed too: {exc}"
        ) from exc
    timings["total"] = time.perf_counter() - t_all
    return RestoreResult(
        manifest.name, "booted", reason, proc.pid, manifest.ready_url, manifest.port, timings
    )
