"""Converting a Hugging Face folder into a bundle (build time), and the canary bundle.

The bundle format itself (manifest, weights file, engine layout, kernels
manifest, opening a bundle) is the leaf package ``zerostart.bundle``, which
the worker imports without this package. ``zerostart.model.convert.convert``
is imported explicitly from its module.
"""
