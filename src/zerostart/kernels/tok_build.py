"""Ahead-of-time build of the tokenizer's native inner loops (``kernels/cpu/zs_tok.c``).

Build time only (runs the C compiler). ``zerostart convert`` (through
``zerostart.tokenize.compile``) writes the library beside ``tokenizer.bin`` as
``tokenizer.so`` whenever the tokenizer is a Unigram or a byte-level BPE one
(the loops it has), whatever ``--cpu-arch`` says: the bundle, and so the
image's model layer, carries it, and the worker maps it with ctypes
(``zerostart.tokenize._native``). Unlike the CPU kernels it is one portable
build (scalar code: ``-march=x86-64`` on x86-64, the compiler's default
elsewhere) that needs nothing but libc (and, for the calls that fill Python
lists, six functions of CPython's stable ABI that the interpreter loading it
exports; declared weak, so no Python headers are needed to build it). Without a compiler the bundle has no
library and the worker runs the same rules in Python (same answers, slower).

Builds are cached under ``$ZEROSTART_CACHE/tokenizer-native`` by the hash of the
source, the compiler's version and the flags.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

from zerostart.cachedir import cache_base
from zerostart.kernels.cpu_build import CC, COMPILE_TIMEOUT_S, PROBE_TIMEOUT_S, SOURCES_DIR, _run

SOURCE = SOURCES_DIR / "zs_tok.c"
# -O2: the loops are branchy trie walks, nothing for -O3's vectoriser; -s: no symbols
# beyond the exported ones (a few kB in the bundle).
CFLAGS = (
    "-O2",
    "-std=c11",
    "-fPIC",
    "-shared",
    "-fno-plt",
    "-s",
    "-Wall",
    "-Wl,-z,noexecstack",
    "-Wl,--as-needed",
)


def _arch_flags() -> tuple[str, ...]:
    """A baseline target: the bundle may run on any CPU of this instruction set."""
    return ("-march=x86-64", "-mtune=generic") if platform.machine() == "x86_64" else ()


def build_tokenizer_library(*, cache: Path | None = None) -> Path:
    """Compile (or take from the cache) ``zs_tok.c``; returns the shared library's path.

    Raises ConvertError when the compiler is missing (its hint says how to install
    one), fails or takes longer than ``COMPILE_TIMEOUT_S``.
    """
    flags = (*_arch_flags(), *CFLAGS)
    version = _run([CC, "--version"], PROBE_TIMEOUT_S, CC).stdout.splitlines()[0]
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join([version, *flags]).encode())
    out = (cache or cache_base() / "tokenizer-native") / digest.hexdigest()[:24] / "tokenizer.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _run([CC, *flags, "-o", tmp, str(SOURCE)], COMPILE_TIMEOUT_S, SOURCE)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
