"""From a trace to the list of files an image holds, each with the reason it is there.

Theory of operation. A :class:`Trace` names host paths; an image needs image
paths, a layer for each, and a reason a user can read. :class:`PathMap` moves
the pieces of the build environment to a conventional place, so nothing about
the build host (``/root/.pyenv/...``, ``.venv``) leaks into the image::

    <bundle>                        -> /model                            (model)
    <src>/zerostart                 -> <site-packages>/zerostart         (application)
    every build site-packages dir   -> /usr/local/lib/pythonX.Y/site-packages
    the interpreter's prefix        -> /usr/local  (bin/, lib/libpython, lib/pythonX.Y)
    anything else (libc, libstdc++) -> the same path, symlinks recreated as on the host

Python modules come from the start-up snapshot and the ``open`` events (a
``.pyc`` read means its ``.py`` is needed too, since the finder looks for the
source); native code from the memory maps, ``ctypes.dlopen`` events and the
``DT_NEEDED`` closure (:mod:`zerostart.image.elf`). Kernel interfaces
(``/proc``, ``/sys``, ``/dev``), the trace's own scratch files, editable-install
hooks and the NVIDIA driver libraries (injected by the container runtime on a
GPU host) never enter the image.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zerostart.errors import ImageError
from zerostart.image.elf import ElfInfo, Resolver
from zerostart.image.trace import Trace
from zerostart.ldso import default_library_dirs

RUNTIME, APPLICATION, MODEL = "runtime", "application", "model"
LAYER_ORDER = (RUNTIME, APPLICATION, MODEL)  # least to most often changed
IMAGE_PREFIX = "/usr/local"
MODEL_DIR = "/model"
MAX_SYMLINK_HOPS = 40  # ld.so and the kernel give up at 40 too (ELOOP)

# Never part of an image: kernel interfaces, scratch space, loader caches...
LOCATION_EXCLUDES = ("/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*", "/etc/ld.so.cache")
# ... except that the interpreter, the venv and the application may themselves live
# under one of those (a CI checkout in /tmp): files under those roots are kept.
# Editable-install hooks and install records are never wanted.
DEFAULT_EXCLUDES = (
    *LOCATION_EXCLUDES,
    "*/__editable__*",
    "*/distutils-precedence.pth",
    "*/_distutils_hack/*",
    "*.dist-info/RECORD",
    # glibc's locale data (C.utf8's LC_CTYPE, 354 KB) and iconv's module cache: mapped
    # because the build host runs in a UTF-8 locale. The image runs Python in UTF-8 mode
    # (PYTHONUTF8=1, image/build.py) under the C locale instead, which needs neither.
    "/usr/lib/locale/*",
    "*/gconv/gconv-modules*",
)
# OpenSSL (libcrypto 4.7 MB, libssl 0.7 MB) is on the worker's path only because asyncio
# imports ssl and hashlib prefers _hashlib when they exist. Without them asyncio has no TLS
# (which a loopback worker behind a gateway never serves), and hashlib builds every one of its
# guaranteed algorithms from CPython's own modules at import; one missing module is a logged
# traceback per algorithm ("code for hash md5 was not found") in every container's log, so
# all of them are included below (openssl_replacement_includes). Not a default for workers
# that are not zerostart's: `--keep-openssl` turns this off.
OPENSSL_EXCLUDES = (
    "*/lib-dynload/_ssl.*",
    "*/lib-dynload/_hashlib.*",
    "*/libssl.so*",
    "*/libcrypto.so*",
)
# hashlib's built-in constructors (CPython Lib/hashlib.py, __get_builtin_constructor), which
# `import hashlib` calls for every name of algorithms_guaranteed when _hashlib is absent.
HASHLIB_BUILTINS = ("_md5", "_sha1", "_sha3", "_blake2")


def openssl_replacement_includes(py_version: str) -> tuple[str, ...]:
    """The modules hashlib needs without _hashlib: :data:`HASHLIB_BUILTINS` and the SHA-2
    ones, ``_sha256`` + ``_sha512`` up to Python 3.11, ``_sha2`` from 3.12 (CPython
    gh-99108 merged them). Measured on CPython 3.11.7: +115 KB unpacked, +36 KB compressed in
    the runtime layer over _sha256 and _blake2 alone (libcrypto is 4.7 MB; docs/image.md)."""
    major, minor = (int(x) for x in py_version.split(".")[:2])
    sha2 = ("_sha2",) if (major, minor) >= (3, 12) else ("_sha256", "_sha512")
    return (*HASHLIB_BUILTINS[:2], *sha2, *HASHLIB_BUILTINS[2:])


# Injected by the NVIDIA container runtime from the host's driver; must match the
# kernel module, so an image never carries its own (see docs/image.md).
DRIVER_LIBRARY_PATTERNS = (
    "libcuda.so*",
    "libcudadebugger.so*",
    "libnvidia-*.so*",
    "libnvcuvid.so*",
    "libnvoptix.so*",
)


@dataclass(frozen=True)
class ImageFile:
    """One entry of a layer. ``source`` is the host file whose bytes it carries."""

    dest: str  # absolute path inside the image
    layer: str
    reason: str
    source: str | None = None  # regular file content (None for symlinks)
    link_target: str | None = None  # symlink target, as written on the host
    compile_pyc: bool = False  # a Python source: a pyc is made for it
    strip_debug: bool = False  # an ELF object carrying .debug_* sections
    executable: bool = False


@dataclass
class Closure:
    files: dict[str, ImageFile] = field(default_factory=dict)  # by dest
    excluded: dict[str, str] = field(default_factory=dict)  # host path -> why
    library_path: list[str] = field(default_factory=list)  # image dirs ld.so must search
    interpreter: str = ""  # image path of the python executable
    python_version: str = ""  # "3.11"
    cache_tag: str = ""

    @property
    def site_packages(self) -> str:
        """Image path every build site-packages folder (and the application) maps to."""
        return f"{IMAGE_PREFIX}/lib/python{self.python_version}/site-packages"

    def add(self, f: ImageFile) -> None:
        old = self.files.get(f.dest)
        if old is None:
            self.files[f.dest] = f
        elif old.source and f.source and os.path.realpath(old.source) != os.path.realpath(f.source):
            raise ImageError(
                f"two host files map to {f.dest}: {old.source} and {f.source}",
                hint="exclude one of them with --exclude",
            )


class PathMap:
    """Host path -> (image path, layer), longest host prefix first."""

    def __init__(self, rules: Iterable[tuple[str, str, str]]) -> None:
        self.rules = sorted(rules, key=lambda r: len(r[0]), reverse=True)

    def map(self, host: str) -> tuple[str, str, bool]:
        """(image path, layer, relocated?) for an absolute, symlink-free host path."""
        for prefix, dest, layer in self.rules:
            if host == prefix or host.startswith(prefix.rstrip("/") + "/"):
                return dest + host[len(prefix) :], layer, True
        return host, RUNTIME, False

    @classmethod
    def for_trace(cls, trace: Trace, app_package_dir: str) -> PathMap:
        py = trace.python
        ver = py["py_version_short"]
        site_dest = f"{IMAGE_PREFIX}/lib/python{ver}/site-packages"
        rules = [
            (os.path.realpath(trace.bundle), MODEL_DIR, MODEL),
            (os.path.realpath(app_package_dir), f"{site_dest}/zerostart", APPLICATION),
            (py["stdlib"], f"{IMAGE_PREFIX}/lib/python{ver}", RUNTIME),
            (py["platstdlib"], f"{IMAGE_PREFIX}/lib/python{ver}", RUNTIME),
            (py["base_prefix"], IMAGE_PREFIX, RUNTIME),
        ]
        rules += [(p, site_dest, RUNTIME) for p in py["site_packages"]]
        return cls(rules)


def symlink_chain(path: str) -> tuple[list[tuple[str, str]], str]:
    """The symlinks met while resolving ``path`` (each (link, target)), and the final real path."""
    links: list[tuple[str, str]] = []
    current = os.path.normpath(os.path.abspath(path))
    for _ in range(MAX_SYMLINK_HOPS):
        parts = current.split("/")[1:]
        walked = "/"
        for i, part in enumerate(parts):
            candidate = os.path.join(walked, part)
            if os.path.islink(candidate):
                target = os.readlink(candidate)
                links.append((candidate, target))
                base = target if target.startswith("/") else os.path.join(walked, target)
                current = os.path.normpath(os.path.join(base, *parts[i + 1 :]))
                break
            walked = candidate
        else:
            return links, current
    raise ImageError(f"{path}: too many levels of symbolic links")


def _matches(path: str, patterns: Sequence[str]) -> str | None:
    for pat in patterns:
        if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(os.path.basename(path), pat):
            return pat
    return None


class ClosureBuilder:
    """Accumulates image files for one trace; see the module docstring for the rules."""

    def __init__(
        self,
        trace: Trace,
        app_package_dir: str,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        exclude_driver_libraries: bool = True,
        strip_debug: bool = True,
        drop_openssl: bool = True,
    ) -> None:
        self.trace = trace
        self.map = PathMap.for_trace(trace, app_package_dir)
        lean = OPENSSL_EXCLUDES if drop_openssl else ()
        self.excludes = (*DEFAULT_EXCLUDES, *lean, *exclude)
        self.driver_patterns = DRIVER_LIBRARY_PATTERNS if exclude_driver_libraries else ()
        py_version = str(trace.python["py_version_short"])
        replacement = openssl_replacement_includes(py_version) if drop_openssl else ()
        self.include = (*replacement, *include)
        # The hashlib fallbacks are files on some Pythons and built into the
        # interpreter on others (Ubuntu's 3.12: _sha2, _md5...): a missing one is fine.
        self._optional_includes = frozenset(replacement)
        self.strip = strip_debug
        self.resolver = Resolver()
        self.closure = Closure(
            python_version=trace.python["py_version_short"], cache_tag=trace.python["cache_tag"]
        )
        self._elf_reason: dict[str, str] = {}  # realpath -> human name used in reasons
        self._elf_done: set[str] = set()
        self._lib_dirs: set[str] = set()  # image dirs of libraries found by a search path
        self._module_roots = sorted(
            [
                trace.python["stdlib"],
                trace.python["platstdlib"],
                *trace.python["site_packages"],
                os.path.dirname(os.path.realpath(app_package_dir)),
            ],
            key=len,
            reverse=True,
        )

    # -- public ------------------------------------------------------------------
    def build(self) -> Closure:
        t = self.trace
        exe = t.python["executable"]
        self.add_path(exe, "the Python interpreter", executable=True)
        ver = t.python["py_version_short"]
        self.closure.interpreter = self.map.map(exe)[0]
        bin_dir = os.path.dirname(self.closure.interpreter)
        for alias in ("python3", "python"):
            dest = f"{bin_dir}/{alias}"
            if dest != self.closure.interpreter:
                self.closure.add(
                    ImageFile(dest, RUNTIME, "interpreter alias", link_target=f"python{ver}")
                )
        # getpath's landmarks: lib/pythonX.Y/os.py (prefix) and lib-dynload (exec_prefix).
        self.add_path(os.path.join(t.python["stdlib"], "os.py"), "interpreter landmark (prefix)")
        for name, file in t.startup_modules:
            if file:
                self.add_path(file, f"interpreter start-up (import {name})")
        for path in t.opened:
            self.add_path(path, None)
        # Extension modules first, so that libraries are named after what needs them.
        mapped = sorted(t.mapped, key=lambda p: self._module_name(p) is None)
        for path in mapped:
            self.add_path(path, "mapped by the worker")
        for name in t.dlopened:
            self.add_dlopen(name)
        for item in self.include:
            try:
                self.add_include(item)
            except ImageError:
                if item not in self._optional_includes:
                    raise
        self._library_path()
        return self.closure

    def add_path(self, host: str, reason: str | None, *, executable: bool = False) -> None:
        """Add one host file (with its symlinks, pyc, ELF closure) unless excluded."""
        host = os.path.abspath(host)
        if self._excluded(host):
            return
        if host.endswith(".pyc") and "__pycache__" in host:
            source = _source_from_cache(host)
            if source is None:
                return
            host = source
        links, real = symlink_chain(host)
        if not os.path.isfile(real):
            return
        if self._excluded(real):
            return
        dest, layer, relocated = self.map.map(real)
        if layer == MODEL:
            return  # the model layer is the whole bundle, added by the builder
        if not relocated:
            for link, target in links:
                self.closure.add(
                    ImageFile(link, RUNTIME, "symlink on the library path", link_target=target)
                )
        if reason is None:
            reason = self._python_reason(real) or "opened by the worker"
        info = self.resolver.info(real) if _might_be_elf(real) else None
        if info is not None and reason.startswith(("mapped", "opened")):
            reason = self._python_reason(real) or reason
        self.closure.add(
            ImageFile(
                dest,
                layer,
                reason,
                source=real,
                compile_pyc=real.endswith(".py"),
                strip_debug=bool(info and info.has_debug_info and self.strip),
                executable=executable or os.access(real, os.X_OK),
            )
        )
        if info is not None:
            self._elf_reason.setdefault(real, _short(reason, real))
            self._add_elf(info, ())

    def add_dlopen(self, name: str) -> None:
        if "/" in name:
            self.add_path(name, f"ctypes.CDLL({name!r})")
            return
        exe = self.resolver.info(self.trace.python["executable"])
        if exe is None:
            return
        found = self.resolver.find(name, exe)
        if found is None:
            self.closure.excluded.setdefault(
                name, "dlopen()ed by name but not found on the library path"
            )
            return
        if self._driver(found.path):
            return
        self.add_path(found.path, f"ctypes.CDLL({name!r})")

    def add_include(self, item: str) -> None:
        """``--include``: a host path or glob (files, or folders recursively) or a module name."""
        if item.startswith(("/", ".", "~")):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                raise ImageError(f"--include {item}: matches no file")
            for m in matches:
                paths = (
                    [m]
                    if os.path.isfile(m)
                    else sorted(
                        str(p)
                        for p in Path(m).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                    )
                )
                for p in paths:
                    self.add_path(p, f"--include {item}")
            return
        rel = item.replace(".", "/")
        dynload = [
            os.path.join(self.trace.python[k], "lib-dynload") for k in ("stdlib", "platstdlib")
        ]
        for root in (*self._module_roots, *dynload):
            for cand in (f"{root}/{rel}.py", f"{root}/{rel}/__init__.py"):
                if os.path.isfile(cand):
                    self.add_path(cand, f"--include {item}")
                    return
            ext = sorted(glob.glob(f"{root}/{rel}.*.so")) or sorted(glob.glob(f"{root}/{rel}.so"))
            if ext:
                self.add_path(ext[0], f"--include {item}")
                return
        raise ImageError(f"--include {item}: no such module or file")

    # -- internals -------------------------------------------------------------------
    def _excluded(self, host: str) -> bool:
        if self._driver(host):
            why = "NVIDIA driver library (mounted from the host at run time)"
        else:
            pat = _matches(host, self.excludes)
            if pat is not None and pat in LOCATION_EXCLUDES and self._in_module_root(host):
                pat = None
            if pat is None:
                return False
            why = f"excluded by {pat}"
        self.closure.excluded.setdefault(host, why)
        return True

    def _in_module_root(self, host: str) -> bool:
        py = self.trace.python
        roots = (*self._module_roots, py["prefix"], py["base_prefix"])
        return any(host.startswith(root.rstrip("/") + "/") for root in roots)

    def _driver(self, path: str) -> bool:
        return (
            bool(self.driver_patterns)
            and _matches(os.path.basename(path), self.driver_patterns) is not None
        )

    def _python_reason(self, real: str) -> str | None:
        name = self._module_name(real)
        return f"import {name}" if name else None

    def _module_name(self, real: str) -> str | None:
        for root in self._module_roots:
            if real.startswith(root + "/"):
                rel = real[len(root) + 1 :]
                if rel.endswith(".py"):
                    rel = rel[:-3]
                elif ".cpython-" in rel or rel.endswith(".abi3.so"):
                    rel = rel.split(".", 1)[0]
                elif rel.endswith(".so"):
                    rel = rel[:-3]
                else:
                    return None
                if rel.endswith("/__init__"):
                    rel = rel[: -len("/__init__")]
                rel = rel.removeprefix("lib-dynload/")
                parts = rel.split("/")
                # numpy.libs/libfoo-1a2b.so is a library next to packages, not a module
                return ".".join(parts) if all(p.isidentifier() for p in parts) else None
        return None

    def _add_elf(self, info: ElfInfo, chain: tuple[ElfInfo, ...]) -> None:
        real = os.path.realpath(info.path)
        if real in self._elf_done:
            return
        self._elf_done.add(real)
        who = self._elf_reason.get(real, os.path.basename(real))
        if info.interpreter:
            self.add_path(info.interpreter, f"ELF interpreter of {who}")
        for name in info.needed:
            found = self.resolver.find(name, info, chain)
            if found is None:
                raise ImageError(
                    f"{info.path} needs {name}, which is on no library path of this host",
                    hint="install it, or --exclude the file that needs it",
                )
            lib_real = os.path.realpath(found.path)
            if self._driver(found.path):
                self.closure.excluded.setdefault(
                    found.path, "NVIDIA driver library (mounted from the host at run time)"
                )
                continue
            self._elf_reason.setdefault(lib_real, f"{name} ← {who}")
            # Always: the symlinks on this search path must exist even if the file is known.
            self.add_path(found.path, f"DT_NEEDED {name} ← {who}")
            lib = self.resolver.info(lib_real)
            if lib is not None:
                self._add_elf(lib, (*chain, info))
            if not found.origin_relative:
                dest = self.map.map(lib_real)[0]
                self._lib_dirs.add(os.path.dirname(dest))

    def _library_path(self) -> None:
        exe = self.resolver.info(self.trace.python["executable"])
        machine = exe.machine if exe else "x86_64"
        defaults = set(default_library_dirs(machine))
        self.closure.library_path = sorted(d for d in self._lib_dirs if d not in defaults)


def _might_be_elf(path: str) -> bool:
    if path.endswith((".py", ".pyc", ".json", ".txt", ".typed", ".pyi")):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _short(reason: str, real: str) -> str:
    """The name a reason chain uses for a file: the module for extensions, else the file name."""
    if reason.startswith("import "):
        return reason[len("import ") :]
    return os.path.basename(real)


def _source_from_cache(pyc: str) -> str | None:
    head, name = os.path.split(pyc)
    stem = name.split(".", 1)[0]
    source = os.path.join(os.path.dirname(head), stem + ".py")
    return source if os.path.isfile(source) else None


def build_closure(
    trace: Trace,
    app_package_dir: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_driver_libraries: bool = True,
    strip_debug: bool = True,
    drop_openssl: bool = True,
) -> Closure:
    """Every runtime and application file the traced worker needs, with reasons."""
    b = ClosureBuilder(
        trace,
        app_package_dir,
        include=include,
        exclude=exclude,
        exclude_driver_libraries=exclude_driver_libraries,
        strip_debug=strip_debug,
        drop_openssl=drop_openssl,
    )
    return b.build()
