"""The closure rules on a synthetic trace of this very interpreter (no worker needed)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zerostart
from zerostart.image.closure import APPLICATION, RUNTIME, PathMap, build_closure, symlink_chain
from zerostart.image.trace import Trace, interpreter_info, warmup_requests


@pytest.fixture(scope="module")
def info() -> dict[str, object]:
    return interpreter_info(sys.executable)


def _trace(info: dict[str, object], tmp: Path, **kw: list[str]) -> Trace:
    bundle = tmp / "bundle"
    bundle.mkdir(exist_ok=True)
    return Trace(command=[], python=dict(info), bundle=str(bundle), task="embeddings", **kw)


def test_symlink_chain_records_each_hop(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libx.so.1.2").write_bytes(b"x")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr" / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    links, real = symlink_chain(str(tmp_path / "lib" / "libx.so.1"))
    assert links == [
        (str(tmp_path / "lib"), "usr/lib"),
        (str(tmp_path / "usr/lib/libx.so.1"), "libx.so.1.2"),
    ]
    assert real == str(tmp_path / "usr/lib/libx.so.1.2")


def test_path_map_relocates_the_build_environment(info: dict[str, object], tmp_path: Path) -> None:
    trace = _trace(info, tmp_path)
    app = os.path.dirname(zerostart.__file__)
    m = PathMap.for_trace(trace, app)
    ver = info["py_version_short"]
    assert m.map(os.path.join(str(info["stdlib"]), "os.py"))[:2] == (
        f"/usr/local/lib/python{ver}/os.py",
        RUNTIME,
    )
    assert m.map(os.path.realpath(zerostart.__file__))[:2] == (
        f"/usr/local/lib/python{ver}/site-packages/zerostart/__init__.py",
        APPLICATION,
    )
    assert m.map("/usr/lib/x86_64-linux-gnu/libc.so.6") == (
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        RUNTIME,
        False,
    )


def test_closure_of_the_interpreter(info: dict[str, object], tmp_path: Path) -> None:
    import numpy

    opened = [os.path.join(str(info["stdlib"]), "json", "__init__.py"), "/proc/self/stat"]
    fake_driver = tmp_path / "libcuda.so.1"
    fake_driver.write_bytes(b"not really")
    trace = _trace(
        info,
        tmp_path,
        opened=[*opened, str(fake_driver)],
        mapped=[numpy._core._multiarray_umath.__file__],
    )
    c = build_closure(trace, os.path.dirname(zerostart.__file__))
    dests = set(c.files)
    ver = info["py_version_short"]
    assert c.interpreter == f"/usr/local/bin/python{ver}"
    assert f"/usr/local/lib/python{ver}/os.py" in dests  # getpath's landmark
    assert f"/usr/local/lib/python{ver}/json/__init__.py" in dests
    assert c.files[f"/usr/local/lib/python{ver}/json/__init__.py"].compile_pyc
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in dests
    assert c.files["/lib64"].link_target == "usr/lib64"  # PT_INTERP reachable as on the host
    assert any(d.endswith("/libstdc++.so.6") and c.files[d].link_target for d in dests)
    assert "/proc/self/stat" in c.excluded
    assert str(fake_driver) in c.excluded and "NVIDIA" in c.excluded[str(fake_driver)]
    assert not any(d.startswith(("/root/", "/work/")) for d in dests), (
        "build paths leak into the image"
    )
    blas = [f for d, f in c.files.items() if "openblas" in d]
    if blas:
        assert "numpy._core._multiarray_umath" in blas[0].reason
    if info["ldlibrary"] and str(info["ldlibrary"]).endswith(".so"):  # shared libpython
        assert "/usr/local/lib" in c.library_path


def test_warmup_covers_the_task_route_and_errors() -> None:
    for task, route in (
        ("embeddings", "/embed"),
        ("token-classification", "/tokens"),
        ("sequence-classification", "/predict"),
    ):
        reqs = warmup_requests(task)
        assert any(r.path == route and r.must_succeed and r.method == "POST" for r in reqs)
        assert any(r.path == route and isinstance(r.body, bytes) for r in reqs)  # bad JSON path
        assert {"/health", "/info"} <= {r.path for r in reqs if r.must_succeed}


def test_hashlib_fallback_modules_follow_the_python_version() -> None:
    """Without OpenSSL, SHA-2 comes from _sha256/_sha512 (3.11) or _sha2 (3.12+, gh-99108)."""
    from zerostart.image.closure import openssl_replacement_includes

    assert openssl_replacement_includes("3.11") == (
        "_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2"
    )  # fmt: skip
    assert openssl_replacement_includes("3.12") == ("_md5", "_sha1", "_sha2", "_sha3", "_blake2")
    assert openssl_replacement_includes("3.13") == openssl_replacement_includes("3.12")


def test_hashlib_imports_cleanly_with_only_the_included_fallbacks() -> None:
    """This interpreter's own hashlib, with _hashlib and every built-in hash module the image
    would not carry made unimportable: ``import hashlib`` logs nothing and every guaranteed
    algorithm works. Before: only _sha256 was kept, and each container's log began with
    ``code for hash md5 was not found`` tracebacks (md5, sha1, sha512, blake2, sha3, shake)."""
    from zerostart.image.closure import openssl_replacement_includes

    kept = set(openssl_replacement_includes(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    every = {"_md5", "_sha1", "_sha256", "_sha512", "_sha2", "_sha3", "_blake2", "_hashlib"}
    script = (
        "import sys\n"
        f"for name in {sorted(every - kept)!r}:\n"
        "    sys.modules[name] = None  # ImportError on import, as a missing file\n"
        "import hashlib\n"
        "for name in sorted(hashlib.algorithms_guaranteed):\n"
        "    h = hashlib.new(name, b'x')\n"
        "    h.hexdigest(16) if name.startswith('shake') else h.hexdigest()\n"
        "print(hashlib.sha256(b'x').hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip() == hashlib.sha256(b"x").hexdigest()
