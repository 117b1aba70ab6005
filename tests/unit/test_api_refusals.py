"""Token ids sent as input are checked against the vocabulary before they reach the engine.

A real converted embedding model. A negative id is the dangerous one: Python
and numpy index from the end, so without the check ``-1`` would silently embed
the last vocabulary entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from zerostart.errors import TokenizerError
from zerostart.pipeline import Pipeline


@pytest.fixture(scope="module")
def embed(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-embed"))


@pytest.mark.parametrize("bad", [-1, -30522, 30522, 10**9])
def test_token_ids_outside_the_vocabulary_are_refused(embed: Pipeline, bad: int) -> None:
    job = embed.prepare("embed", {"inputs": [101, 2023, 102]})  # control: in range
    assert len(job.finish(embed.execute(job.encodings))[0]) == 384
    with pytest.raises(TokenizerError) as info:  # the server's 422 "Tokenizer" (TEI's class)
        embed.prepare("embed", {"inputs": [101, bad, 102]})
    assert f"token id {bad} is outside the vocabulary (0..30521)" in str(info.value)
