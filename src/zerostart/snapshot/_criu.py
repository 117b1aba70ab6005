"""The one place zerostart runs ``criu``: a timeout on every call, its exit status
checked, its log turned into a ``CriuError`` carrying CRIU's own last lines.

Options, and why:

dump
    ``--tcp-established``: a client that kept an HTTP connection alive would
    otherwise make the dump fail ("Connected TCP socket"); restore then closes
    such connections (``--tcp-close``), which a client sees as a reset.
    ``--ext-unix-sk``: a connected unix socket to a peer outside the tree (syslog,
    a log daemon) is allowed and comes back unconnected.
    ``--file-locks``: flock()ed files (pip caches, sqlite) are dumped, not refused.
    ``--link-remap``: a file deleted while open (tempfiles) is saved in the image.
    ``--leave-running`` on request, else the tree is killed once dumped (that
    frees its port and PIDs for the restore).
restore
    ``--restore-detached``: CRIU exits once the tree runs; ``--pidfile`` tells us
    its root PID. ``--tcp-close`` as above. Listening sockets are restored by
    CRIU itself, on the same address and port.
restore with lazy pages (``lazy_pages=True``)
    ``criu lazy-pages`` runs beside the restore: the restored tree's anonymous
    memory is registered with userfaultfd, a page the process touches is sent
    on that fault, and the daemon streams every other page behind it, then
    exits. The tree runs as soon as its mappings exist instead of after every
    page is copied back (REAP, ASPLOS '21, on the same idea: the working set
    first). The daemon's socket lives in the restore's work folder (``-W``), so
    restores of one snapshot never share it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from zerostart.snapshot._errors import CriuError

log = logging.getLogger("zerostart.snapshot")

CHECK_TIMEOUT_S = 60.0
VERSION_TIMEOUT_S = 10.0
DUMP_TIMEOUT_S = 300.0  # a multi-GB process at ~1 GB/s to disk, with margin
RESTORE_TIMEOUT_S = 120.0
LAZY_PAGES_READY_TIMEOUT_S = 10.0  # its socket appears within milliseconds
LAZY_PAGES_TIMEOUT_S = 300.0  # every page delivered: GBs at disk speed, with margin
LAZY_PAGES_SOCKET = "lazy-pages.socket"
LOG_TAIL_CHARS = 4000
INSTALL_HINT = "install CRIU 4.x with `sudo scripts/install_criu.sh` (needs root)"

DUMP_FLAGS = ("--tcp-established", "--ext-unix-sk", "--file-locks", "--link-remap")
RESTORE_FLAGS = (
    "--restore-detached",
    "--tcp-close",
    "--ext-unix-sk",
    "--file-locks",
    "--link-remap",
)


def criu_binary() -> str:
    """Path of ``criu``: $ZEROSTART_CRIU, else PATH plus /usr/local/sbin and /usr/sbin."""
    explicit = os.environ.get("ZEROSTART_CRIU")
    if explicit:
        return explicit
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/local/sbin" + os.pathsep + "/usr/sbin"
    found = shutil.which("criu", path=path)
    if found is None:
        raise CriuError("criu not found", hint=INSTALL_HINT)
    return found


def _run(args: Sequence[str], timeout_s: float, what: str, log_file: Path | None = None) -> str:
    cmd = [criu_binary(), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CriuError(
            f"{what} timed out after {timeout_s:.0f} s", command=cmd, output=_tail(log_file)
        ) from exc
    except OSError as exc:
        raise CriuError(
            f"{what}: cannot run {cmd[0]}: {exc.strerror}", command=cmd, hint=INSTALL_HINT
        ) from exc
    log.debug("%s: exit %d in %.3f s", " ".join(cmd), proc.returncode, time.perf_counter() - t0)
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        detail = _tail(log_file) or output
        hint = "is this running as root?" if os.geteuid() != 0 else None
        if log_file is not None:
            hint = f"full log: {log_file}" + (f"; {hint}" if hint else "")
        raise CriuError(
            f"{what} failed (exit {proc.returncode})",
            command=cmd,
            returncode=proc.returncode,
            output=_last_errors(detail),
            hint=hint,
        )
    return output


def _tail(log_file: Path | None) -> str:
    if log_file is None:
        return ""
    try:
        return log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def _last_errors(text: str) -> str:
    """CRIU's log is long; its error lines ("Error (...)") say what went wrong."""
    errors = [line for line in text.splitlines() if "Error" in line or "error" in line]
    return "\n".join(errors[-3:]) if errors else text.strip()[-600:]


def version() -> str:
    """CRIU's version, e.g. "4.1.1"."""
    out = _run(["--version"], VERSION_TIMEOUT_S, "criu --version")
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise CriuError("criu --version printed no version", output=out)


def check() -> None:
    """Raise unless ``criu check`` passes on this kernel (root required)."""
    out = _run(["check"], CHECK_TIMEOUT_S, "criu check")
    if "Looks good" not in out:
        raise CriuError("criu check did not pass", output=out, hint=INSTALL_HINT)


def network_lock_flags() -> list[str]:
    """CRIU locks established TCP connections with iptables (its default) or nftables.

    A host with neither (the GPU machine we ran on: "Iptables configuration
    failed", exit 127) gets ``--network-lock skip``: the worker is frozen
    before its sockets are read, and a client whose connection is dumped sees
    it reset on restore either way (``--tcp-close``).
    """
    if shutil.which("iptables") or shutil.which("iptables-restore"):
        return []
    if shutil.which("nft"):
        return ["--network-lock", "nftables"]
    return ["--network-lock", "skip"]


def dump(
    pid: int, images: Path, *, leave_running: bool = False, timeout_s: float = DUMP_TIMEOUT_S
) -> float:
    """Freeze the tree rooted at ``pid`` into ``images``; returns seconds taken."""
    images.mkdir(parents=True, exist_ok=True)
    log_file = images.parent / "dump.log"
    args = ["dump", "-t", str(pid), "-D", str(images), "-o", str(log_file), "-v4", *DUMP_FLAGS]
    if leave_running:
        args.append("--leave-running")
    args += network_lock_flags()
    t0 = time.perf_counter()
    _run(args, timeout_s, f"criu dump of pid {pid}", log_file)
    return time.perf_counter() - t0


class LazyPages:
    """``criu lazy-pages`` for one restore: started before it, reaped in the background after.

    Raises CriuError when the daemon cannot start or its socket does not
    appear. After the restore, :meth:`release` hands the daemon to a thread that
    waits for it to exit (it does once every page is in the tree) and kills it
    after ``LAZY_PAGES_TIMEOUT_S``.
    """

    def __init__(self, images: Path, work: Path) -> None:
        self.log_file = work / "lazy-pages.log"
        socket = work / LAZY_PAGES_SOCKET
        socket.unlink(missing_ok=True)
        cmd = [criu_binary(), "lazy-pages", "-D", str(images), "-W", str(work)]
        cmd += ["-o", str(self.log_file), "-v3"]  # -v3: one line per page run it served
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C for the caller must not cut a page stream
            )
        except OSError as exc:
            raise CriuError(
                f"criu lazy-pages: cannot run {cmd[0]}: {exc.strerror}", command=cmd
            ) from exc
        self.cmd = cmd
        deadline = time.monotonic() + LAZY_PAGES_READY_TIMEOUT_S
        while not socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise CriuError(
                    "criu lazy-pages did not start",
                    command=cmd,
                    output=_last_errors(_tail(self.log_file)),
                    hint="lazy restore needs userfaultfd (Linux >= 4.11, root); restore eagerly",
                )
            time.sleep(0.001)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def release(self) -> None:
        def reap() -> None:
            try:
                self.proc.wait(LAZY_PAGES_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "criu lazy-pages still running after %.0f s: killed", LAZY_PAGES_TIMEOUT_S
                )
                self.kill()
                return
            if self.proc.returncode != 0:
                log.warning(
                    "criu lazy-pages exited %d: %s",
                    self.proc.returncode,
                    _last_errors(_tail(self.log_file)),
                )

        threading.Thread(target=reap, name="criu-lazy-pages", daemon=True).start()


def restore(
    images: Path,
    work: Path,
    *,
    timeout_s: float = RESTORE_TIMEOUT_S,
    extra: Sequence[str] = (),
    lazy_pages: bool = False,
) -> int:
    """Bring the tree in ``images`` back, detached; returns the root PID.

    ``work`` receives CRIU's log and pidfile, so the images folder (shared by
    every restore of this snapshot) is only read. ``lazy_pages``: memory
    arrives on first touch while the rest streams behind (:class:`LazyPages`).
    """
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "restore.log"
    pidfile = work / "restore.pid"
    pidfile.unlink(missing_ok=True)
    daemon = LazyPages(images, work) if lazy_pages else None
    args = [
        "restore",
        "-D",
        str(images),
        "-W",
        str(work),
        "-o",
        str(log_file),
        "--pidfile",
        str(pidfile),
        *RESTORE_FLAGS,
        *extra,
        *(["--lazy-pages"] if daemon is not None else []),
    ]
    try:
        _run(args, timeout_s, f"criu restore from {images}", log_file)
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        if daemon is not None:
            daemon.kill()
        raise CriuError("criu restore wrote no pidfile", output=_tail(log_file)) from exc
    except BaseException:
        if daemon is not None:
            daemon.kill()
        raise
    if daemon is not None:
        daemon.release()
    return pid
