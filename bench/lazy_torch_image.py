"""The PyTorch + transformers server image that ``bench/lazy.py`` runs: what users run today.

Built the way ``FROM python:3.11-slim`` + ``pip install torch transformers`` +
``COPY server.py model/`` would build it, from this host's files, with our own
layer writer (eStargz, a valid gzip image for any other runtime):

* ``base``: the interpreter (this host's CPython prefix: binary, libpython,
  the standard library without ``site-packages``/``test``/``idlelib``/
  ``tkinter``) and the system libraries it and the packages link against
  (``ldd``), at their host paths;
* ``packages``: every file pip installed for ``torch`` and ``transformers``
  and their dependencies, recursively (the distributions' RECORD lists, read
  with ``importlib.metadata`` in the shared venv), into the prefix's
  ``site-packages``;
* ``app``: ``bench/anchors/torch_server.py`` and the MiniLM SST-2 model folder.

Python modules ship as unchecked-hash pycs (see ``_hash_pycs``: our layers'
mtimes are normalised, which would invalidate pip's timestamp pycs).

Prioritized files (before ``.prefetch.landmark``): what the server opened from
start to its first answer, in that order, recorded by running it once on this
host under ``strace`` (the workload profile ``ctr-remote images optimize``
records, made with a different tracer). Nothing is tuned for the benchmark
beyond that profile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from zerostart.image.build import CHUNK_SIZE_BYTES
from zerostart.image.layers import Entry, pyc_path, write_layer
from zerostart.image.oci import ImageConfig, write_oci_layout
from zerostart.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFIX = Path(os.path.realpath(sys.base_prefix))  # the CPython install the venv was made from
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"
IMAGE_SITE = f"{PREFIX}/lib/{PYVER}/site-packages"
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
PROFILE_TIMEOUT_S = 600.0
LDD_TIMEOUT_S = 60.0
PYC_TIMEOUT_S = 1800.0  # ~10k modules on a loaded 2-core machine
MODEL_IN_IMAGE = "/model"
SERVER_IN_IMAGE = "/app/torch_server.py"

_DISTS_SCRIPT = r"""
import json, re, sys
from importlib import metadata
todo, seen, files = list(sys.argv[1:]), set(), []
while todo:
    name = re.split(r"[ ;<>=!~\[(]", todo.pop())[0].lower().replace("_", "-")
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    for req in dist.requires or []:
        if "extra ==" not in req:
            todo.append(req)
    files += [str(dist.locate_file(f)) for f in dist.files or []]
print(json.dumps({"dists": sorted(seen), "files": files}))
"""


# As pip does, a source that does not compile (templates, test data) ships without a pyc.
_PYC_SCRIPT = r"""
import json, py_compile, sys
for src, out, dfile in json.load(sys.stdin):
    try:
        py_compile.compile(src, cfile=out, dfile=dfile, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except (py_compile.PyCompileError, SyntaxError, ValueError, UnicodeDecodeError):
        pass
"""


def _entries_for_files(pairs: list[tuple[str, str]]) -> list[Entry]:
    """(host path, image path) -> entries; symlinks stay symlinks."""
    out = {}
    for host, image in pairs:
        if os.path.islink(host):
            out[image] = Entry(image, "symlink", target=os.readlink(host))
        elif os.path.isfile(host):
            out[image] = Entry(image, "file", source=host, executable=os.access(host, os.X_OK))
    return list(out.values())


def _package_files(venv_python: str) -> tuple[list[str], list[tuple[str, str]]]:
    done = subprocess.run(
        [venv_python, "-c", _DISTS_SCRIPT, "torch", "transformers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc = json.loads(done.stdout)
    site = Path(venv_python).parent.parent / "lib" / PYVER / "site-packages"
    pairs = []
    for f in doc["files"]:
        rel = os.path.relpath(os.path.normpath(f), site)
        if rel.startswith(".."):
            continue  # console scripts in bin/: not needed by the server
        pairs.append((os.path.normpath(f), f"{IMAGE_SITE}/{rel}"))
    return doc["dists"], pairs


def _stdlib_files() -> list[tuple[str, str]]:
    pairs = []
    lib = PREFIX / "lib" / PYVER
    for dirpath, dirnames, filenames in os.walk(lib):
        if Path(dirpath) == lib:
            dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP]
        for name in filenames:
            p = os.path.join(dirpath, name)
            pairs.append((p, p))
    for q in [PREFIX / "bin" / PYVER, *sorted((PREFIX / "lib").glob("libpython*.so*"))]:
        pairs.append((str(q), str(q)))
    return pairs


def _hash_pycs(python: str, pairs: list[tuple[str, str]], work: Path) -> list[tuple[str, str]]:
    """Every source's pyc compiled as unchecked-hash (PEP 552), replacing pip's timestamp pycs.

    Our layers are reproducible (every mtime is SOURCE_DATE_EPOCH), so a
    timestamp pyc no longer matches its source and the interpreter would
    recompile every module at each start, in the full-pull run and in the
    lazy one alike; an image built with ``docker build`` keeps mtimes and its
    pycs stay valid. Hash-based pycs give our image that same property.
    """
    tag = sys.implementation.cache_tag
    jobs, pycs = [], {}
    for host, image in pairs:
        if image.endswith(".py") and os.path.isfile(host):
            target = pyc_path(image, tag, sourceless=False)
            out = str(work / target.lstrip("/"))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            pycs[target] = out
            if not os.path.exists(out):  # kept from an earlier build (another chunk size)
                jobs.append((host, out, image))
    subprocess.run(
        [python, "-I", "-c", _PYC_SCRIPT],
        input=json.dumps(jobs),
        text=True,
        capture_output=True,
        timeout=PYC_TIMEOUT_S,
        check=True,
    )
    kept = [(h, i) for h, i in pairs if i not in pycs]
    return kept + [(out, image) for image, out in pycs.items() if os.path.exists(out)]


def _system_libraries(binaries: list[str]) -> list[tuple[str, str]]:
    """``ldd`` of every ELF file: the libraries outside the prefix, and their symlink chains."""
    libs: set[str] = set()
    for path in binaries:
        done = subprocess.run(
            ["ldd", path], capture_output=True, text=True, timeout=LDD_TIMEOUT_S, check=False
        )
        for m in re.finditer(r"(?:=>\s*)?(/\S+)\s+\(0x", done.stdout):
            libs.add(m.group(1))
    pairs = []
    for lib in sorted(libs):
        if lib.startswith(str(PREFIX)) or "site-packages" in lib:
            continue
        p = lib
        while os.path.islink(p):
            pairs.append((p, p))
            p = os.path.join(os.path.dirname(p), os.readlink(p))
        pairs.append((os.path.normpath(p), os.path.normpath(p)))
    return pairs


def _profile(venv_python: str, model: Path, mapping: dict[str, str]) -> list[str]:
    """Image paths the server opens before its first answer, in first-open order (strace)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace.log"
        cmd = [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,execve",
            "-o",
            str(log),
            venv_python,
            str(ROOT / "bench/anchors/torch_server.py"),
            str(model),
            "--port",
            str(port),
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + PROFILE_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    req = urllib.request.Request(
                        f"http://127.0.0.1:{port}/predict",
                        json.dumps({"inputs": "profile"}).encode(),
                        {"Content-Type": "application/json"},
                    )
                    urllib.request.urlopen(req, timeout=30).read()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError("the torch server died while profiling") from None
                    time.sleep(0.2)
        finally:  # strace and the server: the whole process group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        order: list[str] = []
        seen: set[str] = set()
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r'(?:openat\(\w+, |open\(|execve\()"([^"]+)"', line)
            if not m or line.rstrip().endswith(
                ("ENOENT (No such file or directory)", "ENOTDIR (Not a directory)")
            ):
                continue
            host = os.path.normpath(m.group(1))
            image = mapping.get(host) or mapping.get(os.path.realpath(host))
            if image and image not in seen:
                seen.add(image)
                order.append(image)
    return order


def build_torch_image(
    out: Path, venv_python: str, model: Path, *, chunk_size: int = CHUNK_SIZE_BYTES
) -> dict[str, object]:
    """Write the OCI layout at ``out``; returns sizes and how many files were prioritized.

    ``chunk_size``: the eStargz chunk size of every layer (bench/lazy_chunks.py
    builds the image at several). The strace profile and the compiled pycs are
    kept beside ``out`` and reused by the next build.
    """
    t0 = time.perf_counter()
    dists, packages = _package_files(venv_python)
    stdlib = _stdlib_files()
    elf = [h for h, _ in [*packages, *stdlib] if h.endswith(".so") or ".so." in h]
    elf.append(str(PREFIX / "bin" / PYVER))  # lib-dynload's extensions too (_ctypes: libffi)
    system = _system_libraries(elf)
    app = [(str(ROOT / "bench/anchors/torch_server.py"), SERVER_IN_IMAGE)]
    app += [(str(p), f"{MODEL_IN_IMAGE}/{p.name}") for p in sorted(model.iterdir()) if p.is_file()]
    mapping = {h: i for h, i in [*packages, *stdlib, *system, *app]}
    kept = out.parent / ".torch-image-strace-profile.json"
    if kept.exists():
        profile = json.loads(kept.read_text())
    else:
        profile = _profile(venv_python, model, mapping)
        kept.write_text(json.dumps(profile))
    packages = _hash_pycs(venv_python, packages, out.parent / ".torch-image-pycs")
    stdlib = _hash_pycs(venv_python, stdlib, out.parent / ".torch-image-pycs")
    groups = {"base": [*system, *stdlib], "packages": packages, "app": app}
    blobs = out.parent / f".{out.name}-blobs"
    layers = []
    for name, pairs in groups.items():
        entries = _entries_for_files(pairs)
        paths = {e.path for e in entries}
        layers.append(
            write_layer(
                name,
                entries,
                blobs,
                prioritized=[p for p in profile if p in paths],
                chunk_size=chunk_size,
            )
        )
    env = (
        "HOME=/tmp",
        "HF_HOME=/tmp/hf",
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "OMP_NUM_THREADS=2",
        f"PATH={PREFIX}/bin:/usr/bin:/bin",
    )
    cfg = ImageConfig(
        entrypoint=(f"{PREFIX}/bin/{PYVER}", SERVER_IN_IMAGE, MODEL_IN_IMAGE), env=env
    )
    write_oci_layout(out, cfg, layers, {"org.opencontainers.image.title": "torch-server"})
    return {
        "distributions": dists,
        "layers": {
            la.name: {
                "compressed": la.size,
                "unpacked": la.uncompressed_size,
                "files": la.file_count,
                "prefetch_bytes": la.prefetch_size,
            }
            for la in layers
        },
        "compressed_bytes": sum(la.size for la in layers),
        "unpacked_bytes": sum(la.uncompressed_size for la in layers),
        "prioritized_files": len(profile),
        "chunk_size": chunk_size,
        "build_seconds": time.perf_counter() - t0,
    }
