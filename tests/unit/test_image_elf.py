"""The ELF reader against binutils' readelf, on the real interpreter and numpy's extension."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zerostart.errors import ImageError
from zerostart.image.elf import Resolver, expand_origin, is_elf, read_elf

INTERPRETER = os.path.realpath(sys.executable)


def _numpy_core() -> str:
    import numpy

    core = Path(numpy.__file__).parent / "_core"
    return str(next(core.glob("_multiarray_umath*.so")))


def _readelf(path: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(
        ["readelf", "-dlW", path], capture_output=True, text=True, check=True, timeout=60
    ).stdout


@pytest.mark.parametrize("path", [INTERPRETER, "numpy"])
def test_dynamic_section_matches_readelf(path: str) -> None:
    path = _numpy_core() if path == "numpy" else path
    out = _readelf(path)
    info = read_elf(path)
    assert info is not None
    assert info.needed == tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out))
    assert info.rpath == tuple(
        x for m in re.findall(r"\(RPATH\)\s+Library rpath: \[(.*)\]", out) for x in m.split(":")
    )
    assert info.runpath == tuple(
        x for m in re.findall(r"\(RUNPATH\)\s+Library runpath: \[(.*)\]", out) for x in m.split(":")
    )
    interp = re.search(r"Requesting program interpreter: (.*)\]", out)
    assert info.interpreter == (interp.group(1) if interp else None)
    assert info.bits == 64


def test_not_elf_and_corrupt_elf(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("hello")
    assert read_elf(text) is None and not is_elf(text)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00")  # header cut short
    with pytest.raises(ImageError, match="corrupt ELF"):
        read_elf(broken)


def test_resolver_follows_origin_rpath_like_ld_so() -> None:
    info = read_elf(_numpy_core())
    assert info is not None
    found = {n: Resolver().find(n, info) for n in info.needed}
    blas = [r for n, r in found.items() if n.startswith("libscipy_openblas")]
    if not blas:
        pytest.skip("this numpy build does not bundle OpenBLAS")
    assert blas[0] is not None and blas[0].origin_relative and blas[0].via == "rpath"
    assert "numpy.libs" in blas[0].path
    libc = found["libc.so.6"]
    assert libc is not None and os.path.realpath(libc.path) == os.path.realpath(
        "/lib/x86_64-linux-gnu/libc.so.6"
    )


def test_expand_origin_tokens() -> None:
    assert expand_origin("$ORIGIN/../lib", "/a/b", "x86_64") == "/a/b/../lib"
    assert expand_origin("${ORIGIN}/x:$LIB", "/o", "x86_64") == "/o/x:lib/x86_64-linux-gnu"
