"""``zerostart run``: start an image with a real OCI runtime (runc or crun), no daemon.

Theory of operation::

    OCI layout --unpack (once per manifest digest, cached)--> rootfs/
    image config + our policy --> config.json  (OCI runtime spec 1.0)
    <runtime> --root STATE run --bundle DIR ID   (foreground: it forwards signals)
    poll GET /health --> ready  ...  SIGTERM --> wait --> runtime kill KILL --> runtime delete

Policy of the runtime config, and why:

* **Host network namespace.** The worker must be reachable on 127.0.0.1
  without a bridge, veth pair, CNI plugin or port forwarder (none of which a
  daemonless tool should install). The worker therefore binds the host's
  loopback address and port that ``zerostart run`` gives it (we replace the
  image's ``Cmd``), so it is reachable from this host only. Every other
  namespace (pid, ipc, uts, mount) is private.
* Read-only root filesystem, a 64 MiB tmpfs on ``/tmp``, the image's non-root
  user, no capabilities, ``noNewPrivileges``, the default masked paths.
* GPU images get the NVIDIA device nodes and driver libraries of this host
  (:mod:`zerostart.container.gpu`).

Which runtime works is probed once (a container that runs only the dynamic
loader, ``ld.so --version``, a static executable every image has) and the
answer is cached, since e.g. Debian 12's crun 1.8.1 refuses hybrid cgroup hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerostart.cachedir import cache_base
from zerostart.container.gpu import host_gpu_mounts, oci_additions
from zerostart.errors import ImageError, RuntimeToolError
from zerostart.oci import ImageRef, open_layer_tar, read_oci_layout
from zerostart.paths import PathEscapeError, inside
from zerostart.warmup import wait_healthy

RUNTIMES = ("runc", "crun")
PROBE_TIMEOUT_S = 30.0
TOOL_TIMEOUT_S = 30.0  # runc kill / delete / state: instant unless the host is wedged
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # the worker drains in-flight requests for up to drain_timeout_s
TMPFS_SIZE = "64m"
NOFILE_LIMIT = 4096  # max_connections (512) + mmapped files + slack
STATE_ROOT = "/run/zerostart/oci"
OCI_VERSION = "1.0.2"
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def default_cache_dir() -> Path:
    return cache_base()


# --------------------------------------------------------------------------- unpack


def _safe_member(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """tarfile's "tar" filter, with absolute symlink targets made relative to the rootfs."""
    if member.issym() and member.linkname.startswith("/"):
        link_dir = os.path.dirname("/" + member.name.lstrip("/"))
        member = member.replace(linkname=os.path.relpath(member.linkname, link_dir), deep=False)
    return tarfile.tar_filter(member, root)


def _member_parent(root: str, name: str) -> tuple[str, str]:
    """``(host folder, base name)`` of layer member ``name``, refusing a folder outside ``root``.

    Whiteouts and replaced entries are removed before tarfile's filter sees the
    member, so this check must come first: without it ``../x/.wh.f`` or
    ``/etc/passwd`` (tar strips the leading ``/`` only when extracting) would
    delete host files. The folder is resolved through symlinks already unpacked
    (:func:`zerostart.paths.inside`: no ``..``, nothing outside ``root``).
    """
    rel = name.lstrip("/")
    try:
        parent = inside(root, os.path.dirname(rel))
    except PathEscapeError as exc:
        error = tarfile.OutsideDestinationError(tarfile.TarInfo(name), os.path.join(root, rel))
        raise error from exc
    return parent, os.path.basename(rel)


def _entry(parent: str, base: str, name: str) -> str:
    """The path of entry ``base`` in ``parent``: never ``.``/``..``, which name a folder itself."""
    if base in ("", ".", ".."):
        raise tarfile.OutsideDestinationError(tarfile.TarInfo(name), os.path.join(parent, base))
    return os.path.join(parent, base)


def unpack_layers(image: ImageRef, rootfs: str | os.PathLike[str]) -> None:
    """Apply the layers in order into ``rootfs``, honouring OCI whiteouts."""
    root = os.path.realpath(rootfs)
    os.makedirs(root, exist_ok=True)
    for layer in image.layers:
        try:
            with (
                open_layer_tar(layer.path, layer.media_type) as raw,
                tarfile.open(fileobj=(f := _Counted(raw)), mode="r|") as tar,  # type: ignore[call-overload]
            ):
                member = None
                while (member := _next_member(tar, f, member)) is not None:
                    parent, base = _member_parent(root, member.name)
                    if base == OPAQUE:
                        for child in os.listdir(parent):
                            _remove(os.path.join(parent, child))
                        continue
                    if base.startswith(WHITEOUT):
                        _remove(_entry(parent, base[len(WHITEOUT) :], member.name))
                        continue
                    if not (member.isdir() and os.path.isdir(os.path.join(parent, base))):
                        target = _entry(parent, base, member.name)
                        if os.path.lexists(target):
                            _remove(target)
                    tar.extract(
                        _safe_member(member, root), root, set_attrs=True, filter="fully_trusted"
                    )
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImageError(f"cannot unpack layer {layer.digest} of {image.path}: {exc}") from exc


class _Counted:
    """A reader that counts the bytes it gave (where a layer's tar stream ended)."""

    def __init__(self, f: Any) -> None:
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.f.read(size)
        self.n += len(data)
        return data


def _next_member(
    tar: tarfile.TarFile, f: _Counted, last: tarfile.TarInfo | None
) -> tarfile.TarInfo | None:
    """The next member, or None at the end of the layer.

    A layer may end right after its last file's data, with no padding and no
    end-of-archive blocks: umoci writes such layers, and Go's archive/tar
    (which containerd, Docker and umoci unpack with) reads them as whole;
    Python's tarfile calls it "unexpected end of data". Any other short
    stream is still an error.
    """
    try:
        return tar.next()
    except tarfile.ReadError:
        if last is not None and last.isfile() and f.n == last.offset_data + last.size:
            return None
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def unpacked_rootfs(image: ImageRef, cache_dir: Path | None = None) -> Path:
    """The image's root filesystem, unpacked once per manifest digest under the cache."""
    base = (cache_dir or default_cache_dir()) / "rootfs" / image.manifest_digest.split(":", 1)[1]
    rootfs = base / "rootfs"
    if (base / "complete").exists():
        return rootfs
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base.parent, prefix=".unpack-"))
    try:
        unpack_layers(image, tmp / "rootfs")
        (tmp / "complete").write_text(image.manifest_digest + "\n")
        if base.exists():
            shutil.rmtree(base)
        os.replace(tmp, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rootfs


# --------------------------------------------------------------------------- runtime config


def runtime_config(
    image: ImageRef,
    rootfs: str,
    *,
    args: list[str],
    hostname: str = "zerostart",
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An OCI runtime-spec config.json for ``image`` under the policy in the module docstring."""
    cfg = image.config.get("config", {})
    env_list = list(cfg.get("Env") or [])
    env = dict(e.split("=", 1) for e in env_list if "=" in e)
    for k, v in (extra_env or {}).items():
        env[k] = v
    uid, gid = _user(cfg.get("User") or "0:0")
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={TMPFS_SIZE}"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={TMPFS_SIZE}"],
        },
    ]
    devices: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    if "NVIDIA_VISIBLE_DEVICES" in env:
        gpu_devices, gpu_rules, gpu_binds = oci_additions(host_gpu_mounts(env))
        devices += gpu_devices
        rules += gpu_rules
        mounts += gpu_binds
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cfg.get("WorkingDir") or "/",
            "capabilities": {
                k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE_LIMIT, "soft": NOFILE_LIMIT}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "devices": devices,
            "resources": {"devices": rules},
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _user(spec: str) -> tuple[int, int]:
    user, _, group = spec.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise ImageError(
            f"image user {spec!r} must be numeric uid[:gid] (the image has no name service)"
        )
    return int(user), int(group or user)


# --------------------------------------------------------------------------- runtime choice


def _run_tool(
    cmd: list[str], timeout_s: float = TOOL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise RuntimeToolError(cmd, "not installed", hint="apt-get install runc") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeToolError(cmd, f"timed out after {timeout_s:.0f}s") from exc


def _probe(runtime: str, work: Path) -> str | None:
    """Run ``ld.so --version`` in a minimal container; None when it works, else the reason."""
    ld_so = next(
        (
            p
            for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")
            if os.path.exists(p)
        ),
        None,
    )
    if ld_so is None:
        return "no dynamic loader on this host to probe with"
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    shutil.copy(os.path.realpath(ld_so), rootfs / "ld.so")
    for d in ("proc", "dev", "sys", "tmp"):
        (rootfs / d).mkdir()
    fake = ImageRef(str(work), "sha256:" + "0" * 64, {}, {"config": {"User": "65532:65532"}}, ())
    config = runtime_config(fake, str(rootfs), args=["/ld.so", "--version"])
    (work / "config.json").write_text(json.dumps(config))
    cid = f"zerostart-probe-{os.getpid()}"
    cmd = [runtime, "--root", STATE_ROOT, "run", "--bundle", str(work), cid]
    try:
        done = _run_tool(cmd, PROBE_TIMEOUT_S)
    except RuntimeToolError as exc:
        return str(exc)
    finally:
        subprocess.run(
            [runtime, "--root", STATE_ROOT, "delete", "--force", cid],
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip()[-500:] or f"exit status {done.returncode}"
    return None


def _host_key(path: str) -> str:
    st = os.stat(path)
    cgroup2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    return f"{path}:{st.st_size}:{int(st.st_mtime)}:{os.uname().release}:cgroup2={cgroup2}"


def choose_runtime(preferred: str | None = None, cache_dir: Path | None = None) -> str:
    """The first OCI runtime that runs a container on this host (probed once, then cached)."""
    if os.geteuid() != 0:
        raise RuntimeToolError(
            ["runc"], "running containers needs root here (rootless is not supported yet)"
        )
    names = [preferred] if preferred else [os.environ.get("ZEROSTART_OCI_RUNTIME") or "", *RUNTIMES]
    cache_file = (cache_dir or default_cache_dir()) / "oci-runtime.json"
    try:
        cached: dict[str, Any] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    failures = []
    for name in filter(None, names):
        path = shutil.which(name)
        if path is None:
            failures.append(f"{name}: not installed")
            continue
        key = _host_key(path)
        if key in cached:
            if cached[key] is None:
                return path
            failures.append(f"{name}: {cached[key]}")
            continue
        with tempfile.TemporaryDirectory(prefix="zerostart-probe-") as tmp:
            reason = _probe(path, Path(tmp))
        cached[key] = reason
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cached, indent=1))
        if reason is None:
            return path
        failures.append(f"{name}: {reason}")
    raise RuntimeToolError(
        list(filter(None, names)) or ["runc"],
        "no working OCI runtime: " + "; ".join(failures),
        hint="apt-get install runc (scripts/install_system_deps.sh)",
    )


# --------------------------------------------------------------------------- container


@dataclass
class Container:
    """One running image. Use as a context manager, or call start() and stop()."""

    image_path: str
    port: int
    host: str = "127.0.0.1"
    runtime: str | None = None
    cache_dir: Path | None = None
    ready_timeout_s: float = READY_TIMEOUT_S
    log_path: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    id: str = ""
    _proc: subprocess.Popen[bytes] | None = None
    _work: str = ""
    _log: Any = None
    _runtime: str = ""
    started_at: float = 0.0

    def start(self) -> float:
        """Start the container and wait for /health; returns seconds from `runtime run` to healthy."""
        self._refuse_early()
        runtime = choose_runtime(self.runtime, self.cache_dir)
        self._work = tempfile.mkdtemp(prefix="zerostart-run-")
        try:
            image, rootfs = self._root()
        except BaseException:
            self.stop()
            raise
        entry = list(image.config.get("config", {}).get("Entrypoint") or [])
        if not entry:
            self.stop()
            raise ImageError(f"{self.image_path}: the image has no Entrypoint")
        args = [*entry, "--host", self.host, "--port", str(self.port)]
        config = self._runtime_config(image, str(rootfs), args)
        Path(self._work, "config.json").write_text(json.dumps(config, indent=1))
        self.id = f"zerostart-{image.manifest_digest[7:19]}-{os.getpid()}-{self.port}"
        log = self.log_path or os.path.join(self._work, "container.log")
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        cmd = self._runtime_command(runtime)
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._runtime = runtime
        try:
            return wait_healthy(self.port, self._proc, self.ready_timeout_s)
        except ImageError as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeToolError(
                cmd, f"container did not become healthy: {exc}", stderr=tail
            ) from exc

    def _refuse_early(self) -> None:
        """Refuse an image without an Entrypoint before probing runtimes or unpacking anything.

        A lazily mounted image (``LazyContainer``) only knows its config once
        mounted; it is checked after ``_root`` like every image.
        """
        image = read_oci_layout(self.image_path)
        if not (image.config.get("config", {}).get("Entrypoint") or []):
            raise ImageError(f"{self.image_path}: the image has no Entrypoint")

    def _root(self) -> tuple[ImageRef, str]:
        """The image and its root filesystem (unpacked once; ``LazyContainer`` mounts it)."""
        image = read_oci_layout(self.image_path)
        return image, str(unpacked_rootfs(image, self.cache_dir))

    def _release_root(self) -> None:
        """Undo what ``_root`` mounted (nothing for an unpacked root)."""

    def _runtime_config(self, image: ImageRef, rootfs: str, args: list[str]) -> dict[str, Any]:
        """The config.json; a subclass adjusts it (``image.snapshot_run`` adds a user namespace)."""
        return runtime_config(image, rootfs, args=args, extra_env=self.extra_env)

    def _runtime_command(self, runtime: str) -> list[str]:
        """The command that starts the container in the foreground (``runc restore`` in a subclass)."""
        return [runtime, "--root", STATE_ROOT, "run", "--bundle", self._work, self.id]

    @property
    def runtime_name(self) -> str:
        return os.path.basename(self._runtime) if self._runtime else ""

    def wait(self) -> int:
        """Block until the container exits on its own; returns its exit status."""
        if self._proc is None:
            raise ImageError("the container is not running")
        return self._proc.wait()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return Path(self.log_path or "").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (forwarded by the runtime), then SIGKILL, then delete. Returns the exit status."""
        proc, status = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _run_tool([self._runtime, "--root", STATE_ROOT, "kill", self.id, "KILL"])
                    try:
                        proc.wait(TOOL_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(TOOL_TIMEOUT_S)
            status = proc.returncode
            done = _run_tool([self._runtime, "--root", STATE_ROOT, "delete", "--force", self.id])
            if (
                done.returncode != 0
                and "does not exist" not in done.stderr
                and "not exist" not in done.stderr
            ):
                raise RuntimeToolError(
                    [self._runtime, "delete", self.id],
                    "cannot delete the container",
                    returncode=done.returncode,
                    stderr=done.stderr,
                )
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._release_root()
        if self._work:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = ""
        return status

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
