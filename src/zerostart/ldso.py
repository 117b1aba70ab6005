"""Where the dynamic loader looks for shared libraries on this host: a leaf.

The image builder's ELF closure (``zerostart.image.elf``) repeats ld.so's
search to find what a worker loads; the container runner
(``zerostart.container.gpu``) looks in the same folders for the NVIDIA
driver's libraries to mount into a GPU container. Both take the folders from
here (``man ld.so``, ``man ldconfig``; Debian's multiarch tuples from
``dpkg-architecture -qDEB_HOST_MULTIARCH``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# Debian's multiarch tuple per machine: where ld.so looks by default and what $LIB means.
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "i386": "i386-linux-gnu"}
LD_SO_CONF = "/etc/ld.so.conf"


def default_library_dirs(machine: str) -> tuple[str, ...]:
    """ld.so's compiled-in trusted directories on a multiarch (Debian/Ubuntu) system."""
    tuple_ = MULTIARCH.get(machine)
    dirs = [f"/lib/{tuple_}", f"/usr/lib/{tuple_}"] if tuple_ else []
    if machine in ("x86_64", "aarch64", "riscv64"):
        dirs += ["/lib64", "/usr/lib64"]
    return (*dirs, "/lib", "/usr/lib")


def ld_so_conf_dirs(conf: str = LD_SO_CONF) -> tuple[str, ...]:
    """Directories named by ld.so.conf and its ``include`` files, in order (what ldconfig caches).

    A missing or unreadable file contributes nothing (ld.so then searches only
    its defaults); an ``include`` cycle is read once.
    """
    out: list[str] = []
    seen: set[str] = set()

    def read(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                if not os.path.isabs(pattern):
                    pattern = os.path.join(os.path.dirname(path), pattern)
                for inc in sorted(glob.glob(pattern)):
                    read(inc)
            elif line.startswith("/"):
                out.append(line)

    read(conf)
    return tuple(dict.fromkeys(out))
