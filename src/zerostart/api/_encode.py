"""Texts, text pairs and token ids -> encodings the engine runs, within the model's limits.

Runtime module: standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zerostart.api._parse import Truncation, check_length, invalid
from zerostart.tokenize import Encoding

if TYPE_CHECKING:
    from zerostart.api._model import Model

# Refuse (or, with ``truncate``, cut) absurdly long texts before the pure-Python
# tokenizer spends time on them. TEI does the same with 250 characters per token;
# 64 is still ~10x what any real text needs per token and bounds our CPU cost.
MAX_INPUT_CHARS_PER_TOKEN = 64

Item = str | tuple[str, str] | list[int]


def encode(pipe: Model, items: Sequence[Item], truncate: Truncation) -> list[Encoding]:
    """One encoding per item: a text, a (text, pair) tuple, or token ids used as given.

    Raises InputError (422) for a text over the character or token limit without
    ``truncate``, TokenizerError (422) for a token id outside the vocabulary.
    """
    limit = pipe.manifest.max_length
    max_chars = limit * MAX_INPUT_CHARS_PER_TOKEN
    left = truncate.left
    out: list[Encoding] = []
    for i, item in enumerate(items):
        if isinstance(item, list):
            out.append(ids_encoding(pipe, item, limit if truncate.enabled else None, left=left))
            continue
        chars = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
        if chars > max_chars:
            if not truncate.enabled:
                raise invalid(
                    f"input {i} has {chars} characters, over this model's limit of "
                    f'{max_chars}; shorten it or send "truncate": true'
                )
            # TEI keeps the first characters whatever the direction; keeping the last
            # ones for "left" is what that direction asks for.
            item = (
                _cut(item, max_chars, left)
                if isinstance(item, str)
                else (_cut(item[0], max_chars // 2, left), _cut(item[1], max_chars // 2, left))
            )
        pair = None if isinstance(item, str) else item[1]
        first = item if isinstance(item, str) else item[0]
        out.append(pipe.tokenizer.encode(first, pair, max_length=limit, left=left))
    check_length(out, limit, truncate)
    return out


def _cut(text: str, chars: int, left: bool) -> str:
    return text[max(0, len(text) - chars) :] if left else text[:chars]


def ids_encoding(
    pipe: Model, ids: list[int], max_length: int | None, *, left: bool = False
) -> Encoding:
    """Token ids as the sequence itself: no [CLS]/[SEP] added (TEI and OpenAI's reading).

    With ``max_length``, longer sequences keep their first (``left``: last)
    ``max_length`` ids. Raises TokenizerError for an id outside the vocabulary.
    """
    tok = pipe.tokenizer
    tokens = [tok.id_to_token(i) for i in ids]  # raises for an unknown id
    full = len(ids)
    if max_length is not None and full > max_length:
        keep = slice(full - max_length, None) if left else slice(max_length)
        ids, tokens = ids[keep], tokens[keep]
    n = len(ids)
    return Encoding(
        ids=list(ids),
        type_ids=[0] * n,
        offsets=[(0, 0)] * n,
        tokens=tokens,
        special_tokens_mask=[0] * n,
        word_ids=[None] * n,
        sequence_ids=[0] * n,
        truncated=n < full,
        untruncated_length=full,
    )


def byte_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character offsets -> UTF-8 byte offsets (TEI's ``start``/``stop`` are bytes)."""
    if text.isascii():
        return list(offsets)
    starts = [0] * (len(text) + 1)
    pos = 0
    for i, ch in enumerate(text):
        starts[i] = pos
        pos += len(ch.encode("utf-8", "surrogatepass"))
    starts[len(text)] = pos
    return [(starts[a], starts[b]) for a, b in offsets]
