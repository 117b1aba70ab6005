"""What the routes read of a loaded model: the interface between ``api`` and the pipeline.

``zerostart.pipeline.Pipeline`` satisfies it (checked by mypy where the pipeline
hands itself to :func:`zerostart.api.prepare`); ``api`` never imports the
pipeline, so the two packages do not form an import circle (issue 22).

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zerostart.bundle.manifest import Manifest
    from zerostart.tasks.heads import Heads
    from zerostart.tokenize import Tokenizer, WordPieceTokenizer


class Model(Protocol):
    """A model ready to answer: its manifest, tokenizer, heads and request limits."""

    manifest: Manifest
    tokenizer: WordPieceTokenizer | Tokenizer
    heads: Heads
    routes: frozenset[str]  # the inference routes it serves (``routes_for``)
    auto_truncate: bool  # truncate over-long inputs when a request does not say
    max_client_batch_size: int  # most inputs in one request (TEI's limit)

    @property
    def model_id(self) -> str:
        """The name clients see (``/info``, OpenAI's ``model``)."""
        ...
