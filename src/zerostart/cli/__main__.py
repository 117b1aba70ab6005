"""``python -m zerostart.cli``: the same as the ``zerostart`` command."""

import sys

from zerostart.cli.main import main

sys.exit(main())
