"""Dry run of the GPU session on a machine without a GPU (scripts/gpu_session.sh, docs/gpu.md).

On PYTHONPATH only when ``ZEROSTART_GPU_DRYRUN=1``: Python imports this module
at start-up in every process of the session (tests, benchmark children, traced
workers), and ``Driver.load()`` then returns tests/fake_libcuda.py's fake
instead of opening libcuda.so.1. Every step runs its real code up to the
numbers, which the fake cannot produce (its kernels compute nothing), and the
maps check, which looks for a libcuda that is not there. Never in an image.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

try:
    from fake_libcuda import FakeCuda
    from zerostart.engine.cuda import driver as _driver
except ImportError:  # a process without zerostart on its path (pip, tools): leave it alone
    pass
else:
    _FAKE = FakeCuda()

    def _load(cls: type, path: str = _driver.LIBCUDA) -> _driver.Driver:
        return _driver.Driver(_FAKE)

    _driver.Driver.load = classmethod(_load)  # type: ignore[assignment,method-assign]
