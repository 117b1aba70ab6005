"""Would restoring this snapshot on this host be valid? Pure logic, no I/O but file stats.

Each rule names what changed in words a user can act on. Rules, and why:

- architecture and kernel release must be equal: the image holds the vDSO and
  syscall conventions of the kernel it was taken on;
- every CPU flag recorded must be present here: code already dispatched to
  AVX-512 / AMX / ... would crash with SIGILL on a CPU without them (a superset
  is fine, a different model name alone is not a problem);
- CRIU's major version must be equal and the host's not older: image formats
  only grow;
- CUDA snapshots need the same driver version and the same GPU models, in order;
- every file the process mapped must still have the same bytes (a library
  upgraded underneath would be mixed with the old library's pages).
"""

from __future__ import annotations

from zerostart.snapshot._host import FileDigest, HostFingerprint, changed_file


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def host_problems(recorded: HostFingerprint, here: HostFingerprint) -> list[str]:
    """Differences between the host a snapshot was taken on and this one that forbid a restore."""
    problems: list[str] = []
    if recorded.arch != here.arch:
        problems.append(f"CPU architecture {recorded.arch} -> {here.arch}")
    if recorded.kernel != here.kernel:
        problems.append(f"kernel {recorded.kernel} -> {here.kernel}")
    missing = sorted(set(recorded.cpu_flags) - set(here.cpu_flags))
    if missing:
        shown = ", ".join(missing[:12]) + (
            f" (+{len(missing) - 12} more)" if len(missing) > 12 else ""
        )
        problems.append(
            f"CPU flags missing on this host: {shown} (snapshot taken on {recorded.cpu_model!r})"
        )
    rec_v, here_v = _version_tuple(recorded.criu_version), _version_tuple(here.criu_version)
    if not rec_v or not here_v or rec_v[0] != here_v[0] or here_v < rec_v:
        problems.append(f"CRIU {recorded.criu_version} -> {here.criu_version}")
    if recorded.cuda_driver is not None:
        if recorded.cuda_driver != here.cuda_driver:
            problems.append(f"CUDA driver {recorded.cuda_driver} -> {here.cuda_driver or 'none'}")
        if tuple(recorded.gpus) != tuple(here.gpus[: len(recorded.gpus)]):
            problems.append(f"GPUs {list(recorded.gpus)} -> {list(here.gpus)}")
    return problems


def file_problems(files: tuple[FileDigest, ...], *, full: bool = False) -> list[str]:
    """Mapped files whose bytes changed since the snapshot (see ``changed_file`` for the cost)."""
    problems = []
    for recorded in files:
        why = changed_file(recorded, full=full)
        if why is not None:
            problems.append(why)
    return problems
