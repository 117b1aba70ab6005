"""What every tokenizer returns, and the truncation arithmetic they share.

`Encoding` is the worker's view of `tokenizers.Encoding` (unpadded: the
pipeline pads). `Tokens` is one sequence's tokens before the post-processor
adds its special tokens. `truncate` is `tokenizers`' ``longest_first``
(utils/truncation.rs), with its ``direction``.

Runtime module: standard library only.
"""

from __future__ import annotations

from zerostart._records import Record
from zerostart.errors import TokenizerError

SPECIALS_SINGLE = 2  # [CLS] a [SEP]
SPECIALS_PAIR = 3  # [CLS] a [SEP] b [SEP]
TRUNCATION_DIRECTIONS = ("right", "left")


class Encoding(Record):
    """One encoded input (or pair), unpadded; field meanings follow `tokenizers.Encoding`.

    A plain class (``zerostart._records``): equal when every field is.
    """

    __slots__ = (
        "ids",
        "offsets",
        "sequence_ids",
        "special_tokens_mask",
        "tokens",
        "truncated",
        "type_ids",
        "untruncated_length",
        "word_ids",
    )

    def __init__(
        self,
        ids: list[int],
        type_ids: list[int],
        offsets: list[tuple[int, int]],
        tokens: list[str],
        special_tokens_mask: list[int],
        word_ids: list[int | None],
        sequence_ids: list[int | None],
        truncated: bool,
        untruncated_length: int,
    ) -> None:
        self.ids = ids
        self.type_ids = type_ids
        self.offsets = offsets  # char offsets into the original text (or the pair text)
        self.tokens = tokens
        self.special_tokens_mask = special_tokens_mask  # 1 for the post-processor's specials
        self.word_ids = word_ids  # index of the pre-tokenized word (None for specials)
        self.sequence_ids = sequence_ids  # 0 / 1 / None like tokenizers
        self.truncated = truncated  # True if truncation dropped tokens
        self.untruncated_length = untruncated_length  # with specials, had nothing been cut

    def __len__(self) -> int:
        return len(self.ids)


class Tokens(Record):
    """One sequence's tokens before the post-processor: parallel lists.

    ``offsets`` are character offsets into the sequence's original text.
    """

    __slots__ = ("ids", "offsets", "tokens", "word_ids")

    def __init__(
        self,
        ids: list[int],
        tokens: list[str],
        offsets: list[tuple[int, int]],
        word_ids: list[int | None],
    ) -> None:
        self.ids = ids
        self.tokens = tokens
        self.offsets = offsets
        self.word_ids = word_ids

    def cut(self, n: int, direction: str = "right") -> None:
        """Keep ``n`` tokens: the first ones (``right``) or the last ones (``left``)."""
        if direction == "right":
            del self.ids[n:], self.tokens[n:], self.offsets[n:], self.word_ids[n:]
        else:
            drop = len(self.ids) - n
            del self.ids[:drop], self.tokens[:drop], self.offsets[:drop], self.word_ids[:drop]


def budget(max_length: int, n_specials: int) -> int:
    """Tokens left for the text(s) once the post-processor's specials are counted."""
    if max_length < n_specials:
        raise TokenizerError(
            f"max_length {max_length} leaves no room for the {n_specials} special tokens"
        )
    return max_length - n_specials


def longest_first(n1: int, n2: int, room: int) -> tuple[int, int]:
    """Lengths after tokenizers' `longest_first` truncation (its exact arithmetic).

    The shorter sequence keeps everything if the longer one can absorb the cut;
    otherwise both get half the room and the odd token goes to the longer one
    (to the second one when they are equally long).
    """
    swap = n1 > n2
    short, long_ = (n2, n1) if swap else (n1, n2)
    long_ = short if short > room else max(short, room - short)
    if short + long_ > room:
        short = room // 2
        long_ = short + room % 2
    return (long_, short) if swap else (short, long_)


def truncate(a: Tokens, b: Tokens | None, room: int, direction: str = "right") -> bool:
    """Cut ``a`` (and ``b``) to ``room`` tokens in all, ``longest_first``; True if anything went."""
    n1 = len(a.ids)
    n2 = len(b.ids) if b is not None else 0
    if n1 + n2 <= room:
        return False
    if b is None:
        a.cut(room, direction)
        return True
    k1, k2 = longest_first(n1, n2, room)
    a.cut(k1, direction)
    b.cut(k2, direction)
    return True
