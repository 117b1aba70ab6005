"""Just enough of the ELF format to compute a program's shared-library closure.

Theory of operation. The dynamic loader decides which files a process needs
from four things in each ELF object: the interpreter (``PT_INTERP``), the
``DT_NEEDED`` names, and the search paths ``DT_RPATH`` / ``DT_RUNPATH`` with
``$ORIGIN`` expansion. :func:`read_elf` reads those (plus section names, to
know whether a file carries debug info worth stripping) straight from the
headers described in the System V ABI / ELF specification, for 32 and 64 bit,
little and big endian. :class:`Resolver` then repeats ld.so's search order
(``man ld.so``): RPATH of the object and its loaders (only when the object has
no RUNPATH), RUNPATH of the object, the ``ld.so.conf`` directories (what
``ld.so.cache`` holds), then the trusted default directories.

Nothing here runs the loader or ``ldd`` (which would execute code from the
files being inspected).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from zerostart.errors import ImageError
from zerostart.ldso import MULTIARCH, default_library_dirs, ld_so_conf_dirs

ELF_MAGIC = b"\x7fELF"
PT_DYNAMIC = 2
PT_INTERP = 3
PT_LOAD = 1
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14
DT_RPATH = 15
DT_RUNPATH = 29
SHN_XINDEX = 0xFFFF
MACHINE_NAMES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
MAX_PATH_STRING_BYTES = 4096  # PT_INTERP and dynamic strings longer than PATH_MAX are corrupt


@dataclass(frozen=True)
class ElfInfo:
    """What the loader reads from one ELF object."""

    path: str
    bits: int  # 32 or 64
    machine: str
    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    debug_sections: tuple[str, ...] = field(default=())

    @property
    def has_debug_info(self) -> bool:
        return bool(self.debug_sections)


def is_elf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: str | os.PathLike[str]) -> ElfInfo | None:
    """Parse ``path``'s headers; None if it is not an ELF file. Corrupt ELF raises ImageError."""
    try:
        data = Path(path).read_bytes()
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return None
    if data[:4] != ELF_MAGIC:
        return None
    try:
        return _parse(str(path), data)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: corrupt ELF file: {exc}") from exc


def _parse(path: str, data: bytes) -> ElfInfo:
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ValueError(f"unknown ELF class {ei_class} / data encoding {ei_data}")
    bits = 64 if ei_class == 2 else 32
    end = "<" if ei_data == 1 else ">"
    if bits == 64:
        (_, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = (
            struct.unpack_from(end + "HHIQQQIHHHHHH", data, 16)
        )
        ph_fmt, sh_fmt, dyn_fmt = end + "IIQQQQQQ", end + "IIQQQQIIQQ", end + "qQ"
    else:
        (_, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = (
            struct.unpack_from(end + "HHIIIIIHHHHHH", data, 16)
        )
        ph_fmt, sh_fmt, dyn_fmt = end + "IIIIIIII", end + "IIIIIIIIII", end + "iI"

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
        if bits == 64:
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = fields
        else:
            p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = fields
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            interp = _cstring(data, p_offset, min(p_filesz, MAX_PATH_STRING_BYTES))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)

    needed: list[str] = []
    soname = None
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    if dynamic is not None:
        entries: list[tuple[int, int]] = []
        step = struct.calcsize(dyn_fmt)
        for off in range(dynamic[0], dynamic[0] + dynamic[1] - step + 1, step):
            tag, val = struct.unpack_from(dyn_fmt, data, off)
            if tag == DT_NULL:
                break
            entries.append((tag, val))
        strtab_vaddr = next((v for t, v in entries if t == DT_STRTAB), None)
        if strtab_vaddr is not None:
            strtab = _vaddr_to_offset(strtab_vaddr, loads)

            def string(v: int) -> str:
                return _cstring(data, strtab + v, MAX_PATH_STRING_BYTES)

            for tag, val in entries:
                if tag == DT_NEEDED:
                    needed.append(string(val))
                elif tag == DT_SONAME:
                    soname = string(val)
                elif tag == DT_RPATH:
                    rpath = tuple(p for p in string(val).split(":") if p)
                elif tag == DT_RUNPATH:
                    runpath = tuple(p for p in string(val).split(":") if p)

    debug = _debug_sections(data, bits, sh_fmt, shoff, shentsize, shnum, shstrndx)
    return ElfInfo(
        path=path,
        bits=bits,
        machine=MACHINE_NAMES.get(machine, str(machine)),
        interpreter=interp,
        needed=tuple(needed),
        soname=soname,
        rpath=rpath,
        runpath=runpath,
        debug_sections=debug,
    )


def _cstring(data: bytes, offset: int, limit: int) -> str:
    end = data.index(b"\0", offset, offset + limit + 1)
    return data[offset:end].decode("utf-8", "surrogateescape")


def _vaddr_to_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return vaddr - seg_vaddr + seg_offset
    raise ValueError(f"address {vaddr:#x} is in no PT_LOAD segment")


def _debug_sections(
    data: bytes, bits: int, sh_fmt: str, shoff: int, shentsize: int, shnum: int, shstrndx: int
) -> tuple[str, ...]:
    if shoff == 0 or shentsize == 0:
        return ()

    def section(i: int) -> tuple[int, ...]:
        return struct.unpack_from(sh_fmt, data, shoff + i * shentsize)

    first = section(0)
    if shnum == 0:  # more than 0xff00 sections: the real count lives in section 0's sh_size
        shnum = first[5]
    if shstrndx == SHN_XINDEX:
        shstrndx = first[6]
    if shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        return ()  # section headers stripped or truncated (allowed: the loader never reads them)
    names_offset = section(shstrndx)[4]
    out = []
    for i in range(shnum):
        name = _cstring(data, names_offset + section(i)[0], 256)
        if name.startswith((".debug_", ".zdebug_")):
            out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------- resolution


def expand_origin(entry: str, origin_dir: str, machine: str) -> str:
    """Expand ld.so's dynamic string tokens ($ORIGIN, $LIB, $PLATFORM) in a search path."""
    lib = f"lib/{MULTIARCH[machine]}" if machine in MULTIARCH else "lib"
    for token, value in (("ORIGIN", origin_dir), ("LIB", lib), ("PLATFORM", machine)):
        entry = entry.replace("${" + token + "}", value).replace("$" + token, value)
    return entry


@dataclass(frozen=True)
class Resolved:
    """A library found for a ``DT_NEEDED`` name: the path ld.so opens, and how it got there."""

    name: str
    path: str  # the path as searched (may go through symlinks); realpath it for the content
    via: str  # "rpath", "runpath", "ld.so.conf", "default", "path"
    origin_relative: bool  # found through an $ORIGIN entry: moves with its loader


class Resolver:
    """Finds ``DT_NEEDED`` libraries the way ld.so does; caches parsed headers."""

    def __init__(self, *, conf_dirs: tuple[str, ...] | None = None) -> None:
        self._conf_dirs = ld_so_conf_dirs() if conf_dirs is None else conf_dirs
        self._cache: dict[str, ElfInfo | None] = {}

    def info(self, path: str) -> ElfInfo | None:
        real = os.path.realpath(path)
        if real not in self._cache:
            self._cache[real] = read_elf(real)
        return self._cache[real]

    def find(self, name: str, loader: ElfInfo, chain: tuple[ElfInfo, ...] = ()) -> Resolved | None:
        """Where ld.so finds ``name`` needed by ``loader`` (loaded by ``chain``, outermost first)."""
        if "/" in name:
            return Resolved(name, name, "path", False) if os.path.exists(name) else None
        candidates: list[tuple[str, str, bool]] = []  # (dir, via, origin_relative)
        if not loader.runpath:
            for obj in (loader, *reversed(chain)):
                if obj.runpath:
                    break
                for entry in obj.rpath:
                    origin = os.path.dirname(os.path.realpath(obj.path))
                    candidates.append(
                        (expand_origin(entry, origin, obj.machine), "rpath", "ORIGIN" in entry)
                    )
        origin = os.path.dirname(os.path.realpath(loader.path))
        for entry in loader.runpath:
            candidates.append(
                (expand_origin(entry, origin, loader.machine), "runpath", "ORIGIN" in entry)
            )
        candidates += [(d, "ld.so.conf", False) for d in self._conf_dirs]
        candidates += [(d, "default", False) for d in default_library_dirs(loader.machine)]
        for directory, via, rel in candidates:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            found = self.info(path)
            if found is None or found.bits != loader.bits or found.machine != loader.machine:
                continue  # ld.so skips libraries of another class or machine the same way
            return Resolved(name, os.path.normpath(path), via, rel)
        return None
