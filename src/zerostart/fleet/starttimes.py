"""Start-path times, read from the benchmark results in ``bench/results/`` (never typed in).

Which file gives which path:

- ``cold_boot``: ``coldstart_cpu.json``, every model's ``page_cache_warm.zerostart.runs_s``
  (exec -> first correct answer).
- ``snapshot``: ``snapshot_cpu.json``, ``zerostart_cpu.restore_s`` (it records min, median and
  max only; those three are the samples).
- ``warm_slot``: a ``platform*.json`` (the platform issue's benchmark) when one is present and
  holds a ``warm_slot`` entry with ``runs_s`` or ``median_s``; otherwise derived from the cold
  boot: each cold-boot sample times the share of the worker's phases that a warm slot still
  pays (everything after ``interpreter`` and ``imports``), and :attr:`StartTimes.notes` says so.
- ``exec_s`` (one request's service time): ``warm_cpu.json``, ``latency_b1x128.zerostart_numpy``
  median of the MiniLM models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from zerostart.fleet.errors import FleetError

SLOT_PAID_PHASES = ("interpreter", "imports")  # what a warm slot has already paid (issue 10)


@dataclass(frozen=True)
class StartTimes:
    """Samples (seconds) per start path, and the service time of one request."""

    samples: dict[str, npt.NDArray[np.float64]]
    exec_s: float
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def median(self, path: str) -> float:
        return float(np.median(self.samples[path]))

    def draw(self, path: str, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        """``n`` draws from the measured samples (the empirical distribution)."""
        return rng.choice(self.samples[path], size=n, replace=True)

    def describe(self) -> dict[str, Any]:
        return {
            "paths": {
                k: {"median_s": self.median(k), "n": int(v.size), "source": self.sources.get(k, "")}
                for k, v in self.samples.items()
            },
            "exec_s": self.exec_s,
            "notes": list(self.notes),
        }

    @classmethod
    def fixed(cls, exec_s: float = 0.05, **paths: float) -> StartTimes:
        """Constant times (for a scenario whose start paths are given, e.g. a unit test)."""
        return cls({k: np.array([float(v)]) for k, v in paths.items()}, exec_s)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path}: cannot read benchmark result: {exc}") from None


def _walk(obj: Any, key: str) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _samples(entry: Any) -> list[float]:
    if isinstance(entry, dict):
        for k in ("runs_s", "samples_s"):
            if isinstance(entry.get(k), list):
                return [float(x) for x in entry[k]]
        for k in ("median_s", "median"):
            if isinstance(entry.get(k), int | float):
                return [float(entry[k])]
        # bench/platform_gateway.py and platform_start.py: {"first_answer_ms": {min, median, max}}
        ms = entry.get("first_answer_ms")
        if isinstance(ms, dict):
            return [
                float(ms[k]) / 1e3
                for k in ("min", "median", "max")
                if isinstance(ms.get(k), int | float)
            ]
    return []


def load_start_times(results: str | Path = "bench/results") -> StartTimes:
    """Read the start-path distributions from ``results``; raises :class:`FleetError` if absent."""
    root = Path(results)
    cold_file, snap_file, warm_file = (
        root / "coldstart_cpu.json", root / "snapshot_cpu.json", root / "warm_cpu.json",
    )  # fmt: skip
    if not cold_file.exists():
        raise FleetError(
            f"{cold_file}: no cold-start benchmark result",
            hint="run `python bench/coldstart.py` or pass --results DIR",
        )
    cold = _load(cold_file)
    boots: list[float] = []
    paid: list[float] = []
    for model in cold.get("models", {}).values():
        z = model.get("page_cache_warm", {}).get("zerostart", {})
        boots += [float(x) for x in z.get("runs_s", [])]
        phases = z.get("phases_s", {})
        total = sum(phases.values())
        if total > 0:
            paid.append(sum(phases.get(k, 0.0) for k in SLOT_PAID_PHASES) / total)
    if not boots:
        raise FleetError(f"{cold_file}: no page_cache_warm.zerostart.runs_s samples")
    samples = {"cold_boot": np.array(boots)}
    sources = {"cold_boot": cold_file.name}
    notes: list[str] = []
    if snap_file.exists():
        r = _load(snap_file).get("zerostart_cpu", {}).get("restore_s", {})
        pts = [float(r[k]) for k in ("min", "median", "max") if isinstance(r.get(k), int | float)]
        if pts:
            samples["snapshot"] = np.array(pts)
            sources["snapshot"] = f"{snap_file.name} (min, median, max)"
    warm: list[float] = []
    for pf in sorted(root.glob("platform*.json")):
        for entry in _walk(_load(pf), "warm_slot"):
            warm += _samples(entry)
        if warm:
            sources["warm_slot"] = pf.name
            break
    if not warm:
        share = 1.0 - float(np.mean(paid)) if paid else 1.0
        warm = [b * share for b in boots]
        sources["warm_slot"] = f"{cold_file.name} x {share:.2f} (derived)"
        notes.append(
            "no platform*.json with a warm_slot time among the results: "
            f"warm slot = cold boot x {share:.2f}, the share of the worker's phases "
            "after interpreter and imports (coldstart_cpu.json phases_s)"
        )
    samples["warm_slot"] = np.array(warm)
    if "snapshot" not in samples:
        notes.append(f"no {snap_file.name}: the snapshot path falls back to the warm slot's times")
        samples["snapshot"] = samples["warm_slot"]
    exec_s = 0.05
    if warm_file.exists():
        lat = [
            float(m["latency_b1x128"]["zerostart_numpy"]["median_s"])
            for name, m in _load(warm_file).get("models", {}).items()
            if name.startswith("minilm") and "latency_b1x128" in m
        ]
        if lat:
            exec_s = float(np.median(lat))
    else:
        notes.append(f"no {warm_file.name}: one request's service time taken as {exec_s} s")
    return StartTimes(samples, exec_s, sources, tuple(notes))
