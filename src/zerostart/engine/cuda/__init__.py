"""The GPU engine: ahead-of-time compiled kernels launched through libcuda only.

No CUDA library but the driver (``libcuda.so.1``) is opened, and only when an
engine is created: importing this package loads nothing but the standard
library, not even numpy (a unit test pins that). See docs/gpu.md. The kernels
manifest a GPU bundle carries is the bundle format's: ``zerostart.bundle.launch``.
"""

from zerostart.engine.cuda.driver import CudaError, Driver, DriverNotFound
from zerostart.engine.cuda.engine import CudaEngine

__all__ = ["CudaEngine", "CudaError", "Driver", "DriverNotFound"]
