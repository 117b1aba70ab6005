"""How a worker learns that it was restored from a snapshot, for its ``/info``.

A restored process is a byte-for-byte copy of the frozen one, so nothing in its
memory can say "restored". Two things outside its memory do:

1. The kernel's start time of the process (field 22 of ``/proc/self/stat``):
   CRIU recreates the task, so the start time is the restore's, not the
   boot's. A worker records ``start_ticks()`` once at boot; if a later call
   returns something else, the process was restored since.
2. ``$ZEROSTART_SNAPSHOT_DIR/restore.json``: ``zerostart snapshot`` puts the
   snapshot folder into the command's environment, and ``zerostart restore``
   writes this file (when, and the time of each restore phase) before it hands
   the process back.

Usage in a worker (standard library only, no import cost beyond ``json``)::

    boot = marker.start_ticks()          # at boot
    ...
    info = marker.restore_info(boot)     # on /info: None if booted, else a dict
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

SNAPSHOT_DIR_ENV = "ZEROSTART_SNAPSHOT_DIR"
RESTORE_INFO_NAME = "restore.json"


def start_ticks(pid: int | str = "self") -> int | None:
    """The kernel's start time of a process, in clock ticks since boot; None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# How far apart the restorer's clock reading and ours may be and still name the same
# restore: the restorer writes its file ~0.1 s after the process is recreated.
SAME_RESTORE_WINDOW_S = 5.0


def _is_this_restore(recorded: dict[str, Any], now_ticks: int) -> bool:
    """Does the restorer's file describe the restore that made this process?

    CRIU restores a process into a time namespace whose boot-time clock continues
    the frozen one, so the start time the restorer reads from outside differs
    from ours. Wall-clock time is the same on both sides: we compute when this
    process was (re)created from our own clocks and compare.
    """
    epoch = recorded.get("restored_at_epoch_s")
    if not isinstance(epoch, int | float):
        return False
    created_ago_s = time.clock_gettime(time.CLOCK_BOOTTIME) - now_ticks / os.sysconf("SC_CLK_TCK")
    created_wall_s = time.time() - created_ago_s
    return abs(float(epoch) - created_wall_s) <= SAME_RESTORE_WINDOW_S


def restore_info(boot_ticks: int | None) -> dict[str, Any] | None:
    """None if this process was booted; else what the restorer recorded (at least ``mode``).

    The restorer's file is trusted only if it names this process's current
    start time, so a stale file from an earlier restore is not misread.
    """
    now = start_ticks()
    if boot_ticks is None or now is None or now == boot_ticks:
        return None
    info: dict[str, Any] = {"mode": "restore"}
    folder = os.environ.get(SNAPSHOT_DIR_ENV)
    if folder:
        try:
            with open(os.path.join(folder, RESTORE_INFO_NAME), encoding="utf-8") as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and _is_this_restore(recorded, now):
            info.update(recorded)
    return info
