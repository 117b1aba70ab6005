"""The bundle format: what ``zerostart convert`` writes and the worker reads, in one leaf.

Both sides import these modules, and they import nothing of zerostart but
``errors`` and ``paths``, so the converter (``zerostart.model``), the kernel
compiler (``zerostart.kernels``), the tokenizer and the engines never import
one another for a format fact (docs/bundle.md):

* ``manifest``: ``manifest.json`` (``Manifest``, ``ModelConfig``, ``TokenizerSettings``,
  the bundle's file names);
* ``weights``: the aligned safetensors file, written and mapped (``Weights``);
* ``layout``, ``deberta_layout``, ``modernbert_layout``: the engine layout, which
  tensors the weights hold and their shapes;
* ``launch``: ``kernels/manifest.json`` of GPU bundles (``KernelManifest``) and its
  launch rules (grid formulas, variant selection, shape buckets);
* ``folder``: a bundle folder opened, checked against its manifest and mapped (``Bundle``).

Import the module you use: this package imports nothing, so that reading a
manifest does not map weights or hash files (the worker's cold-start path).
"""
