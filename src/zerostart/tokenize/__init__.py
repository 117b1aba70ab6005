"""The worker's tokenizer: BERT WordPiece with exact Hugging Face `tokenizers` parity.

Pure Python (standard library only), so the worker image carries no tokenizer
wheel. Build-time helpers that read a `tokenizer.json` live in
`zerostart.tokenize.hf` and are not imported here.
"""

from zerostart.tokenize._tokenizer import Encoding, WordPieceTokenizer

__all__ = ["Encoding", "WordPieceTokenizer"]
