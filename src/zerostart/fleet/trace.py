"""Invocation traces: per-minute counts per application.

Two formats are read unchanged:

- **Azure Functions 2019** (``invocations_per_function_md.anon.dNN.csv`` of Shahrad et al.,
  ATC'20): a header ``HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440`` and one row per
  function with its invocations in each minute of the day. Functions are summed into their
  application (``HashOwner`` + ``HashApp``), the unit that is kept warm or cold; several day
  files are read in the order given and joined into one trace.
- **timestamp,model**: a header ``timestamp,model``, one invocation per row; the timestamp is
  seconds (any origin) or ISO 8601. Times are binned to the minute from the first one.

A :class:`Trace` holds an ``(apps, minutes)`` integer matrix; the simulator places the
invocations of a minute uniformly within it (the Azure trace has no finer resolution).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from zerostart.fleet.errors import TraceError

MINUTES_PER_DAY = 1440
AZURE_KEYS = ("HashOwner", "HashApp", "HashFunction", "Trigger")


@dataclass(frozen=True)
class Trace:
    """``counts[a, m]``: invocations of app ``names[a]`` in minute ``m`` (int64)."""

    names: tuple[str, ...]
    counts: npt.NDArray[np.int64]
    triggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.counts.ndim != 2 or self.counts.shape[0] != len(self.names):
            raise TraceError(
                f"counts shape {self.counts.shape} does not match {len(self.names)} apps"
            )

    @property
    def minutes(self) -> int:
        return int(self.counts.shape[1])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def slice_minutes(self, start: int, stop: int) -> Trace:
        return Trace(self.names, self.counts[:, start:stop], self.triggers)


def _azure_header(path: Path, header: Sequence[str]) -> int:
    if tuple(header[:4]) != AZURE_KEYS or len(header) < 5:
        raise TraceError(
            f"{path}: not an Azure Functions per-minute file (header starts {header[:5]!r})",
            hint="expected HashOwner,HashApp,HashFunction,Trigger,1,...,1440",
        )
    minutes = header[4:]
    if minutes != [str(i) for i in range(1, len(minutes) + 1)]:
        raise TraceError(f"{path}: minute columns must be 1..N in order")
    return len(minutes)


def read_azure(paths: Sequence[str | Path]) -> Trace:
    """Read one or more Azure Functions 2019 day files (in order) into one trace."""
    if not paths:
        raise TraceError("no trace files given")
    per_day: list[dict[str, npt.NDArray[np.int64]]] = []
    triggers: dict[str, str] = {}
    widths: list[int] = []
    for raw in paths:
        path = Path(raw)
        apps: dict[str, npt.NDArray[np.int64]] = {}
        try:
            with path.open(newline="") as f:
                rows = csv.reader(f)
                width = _azure_header(path, next(rows, []))
                for line_no, row in enumerate(rows, start=2):
                    if len(row) != width + 4:
                        raise TraceError(
                            f"{path}:{line_no}: {len(row)} columns, expected {width + 4}"
                        )
                    try:
                        values = np.array(row[4:], dtype=np.int64)
                    except ValueError:
                        raise TraceError(f"{path}:{line_no}: a count is not an integer") from None
                    if (values < 0).any():
                        raise TraceError(f"{path}:{line_no}: negative count")
                    app = f"{row[0]}/{row[1]}"
                    if app in apps:
                        apps[app] += values
                    else:
                        apps[app] = values
                        triggers.setdefault(app, row[3])
        except OSError as exc:
            raise TraceError(f"{path}: {exc.strerror or exc}") from None
        per_day.append(apps)
        widths.append(width)
    names = sorted(set().union(*per_day))
    counts = np.zeros((len(names), sum(widths)), dtype=np.int64)
    col = 0
    for apps, width in zip(per_day, widths, strict=True):
        for i, name in enumerate(names):
            if name in apps:
                counts[i, col : col + width] = apps[name]
        col += width
    return Trace(tuple(names), counts, tuple(triggers[n] for n in names))


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"timestamp {value!r} is neither seconds nor ISO 8601") from None


def read_events(path: str | Path) -> Trace:
    """Read a ``timestamp,model`` CSV (one invocation per row)."""
    p = Path(path)
    times: list[float] = []
    models: list[str] = []
    try:
        with p.open(newline="") as f:
            rows = csv.reader(f)
            header = [h.strip() for h in next(rows, [])]
            if header[:2] != ["timestamp", "model"]:
                raise TraceError(f"{p}: header must be 'timestamp,model', got {','.join(header)!r}")
            for line_no, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise TraceError(f"{p}:{line_no}: expected 'timestamp,model'")
                try:
                    times.append(_seconds(row[0].strip()))
                except ValueError as exc:
                    raise TraceError(f"{p}:{line_no}: {exc}") from None
                models.append(row[1].strip())
    except OSError as exc:
        raise TraceError(f"{p}: {exc.strerror or exc}") from None
    if not times:
        raise TraceError(f"{p}: no invocations")
    t = np.array(times)
    minute = ((t - t.min()) // 60).astype(np.int64)
    names = sorted(set(models))
    index = {n: i for i, n in enumerate(names)}
    rows_idx = np.array([index[m] for m in models])
    counts = np.zeros((len(names), int(minute.max()) + 1), dtype=np.int64)
    np.add.at(counts, (rows_idx, minute), 1)
    return Trace(tuple(names), counts)


def read_trace(paths: Sequence[str | Path]) -> Trace:
    """Read either format, told apart by the first file's header."""
    if not paths:
        raise TraceError("no trace file given")
    try:
        with Path(paths[0]).open(newline="") as f:
            first = f.readline()
    except OSError as exc:
        raise TraceError(f"{paths[0]}: {exc.strerror or exc}") from None
    if first.startswith("HashOwner"):
        return read_azure(paths)
    if len(paths) > 1:
        raise TraceError("several files are only accepted in the Azure per-minute format")
    return read_events(paths[0])


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_azure(
    trace: Trace, directory: str | Path, stem: str = "invocations_per_function_md.anon"
) -> list[Path]:
    """Write ``trace`` as Azure day files ``STEM.d01.csv``...; one function per app."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    days = -(-trace.minutes // MINUTES_PER_DAY)
    files = []
    header = [*AZURE_KEYS, *(str(i) for i in range(1, MINUTES_PER_DAY + 1))]
    for d in range(days):
        block = np.zeros((len(trace.names), MINUTES_PER_DAY), dtype=np.int64)
        part = trace.counts[:, d * MINUTES_PER_DAY : (d + 1) * MINUTES_PER_DAY]
        block[:, : part.shape[1]] = part
        path = out / f"{stem}.d{d + 1:02d}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, name in enumerate(trace.names):
                owner, _, app = name.partition("/")
                if not app:  # a plain model name: hash it into the Azure columns
                    owner, app = _hash(name)[:32], _hash(name)[32:]
                trig = trace.triggers[i] if trace.triggers else "http"
                w.writerow([owner, app, _hash(name + "/f")[:32], trig, *block[i].tolist()])
        files.append(path)
    return files
