"""``python -m zerostart.imagefs REF MOUNTPOINT ...``: the mount daemon (see ``_daemon.py``)."""

from __future__ import annotations

import sys

from zerostart.imagefs._daemon import main

if __name__ == "__main__":
    sys.exit(main())
