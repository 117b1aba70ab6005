"""The `zerostart` command line: one module per verb group.

    main.py      the parser, convert, info, bench, serve; error display
    image.py     build, inspect, run
    registry.py  push, pull
    snapshot.py  snapshot, restore, snapshots
    platform.py  up (the gateway)

Nothing in the library imports this package; it imports the library lazily,
per command, so `zerostart --help` is instant.
"""

from __future__ import annotations

from zerostart.cli.main import main

__all__ = ["main"]
