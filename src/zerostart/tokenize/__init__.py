"""The worker's tokenizers, with exact Hugging Face `tokenizers` parity.

* ``WordPieceTokenizer``: BERT / DistilBERT (tokenizer.bin mapped, or vocab.txt), a
  hand-tuned path;
* ``Tokenizer``: any other kind assembled from `tokenizers`' parts (SentencePiece
  Unigram for the XLM-R family; the stages and how a model plugs in are in
  ``_base.py``), over the tables ``zerostart convert`` compiled into
  ``tokenizer.bin`` and the worker maps;
* ``load_tokenizer``: the right one for a bundle.

Standard library only, so the worker image carries no tokenizer wheel; the
Unigram segmentation and the byte-level BPE split and merges also run in C
when the bundle carries ``tokenizer.so``
(compiled by ``zerostart convert``, loaded with ctypes: ``_native.py``), with
the same answers either way. Build-time helpers that read a `tokenizer.json` live in
``zerostart.tokenize.hf`` (WordPiece) and ``zerostart.tokenize.compile`` (the
rest) and are not imported here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zerostart.tokenize._encoding import Encoding
from zerostart.tokenize._tokenizer import WordPieceTokenizer
from zerostart.tokenize._wpvocab import write_wordpiece_tables  # convert's, and the canary's

if TYPE_CHECKING:
    from zerostart.bundle.manifest import TokenizerSettings
    from zerostart.tokenize._pipeline import Tokenizer

__all__ = [
    "Encoding",
    "Tokenizer",
    "WordPieceTokenizer",
    "load_tokenizer",
    "write_wordpiece_tables",
]


def __getattr__(name: str) -> Any:
    # The assembled tokenizer's modules load on first use: a WordPiece worker's
    # cold start does not import them.
    if name == "Tokenizer":
        from zerostart.tokenize._pipeline import Tokenizer

        return Tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_tokenizer(
    bundle_dir: str | os.PathLike[str], settings: TokenizerSettings, *, tables: bool = False
) -> WordPieceTokenizer | Tokenizer:
    """The tokenizer of a bundle folder: its mapped tokenizer.bin, else (WordPiece) vocab.txt.

    ``tables``: a WordPiece bundle lists tokenizer.bin in its manifest (convert
    writes it since issue 19; older bundles have vocab.txt only). Raises
    TokenizerError naming the file if it is missing or unusable.
    """
    if settings.model == "WordPiece":
        if tables:
            return WordPieceTokenizer.from_tables(
                os.path.join(bundle_dir, "tokenizer.bin"), settings
            )
        return WordPieceTokenizer.from_files(os.path.join(bundle_dir, "vocab.txt"), settings)
    from zerostart.tokenize._pipeline import Tokenizer

    return Tokenizer.from_bundle(bundle_dir, settings.spec)
