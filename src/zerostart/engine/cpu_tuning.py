"""How the fp32 products are blocked and threaded on this CPU: a measured table, else a rule.

``zs_gemm_f32`` (kernels/cpu/zs_gemm_f32.c) takes its register tile, k block
(kc), row block (mc) and whether to pack panels of W per call; the engine
chooses how threads share a product (rows, or columns below
``col_split_rows`` rows). What is fastest differs between CPU families: the
same AVX-512 kernel that is level with OpenBLAS on AMD Zen 4 ran at a third
of it on an Intel Ice Lake Xeon (docs/cpu.md). So, like the GPU's per-arch
GEMM table, the choice is measured (``tools/cpu_tune.py``) and written into
``zerostart/kernels/tuning/cpu_gemm.json``; ``zerostart convert`` copies that
table into the bundle (``kernels/cpu/gemm_tuning.json``) and the worker picks
its row at load:

1. a row measured on this CPU (vendor, family and model from ``/proc/cpuinfo``,
   and cache sizes from ``/sys/devices/system/cpu/cpu0/cache``) for the ISA of
   the build that was loaded, whose tile the build has;
2. otherwise the rule of ``default_plan``, from this CPU's cache sizes.

Runtime module: standard library only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from zerostart._records import Frozen
from zerostart.errors import EngineError

_set = object.__setattr__  # a Frozen record's __init__ sets its fields with this
CPUINFO = "/proc/cpuinfo"
CPUINFO_READ_BYTES = 64 * 1024  # the first CPU's block
CACHE_SYSFS = "/sys/devices/system/cpu/cpu0/cache"
TABLE_FORMAT = 1
TILE_NAME = re.compile(r"[a-z0-9]+_[1-9][0-9]*x[1-9][0-9]*\Z")  # "avx2_6x16": ISA_MRxNR
# Bundle-relative file of the table (written by zerostart.kernels.cpu_build at convert).
BUNDLE_TABLE = "kernels/cpu/gemm_tuning.json"

# The rule for CPUs never measured. Sizes when sysfs says nothing: a common x86 core
# (32 KiB L1d, 1 MiB L2).
FALLBACK_L1D_BYTES = 32 * 1024
FALLBACK_L2_BYTES = 1024 * 1024
DEFAULT_KC_RANGE = (128, 768)  # k blocks outside this lost on every CPU measured (docs/cpu.md)
BATCH1_ROWS = 128  # rows of a b1 x 128 product: its whole A should sit in half of L2
# Below this many rows, a product's threads take column ranges (each streams its own part of
# W, the whole of A is small); from it on, row ranges (each packs and keeps its own rows of A).
DEFAULT_COL_SPLIT_ROWS = 512


class CpuIdentity(Frozen):
    """What the tuning table is keyed by. Cache sizes in bytes, per instance (0: unknown).

    Immutable records here are plain classes (``zerostart._records``): this module is on
    the worker's import path.
    """

    __slots__ = ("family", "l1d_bytes", "l2_bytes", "l3_bytes", "model", "model_name", "vendor")
    vendor: str
    family: int
    model: int
    model_name: str
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int

    def __init__(
        self,
        vendor: str = "",
        family: int = -1,
        model: int = -1,
        model_name: str = "",
        l1d_bytes: int = 0,
        l2_bytes: int = 0,
        l3_bytes: int = 0,
    ) -> None:
        _set(self, "vendor", vendor)
        _set(self, "family", family)
        _set(self, "model", model)
        _set(self, "model_name", model_name)
        _set(self, "l1d_bytes", l1d_bytes)
        _set(self, "l2_bytes", l2_bytes)
        _set(self, "l3_bytes", l3_bytes)

    def describe(self) -> str:
        return f"{self.model_name or self.vendor} (family {self.family}, model {self.model})"


class GemmPlan(Frozen):
    """Arguments of zs_gemm_f32 and the thread split, with where they came from.

    ``_replace(**changes)``: a copy with changes (``dataclasses.replace``).
    """

    __slots__ = ("col_split_rows", "kc", "mc", "nc", "pack", "source", "tile")
    tile: str  # e.g. "avx2_6x16": ISA, rows x columns of the register tile
    kc: int  # k block; 0: the kernel's default
    mc: int  # rows of A per block; 0: the kernel's default (half a 1 MiB L2)
    nc: int  # columns of W per packed block; 0: the kernel's default (1 MiB of W)
    pack: bool  # copy W's kc x nc blocks into contiguous panels first, or read W in place
    col_split_rows: int  # threads split columns below this many rows, rows from it on
    source: str  # "measured on …" or "default rule (…)"

    def __init__(
        self, tile: str, kc: int, mc: int, nc: int, pack: bool, col_split_rows: int, source: str
    ) -> None:
        _set(self, "tile", tile)
        _set(self, "kc", kc)
        _set(self, "mc", mc)
        _set(self, "nc", nc)
        _set(self, "pack", pack)
        _set(self, "col_split_rows", col_split_rows)
        _set(self, "source", source)

    @property
    def mr(self) -> int:
        return int(self.tile.rsplit("_", 1)[1].split("x")[0])

    @property
    def nr(self) -> int:
        return int(self.tile.rsplit("_", 1)[1].split("x")[1])


class TuningRow(Frozen):
    """One measured choice: a CPU, the ISA of the build measured, and the plan that won."""

    __slots__ = ("col_split_rows", "cpu", "isa", "kc", "mc", "nc", "pack", "tile")
    cpu: CpuIdentity
    isa: str  # the build's own ISA: the prefix of its first tile ("avx512", "avx2", "v4")
    tile: str
    kc: int
    mc: int
    nc: int
    pack: bool
    col_split_rows: int

    def __init__(
        self,
        cpu: CpuIdentity,
        isa: str,
        tile: str,
        kc: int,
        mc: int,
        nc: int,
        pack: bool,
        col_split_rows: int,
    ) -> None:
        _set(self, "cpu", cpu)
        _set(self, "isa", isa)
        _set(self, "tile", tile)
        _set(self, "kc", kc)
        _set(self, "mc", mc)
        _set(self, "nc", nc)
        _set(self, "pack", pack)
        _set(self, "col_split_rows", col_split_rows)


def _size(text: str) -> int:
    """sysfs cache size ("48K", "1280K", "32768K", "2M") in bytes; 0 when unreadable."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024, "G": 1024**3}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else 0


def cpu_identity(cpuinfo: str = CPUINFO, cache_dir: str = CACHE_SYSFS) -> CpuIdentity:
    """This CPU's vendor, family, model and cache sizes; fields it cannot read stay empty."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, "rb") as f:
            head = f.read(CPUINFO_READ_BYTES).decode("ascii", "replace")
    except OSError:
        head = ""
    for line in head.splitlines():
        if not line.strip():
            break  # end of the first CPU's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    caches: dict[str, int] = {}
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            d = Path(cache_dir, entry)
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            size = _size((d / "size").read_text())
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            caches[f"l{level}"] = size

    def number(key: str) -> int:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else -1

    return CpuIdentity(
        vendor=fields.get("vendor_id", ""),
        family=number("cpu family"),
        model=number("model"),
        model_name=fields.get("model name", ""),
        l1d_bytes=caches.get("l1", 0),
        l2_bytes=caches.get("l2", 0),
        l3_bytes=caches.get("l3", 0),
    )


def default_plan(tiles: tuple[str, ...], cpu: CpuIdentity) -> GemmPlan:
    """The rule for a CPU never measured: the build's first tile, W packed, kc so that
    the 128 x kc block of A of a b1 x 128 product fills half of L2 (rounded to 64, within
    DEFAULT_KC_RANGE; GotoBLAS's rule, Goto & van de Geijn 2008 section 6, would size kc
    for a kc x NR panel in half of L1d, 256 on a 32 KiB L1d, which lost 8-10 % to
    kc 512-768 on Zen 3, and kc 768 was Zen 4's best), mc so that the mc x kc block of A
    fills half of L2; columns split over threads below 512 rows.
    """
    tile = tiles[0]
    mr = int(tile.rsplit("_", 1)[1].split("x")[0])
    l1d = cpu.l1d_bytes or FALLBACK_L1D_BYTES
    l2 = cpu.l2_bytes or FALLBACK_L2_BYTES
    lo, hi = DEFAULT_KC_RANGE
    kc = min(hi, max(lo, l2 // 2 // (4 * BATCH1_ROWS) // 64 * 64))
    mc = max(mr, l2 // 2 // (4 * kc) // mr * mr)
    why = f"default rule (L1d {l1d // 1024} KiB, L2 {l2 // 1024} KiB)"
    return GemmPlan(tile, kc, mc, 0, True, DEFAULT_COL_SPLIT_ROWS, why)


def choose_plan(table: list[TuningRow], tiles: tuple[str, ...], cpu: CpuIdentity) -> GemmPlan:
    """The plan for a build with ``tiles`` (NativeKernels.gemm_f32_tiles) on ``cpu``."""
    isa = tiles[0].split("_", 1)[0]
    for row in table:
        c = row.cpu
        if (
            (c.vendor, c.family, c.model) == (cpu.vendor, cpu.family, cpu.model)
            and row.isa == isa
            and row.tile in tiles
        ):
            return GemmPlan(
                row.tile, row.kc, row.mc, row.nc, row.pack, row.col_split_rows,
                f"measured on {c.describe()}",
            )  # fmt: skip
    return default_plan(tiles, cpu)


def parse_table(data: Any, where: object) -> list[TuningRow]:
    """Rows of a table file's JSON (``{"format": 1, "rows": [...]}``); EngineError when malformed."""
    try:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {TABLE_FORMAT}")
        rows = []
        for r in data["rows"]:
            c = r["cpu"]
            row = TuningRow(
                cpu=CpuIdentity(
                    str(c["vendor"]), int(c["family"]), int(c["model"]), str(c.get("model_name", "")),
                    int(c.get("l1d_bytes", 0)), int(c.get("l2_bytes", 0)), int(c.get("l3_bytes", 0)),
                ),
                isa=str(r["isa"]), tile=str(r["tile"]), kc=int(r["kc"]), mc=int(r["mc"]),
                nc=int(r.get("nc", 0)), pack=bool(r["pack"]), col_split_rows=int(r["col_split_rows"]),
            )  # fmt: skip
            if min(row.kc, row.mc, row.nc, row.col_split_rows) < 0 or not TILE_NAME.match(row.tile):
                raise ValueError(f"row {r} has a negative size or a tile not named ISA_MRxNR")
            rows.append(row)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineError(
            f"{where}: not a CPU GEMM tuning table ({exc!r})",
            hint="write it with `python tools/cpu_tune.py`, or convert the bundle again",
        ) from exc
    return rows


def load_table(path: Path) -> list[TuningRow]:
    """The rows of a tuning table file; none when the file does not exist (older bundles)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise EngineError(f"cannot read the CPU GEMM tuning table {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path}: not JSON ({exc})", hint="convert the bundle again") from exc
    return parse_table(data, path)
