"""Where a worker's start-up time goes, phase by phase.

Phases, in order, each the time since the previous one ended:

``interpreter``
    Process creation (fork) to the first line of ``zerostart.serve.__main__``:
    the exec, interpreter start, ``site``, and importing the ``zerostart`` and
    ``zerostart.serve`` package ``__init__`` files. Read from the kernel: field 22
    of ``/proc/self/stat`` (start time in clock ticks since boot) against
    ``clock_gettime(CLOCK_BOOTTIME)`` (the same clock, in ns). The kernel keeps
    the start time in ticks (``SC_CLK_TCK``, usually 100 Hz), so this phase has
    10 ms resolution and reads up to 10 ms long. ``/proc/stat``'s ``btime`` is
    not used: it has 1 s resolution. ``None`` where ``/proc`` is missing.
``imports``
    Importing the server, the pipeline and their dependencies (numpy...).
``bundle_map``, ``tokenizer``, ``engine``, ``warmup``
    As reported by ``Pipeline.load`` / measured around ``Pipeline.warmup`` (the
    first batch is ready when warmup ends).
``listening``
    Starting the batcher thread and binding the listening socket.

Runtime module: standard library only.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any


def process_age_s() -> float | None:
    """Seconds since the kernel created this process (10 ms resolution), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # Field 2 (comm) may contain spaces or parentheses: split after its last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of the whole line
        ticks_per_s = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks_per_s
    except (OSError, ValueError, IndexError):
        return None


class Startup:
    """Phase durations in seconds, recorded as the worker comes up."""

    def __init__(self, *, interpreter_s: float | None, mode: str = "boot") -> None:
        self.mode = mode  # "boot" (this process loaded the model) or "restore" (a snapshot)
        self.phases: dict[str, float] = {}
        if interpreter_s is not None:
            self.phases["interpreter"] = interpreter_s
        self._begin = self._last = time.perf_counter()
        self._gc_paused = False

    @classmethod
    def begin(cls, *, pause_gc: bool = False) -> Startup:
        """Call first thing in the entry point: the interpreter phase ends here.

        ``pause_gc``: turn the cyclic garbage collector off until :meth:`resume_gc`.
        Start-up allocates tens of thousands of long-lived objects (modules, classes,
        functions, the vocabulary) and no garbage cycles worth collecting; the
        collector would walk them again and again (generation 0 every 700 new
        container objects). Measured on the worker's imports: 3-6 % less CPU
        (bench/startup_gc.py, docs/cpu.md).
        """
        startup = cls(interpreter_s=process_age_s())
        if pause_gc and gc.isenabled():
            gc.disable()
            startup._gc_paused = True
        return startup

    def resume_gc(self) -> None:
        """End a pause begun by ``begin(pause_gc=True)``; a no-op otherwise.

        What start-up made is moved to the permanent generation first
        (``gc.freeze``), so later collections, while serving, do not walk it either.
        """
        if self._gc_paused:
            self._gc_paused = False
            gc.freeze()
            gc.enable()

    def mark(self, phase: str) -> float:
        """End ``phase`` now; returns its duration."""
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now
        return self.phases[phase]

    def add(self, phases: dict[str, float]) -> None:
        """Record phases measured elsewhere (Pipeline.load) that just ended."""
        for name, seconds in phases.items():
            self.phases[name] = float(seconds)
        self._last = time.perf_counter()

    @property
    def total_s(self) -> float:
        """Process creation to the last phase's end, by the clock (gaps between phases included)."""
        return self.phases.get("interpreter", 0.0) + (self._last - self._begin)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "total_s": round(self.total_s, 6),
            "interpreter_resolution_s": 1 / os.sysconf("SC_CLK_TCK"),
        }
