"""The worker's cold-start path imports only what it must: pinned, module by module.

Every top-level module the server's entry point imports must be on an explicit
list. Anything new (a heavy library, or a stdlib module nobody meant to pull
in) fails here and has to be added on purpose. The full worker path, pipeline
and numpy included, is pinned on a real bundle in
tests/integration/test_server_imports.py, with the same lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Never on the worker path (build-time or CLI-only libraries).
FORBIDDEN = frozenset(
    {
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "onnx",
        "onnxruntime",
        "click",
        "rich",
        "h11",
        "pydantic",
        "yaml",
        "requests",
        "urllib3",
        "httpx",
        "uvloop",
        "prometheus_client",
    }
)

# Third-party and our own: httptools (HTTP parser, C), its Cython runtime, zerostart.
SERVE_THIRD_PARTY = frozenset({"httptools", "_cython_3_3_0", "cython_runtime", "zerostart"})

# The standard library as CPython 3.11 imports it for asyncio + json + argparse +
# logging + threading; "__main__" and "_distutils_hack" (setuptools' .pth hook in
# virtualenvs) come with the interpreter, not with us.
SERVE_STDLIB = frozenset(
    [
        "__future__",
        "__main__",
        "_abc",
        "_ast",
        "_asyncio",
        "_bisect",
        "_codecs",
        "_collections",
        "_collections_abc",
        "_contextvars",
        "_distutils_hack",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "_functools",
        "_heapq",
        "_imp",
        "_io",
        "_json",
        "_locale",
        "_opcode",
        "_operator",
        "_posixsubprocess",
        "_signal",
        "_sitebuiltins",
        "_socket",
        "_sre",
        "_ssl",
        "_stat",
        "_string",
        "_struct",
        "_thread",
        "_typing",
        "_warnings",
        "_weakref",
        "_weakrefset",
        "abc",
        "argparse",
        "array",
        "ast",
        "asyncio",
        "atexit",
        "base64",
        "binascii",
        "bisect",
        "builtins",
        "codecs",
        "collections",
        "concurrent",
        "contextlib",
        "contextvars",
        "copy",
        "copyreg",
        "dataclasses",
        "dis",
        "encodings",
        "enum",
        "errno",
        "fcntl",
        "functools",
        "gc",  # built in (no file): start-up pauses the collector (serve/startup.py)
        "genericpath",
        "gettext",
        "heapq",
        "importlib",
        "inspect",
        "io",
        "itertools",
        "json",
        "keyword",
        "linecache",
        "locale",
        "logging",
        "marshal",
        "math",
        "opcode",
        "operator",
        "os",
        "posix",
        "posixpath",
        "re",
        "reprlib",
        "select",
        "selectors",
        "signal",
        "site",
        "socket",
        "ssl",
        "stat",
        "string",
        "struct",
        "subprocess",
        "sys",
        "textwrap",
        "threading",
        "time",
        "token",
        "tokenize",
        "traceback",
        "types",
        "typing",
        "warnings",
        "weakref",
        "zipimport",
    ]
)

# What numpy 2.x adds on top: no longer on the worker's path (docs/cpu.md); listed so the
# tests can say what they keep out.
NUMPY = frozenset(
    [
        "numpy",
        "_compat_pickle",
        "_ctypes",
        "_datetime",
        "_pickle",
        "ctypes",
        "datetime",
        "numbers",
        "pickle",
        "platform",
    ]
)

# What the pipeline (bundle, weights, tokenizer, engine) adds: hashlib to verify the bundle,
# mmap for the weights, unicodedata for the tokenizer, and pathlib, which in 3.11
# brings fnmatch, ntpath, urllib.parse and ipaddress (about 7 ms).
PIPELINE_STDLIB = frozenset(
    [
        "hashlib",
        "_hashlib",
        "_blake2",
        "mmap",
        "unicodedata",
        "pathlib",
        "fnmatch",
        "ntpath",
        "urllib",
        "ipaddress",
        # The engine's threads (parallel.Workers -> concurrent.futures' pool) when the native
        # CPU kernels do the matrix products and use every core (docs/cpu.md).
        "queue",
        "_queue",
        # The native kernels (and mapped weights' addresses) through ctypes.
        "ctypes",
        "_ctypes",
    ]
)

WORKER_ALLOWED = SERVE_STDLIB | SERVE_THIRD_PARTY | PIPELINE_STDLIB


def top_level_modules(code: str) -> set[str]:
    """Top-level module names in sys.modules after running ``code`` in a fresh interpreter."""
    probe = (
        code
        + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_server_entry_point_imports_only_the_pinned_modules() -> None:
    modules = top_level_modules("import zerostart.serve.__main__, zerostart.serve.server")
    assert not modules & FORBIDDEN
    unexpected = modules - SERVE_STDLIB - SERVE_THIRD_PARTY
    assert not unexpected, f"new imports on the worker path: {sorted(unexpected)}"
    assert "httptools" in modules and "numpy" not in modules  # numpy comes with the pipeline


def test_package_import_is_lazy() -> None:
    # `python -m zerostart.serve` imports the package first: it must not import the server,
    # or that time would hide in the "interpreter" phase.
    modules = top_level_modules("import zerostart.serve")
    assert "httptools" not in modules and "asyncio" not in modules


def test_gpu_bundle_gets_one_openblas_thread_unless_the_user_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zerostart.serve import __main__ as worker

    started: list[str] = []
    monkeypatch.setattr(worker, "prewarm_cuda", lambda: started.append("cuda"))
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    (tmp_path / "manifest.json").write_text('{"device": "cpu"}')
    assert not worker.prepare_for_gpu(str(tmp_path))
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the CPU engine may use BLAS threads
    assert not worker.prepare_for_gpu(str(tmp_path / "missing"))  # the loader reports it
    assert not started
    (tmp_path / "manifest.json").write_text('{"device": "cuda"}')
    assert worker.prepare_for_gpu(str(tmp_path))
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and started == ["cuda"]
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    worker.prepare_for_gpu(str(tmp_path))
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"


FAKE_LIBCUDA_C = r"""
#include <stdint.h>
static int inits, retains, last_device = -1;
int cuInit(unsigned flags) { inits++; return flags == 0 ? 0 : 1; }
int cuDeviceGet(int *dev, int ordinal) { *dev = 100 + ordinal; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    retains++; last_device = dev; *ctx = (void *)(uintptr_t)0xc0; return 0;
}
int fake_inits(void) { return inits; }
int fake_retains(void) { return retains; }
int fake_last_device(void) { return last_device; }
"""


def test_cuda_prewarm_initialises_and_retains_on_its_own_thread(tmp_path: Path) -> None:
    """Against a small C stand-in for libcuda with the three entry points it calls."""
    import ctypes
    import shutil

    from zerostart.serve.__main__ import prewarm_cuda

    if shutil.which("gcc") is None:
        pytest.skip("gcc builds the stand-in library (scripts/install_system_deps.sh)")
    src, lib = tmp_path / "fake_cuda.c", tmp_path / "libfakecuda.so"
    src.write_text(FAKE_LIBCUDA_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    thread = prewarm_cuda(str(lib), device=0)
    assert thread.daemon and thread.name == "cuda-prewarm"
    thread.join(10)
    fake = ctypes.CDLL(str(lib))  # the same loaded object: its counters
    assert (fake.fake_inits(), fake.fake_retains(), fake.fake_last_device()) == (1, 1, 100)
    missing = prewarm_cuda(str(tmp_path / "no-libcuda.so"))  # no driver: silent, no crash
    missing.join(10)
    assert not missing.is_alive()


def test_start_up_pauses_the_collector_only_when_asked_and_resumes_it_frozen() -> None:
    import gc

    from zerostart.serve.startup import Startup

    assert gc.isenabled()
    Startup.begin().resume_gc()  # not paused: nothing to resume
    assert gc.isenabled()
    startup = Startup.begin(pause_gc=True)
    try:
        assert not gc.isenabled()
    finally:
        startup.resume_gc()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()


def test_importing_the_entry_point_leaves_the_collector_alone() -> None:
    # `zerostart serve` (the CLI) and tests import it; only `python -m` pauses the collector
    modules = top_level_modules("import gc, zerostart.serve.__main__; assert gc.isenabled()")
    assert "zerostart" in modules
