"""Post-processors: the special tokens and type ids around one sequence or a pair.

``Template`` is tokenizers' ``TemplateProcessing`` (any template of special
tokens and ``$A`` / ``$B`` with type ids; BERT's and XLM-R's are instances) and
``Roberta`` its ``RobertaProcessing`` (``<s> A </s></s> B </s>``, type ids all
0, offsets trimmed of whitespace when ``trim_offsets``). Both are applied after
truncation, which needs ``added(pair)``: how many special tokens they add.

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import Any

from zerostart.errors import TokenizerError
from zerostart.tokenize._encoding import Encoding, Tokens
from zerostart.tokenize._normalize import _SPACE

# ByteLevel's stand-in for the space byte (GPT-2's byte-to-unicode map: 0x20 -> U+0120).
BYTE_LEVEL_SPACE = "\u0120"

# One template item: ("special", token name, type id) or ("sequence", 0 for A / 1 for B, type id).
Item = tuple[str, Any, int]


class Template:
    """TemplateProcessing: ``single`` / ``pair`` item lists and the special tokens' ids."""

    def __init__(
        self,
        single: list[Item],
        pair: list[Item],
        specials: dict[str, tuple[list[int], list[str]]],
    ) -> None:
        for name in {i[1] for i in (*single, *pair) if i[0] == "special"}:
            if name not in specials:
                raise TokenizerError(f"template special token {name!r} has no ids")
            ids, tokens = specials[name]
            if len(ids) != len(tokens):
                raise TokenizerError(f"template special token {name!r}: ids and tokens differ")
        self._single, self._pair, self._specials = single, pair, specials
        # Each template as runs: the specials between two sequences merged into one block
        # whose seven lists are built here, once (the worker's hot path: a short text's
        # encode spent a third of its post-processing building [(0, 0)] * n and the like).
        self._plans = (self._plan(single), self._plan(pair))
        self._added = (self._count(single), self._count(pair))

    def _count(self, items: list[Item]) -> int:
        return sum(len(self._specials[i[1]][0]) for i in items if i[0] == "special")

    def _plan(self, items: list[Item]) -> list[tuple[Any, ...]]:
        plan: list[tuple[Any, ...]] = []
        for kind, what, type_id in items:
            if kind != "special":
                plan.append(("sequence", what, type_id))
                continue
            ids, tokens = self._specials[what]
            n = len(ids)
            block = (list(ids), list(tokens), [(0, 0)] * n, [1] * n, [None] * n, [type_id] * n)
            if plan and plan[-1][0] == "special":
                block = tuple(x + y for x, y in zip(plan[-1][1:], block, strict=True))
                plan.pop()
            plan.append(("special", *block))
        return plan

    def added(self, pair: bool) -> int:
        return self._added[pair]

    def apply(self, a: Tokens, b: Tokens | None, *, truncated: bool, untruncated: int) -> Encoding:
        enc = Encoding([], [], [], [], [], [], [], truncated, untruncated)
        for part in self._plans[b is not None]:
            if part[0] == "special":
                _, ids, tokens, offsets, mask, nones, types = part
                enc.ids += ids
                enc.tokens += tokens
                enc.offsets += offsets
                enc.special_tokens_mask += mask
                enc.word_ids += nones
                enc.sequence_ids += nones
                enc.type_ids += types
                continue
            _, what, type_id = part
            seq = a if what == 0 else b
            if seq is None:
                continue
            n = len(seq.ids)
            enc.ids += seq.ids
            enc.tokens += seq.tokens
            enc.offsets += seq.offsets
            enc.special_tokens_mask += [0] * n
            enc.word_ids += seq.word_ids
            enc.sequence_ids += [what] * n
            enc.type_ids += [type_id] * n
        return enc


class Roberta:
    """RobertaProcessing: ``cls A sep`` / ``cls A sep sep B sep``, type ids 0."""

    def __init__(
        self, cls: tuple[str, int], sep: tuple[str, int], trim_offsets: bool, add_prefix_space: bool
    ) -> None:
        self._cls, self._sep = cls, sep
        self._trim, self._prefix_space = trim_offsets, add_prefix_space
        c, s = ("special", "cls", 0), ("special", "sep", 0)
        specials = {"cls": ([cls[1]], [cls[0]]), "sep": ([sep[1]], [sep[0]])}
        a, b = ("sequence", 0, 0), ("sequence", 1, 0)
        self._template = Template([c, a, s], [c, a, s, s, b, s], specials)

    def added(self, pair: bool) -> int:
        return 4 if pair else 2

    def apply(self, a: Tokens, b: Tokens | None, *, truncated: bool, untruncated: int) -> Encoding:
        if self._trim:
            for seq in (a, b):
                if seq is not None:
                    seq.offsets = trim_offsets(seq.tokens, seq.offsets, self._prefix_space)
        return self._template.apply(a, b, truncated=truncated, untruncated=untruncated)


def _is_space(ch: str) -> bool:
    return ch == BYTE_LEVEL_SPACE or ord(ch) in _SPACE


# Distinct token strings whose space runs are memoised (cleared when full).
SPACE_RUNS_CACHE_TOKENS = 65536
_NO_SPACE = (0, 0)


class _SpaceRuns(dict[str, tuple[int, int]]):
    """Per token string: (leading, trailing) count of spaces (``Ġ`` or whitespace)."""

    def __missing__(self, token: str) -> tuple[int, int]:
        if len(self) >= SPACE_RUNS_CACHE_TOKENS:
            self.clear()
        n = len(token)
        lead = 0
        while lead < n and _is_space(token[lead]):
            lead += 1
        trail = 0
        while trail < n and _is_space(token[n - 1 - trail]):
            trail += 1
        runs = self[token] = (lead, trail) if lead or trail else _NO_SPACE
        return runs


_SPACE_RUNS = _SpaceRuns()


def _trim(start: int, end: int, lead: int, trail: int) -> tuple[int, int]:
    start = min(start + lead, end)
    if trail and end >= trail:
        end = max(end - trail, start)
    return start, end


def trim_offsets(
    tokens: list[str], offsets: list[tuple[int, int]], add_prefix_space: bool
) -> list[tuple[int, int]]:
    """tokenizers' byte_level ``process_offsets``: offsets without leading/trailing spaces.

    A token's leading spaces (``Ġ`` or whitespace) move its start right, its
    trailing ones its end left; the single leading space that
    ``add_prefix_space`` added to the first token (index 0, or starting at
    character 0) is kept. One comprehension over memoised per-token counts: a
    per-token loop was half of a RoBERTa encode.
    """
    runs = list(map(_SPACE_RUNS.__getitem__, tokens))
    # _trim inlined (a call per token costs as much as the rest of this line)
    out = [
        se
        if r is _NO_SPACE
        else (
            start := s if (s := se[0] + r[0]) < se[1] else se[1],
            se[1] if not r[1] or se[1] < r[1] else max(se[1] - r[1], start),
        )
        for se, r in zip(offsets, runs, strict=True)
    ]
    if add_prefix_space:
        for i, (start, end) in enumerate(offsets):
            if i and start:
                break  # offsets only grow: no later token starts at 0
            if runs[i][0] == 1:
                out[i] = _trim(start, end, 0, runs[i][1])
    return out


def build_post_processor(spec: dict[str, Any] | None) -> Template | Roberta:
    """The post-processor of a ``tokenizer.json`` entry; TokenizerError for another kind."""
    kind = spec.get("type") if isinstance(spec, dict) else spec
    if isinstance(spec, dict) and kind == "TemplateProcessing":

        def items(raw: list[dict[str, Any]]) -> list[Item]:
            out: list[Item] = []
            for entry in raw:
                ((what, body),) = entry.items()
                if what == "SpecialToken":
                    out.append(("special", str(body["id"]), int(body["type_id"])))
                elif what == "Sequence" and body["id"] in ("A", "B"):
                    out.append(("sequence", 0 if body["id"] == "A" else 1, int(body["type_id"])))
                else:
                    raise TokenizerError(f"template item {entry!r}")
            return out

        specials = {
            str(name): ([int(i) for i in v["ids"]], [str(t) for t in v["tokens"]])
            for name, v in spec.get("special_tokens", {}).items()
        }
        return Template(items(spec["single"]), items(spec["pair"]), specials)
    if isinstance(spec, dict) and kind in ("RobertaProcessing", "BertProcessing"):
        (cls_token, cls_id), (sep_token, sep_id) = spec["cls"], spec["sep"]
        cls, sep = (str(cls_token), int(cls_id)), (str(sep_token), int(sep_id))
        if kind == "BertProcessing":  # [CLS] A [SEP] B [SEP], B's type id 1
            c, s = ("special", "cls", 0), ("special", "sep", 0)
            a, b = ("sequence", 0, 0), ("sequence", 1, 1)
            sp = {"cls": ([cls[1]], [cls[0]]), "sep": ([sep[1]], [sep[0]])}
            return Template([c, a, s], [c, a, s, b, ("special", "sep", 1)], sp)
        return Roberta(
            cls, sep, bool(spec.get("trim_offsets", True)), bool(spec.get("add_prefix_space", True))
        )
    raise TokenizerError(f"post_processor {kind!r}")
