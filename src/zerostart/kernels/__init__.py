"""GPU kernels (Triton) and their ahead-of-time compiler. Build time only.

Nothing here is imported by the worker: ``aot.compile_for_bundle`` writes
cubins, PTX and ``kernels/manifest.json`` into a bundle at convert time, and
``zerostart.engine.cuda`` loads them through libcuda at run time.
"""
