"""Inference engines: run a bundle's encoder and task head on a batch of token ids.

``CpuEngine`` (numpy) lives in ``zerostart.engine.cpu``; the tensor names and
shapes every engine reads are in ``zerostart.bundle.layout``. Import the engine
module you use: this package imports nothing so that, e.g., ``layout`` stays
free of numpy.
"""
