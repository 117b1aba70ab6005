"""What a restore's validity depends on, read from this host and from a live process.

A CRIU image holds a process's memory, and that memory holds decisions made at
start-up that depend on the host: which CPU instructions glibc, numpy's
OpenBLAS and PyTorch dispatched to (AVX-512, AMX...), which kernel ABI the
vDSO exposes, and the exact bytes of every shared library and mmapped weight
file (pages CRIU does not store because they come from the file). So a
snapshot records all of these, and restore compares them before it trusts
the image.

Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20
# Files below this size are always hashed on restore: hashing 256 KiB costs ~0.1 ms,
# less than the syscalls a smarter check would need.
SMALL_FILE_BYTES = 256 * 1024
# Mapped paths that are not regular files of the image or the host: devices, kernel
# pseudo-files, anonymous shared memory. CRIU handles these itself.
_PSEUDO_PREFIXES = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV", "/anon_hugepage", "/run/shm/")


@dataclass(frozen=True)
class FileDigest:
    """A file the process maps: restore refuses if its bytes changed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class HostFingerprint:
    """The host facts a snapshot depends on."""

    arch: str
    kernel: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    criu_version: str
    cuda_driver: str | None = None
    gpus: tuple[str, ...] = ()


def cpu_info(cpuinfo_text: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(model name, sorted flags) of the first CPU in /proc/cpuinfo.

    Flags of the first CPU stand for all: Linux refuses to bring up CPUs whose
    features differ from the boot CPU's on x86.
    """
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown", ()
    model = "unknown"
    flags: tuple[str, ...] = ()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = tuple(sorted(set(value.split())))
        if model != "unknown" and flags:
            break
    return model, flags


def host_fingerprint(
    criu_version: str, *, cuda_driver: str | None = None, gpus: tuple[str, ...] = ()
) -> HostFingerprint:
    model, flags = cpu_info()
    return HostFingerprint(
        arch=platform.machine(),
        kernel=platform.release(),
        cpu_model=model,
        cpu_flags=flags,
        criu_version=criu_version,
        cuda_driver=cuda_driver,
        gpus=gpus,
    )


def mapped_paths(maps_text: str) -> list[str]:
    """Regular files a process maps, from the text of /proc/PID/maps, in first-seen order."""
    seen: dict[str, None] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        if not path.startswith("/") or path.endswith(" (deleted)"):
            continue
        if path.startswith(_PSEUDO_PREFIXES):
            continue
        seen.setdefault(path, None)
    return list(seen)


def uses_cuda(maps_text: str) -> bool:
    """True when a process has the NVIDIA driver's device files mapped (it holds a CUDA context)."""
    return any("/dev/nvidia" in line for line in maps_text.splitlines())


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def digest_file(path: str) -> FileDigest:
    st = os.stat(path)
    return FileDigest(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256_file(path))


def changed_file(recorded: FileDigest, *, full: bool = False) -> str | None:
    """Why ``recorded`` no longer describes the file on disk, or None if it still does.

    Fast path: same size and mtime means unchanged (one ``stat``); small files and
    files whose mtime moved are hashed, so a copy with new timestamps but the same
    bytes still passes. ``full`` hashes every file.
    """
    try:
        st = os.stat(recorded.path)
    except FileNotFoundError:
        return f"{recorded.path} is missing"
    except OSError as exc:
        return f"{recorded.path} cannot be read: {exc.strerror}"
    if st.st_size != recorded.size:
        return f"{recorded.path} changed size ({recorded.size} -> {st.st_size} bytes)"
    if not full and st.st_mtime_ns == recorded.mtime_ns and st.st_size > SMALL_FILE_BYTES:
        return None
    if sha256_file(recorded.path) != recorded.sha256:
        return f"{recorded.path} changed content (sha256 differs)"
    return None
