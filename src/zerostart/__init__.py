"""zerostart: serverless BERT-family inference with sub-second cold starts.

The package root stays import-free on purpose: `python -m zerostart.serve` is the
cold-start path and must not pay for anything it does not use.
"""

__version__ = "0.1.0"
