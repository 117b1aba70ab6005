"""Inference engines: run a bundle's encoder and task head on a batch of token ids.

``CpuEngine`` (numpy) lives in ``zerostart.engine.cpu``; the tensor names and
shapes every engine reads are the bundle format's (``zerostart.bundle.layout``),
which this package imports and never the converter (``zerostart.model``).
Import the engine module you use: this package imports nothing, so that, e.g.,
``cpu_native`` stays free of numpy.
"""
