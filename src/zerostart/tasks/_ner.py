"""Token-classification answers: transformers' TokenClassificationPipeline, without transformers.

Theory of operation. Users compare our ``/tokens`` answers with
``pipeline("token-classification", aggregation_strategy=...)``, so this module
reproduces its post-processing step for step (transformers 5.x,
``pipelines/token_classification.py``), in plain Python floats (transformers
keeps numpy float32: scores agree to ~1e-7):

1. scores: softmax of each token's logits, shifted by the row maximum;
2. pre-entities (``gather_pre_entities``): special tokens dropped; each token
   keeps its vocabulary string, its character span, and ``is_subword``, which
   for a WordPiece tokenizer (it has a continuing-subword prefix) is
   "the token string is not as long as the text it covers" (``##ing`` vs ``ing``),
   and for any other (byte-level BPE, SentencePiece: ``word_aware=False``)
   transformers' fallback "the token starts after position 0 and neither it nor
   the character before it is a space";
   an [UNK] token takes the text it covers as its word and starts a word;
3. "none"/"simple": each token gets its argmax label; "first"/"average"/"max"
   first merge subword tokens into words and pick one label per word;
4. every strategy but "none" then groups adjacent (word) entities that share a
   tag, where a ``B-`` label always opens a new group (``group_entities``);
5. entities whose label (or group) is in ``ignore_labels`` are dropped last.

Runtime module: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zerostart.errors import InputError
from zerostart.tasks._heads import softmax

STRATEGIES = ("none", "simple", "first", "average", "max")
_WORD_STRATEGIES = ("first", "average", "max")

TokensToString = Callable[[Sequence[str]], str]


def aggregate_entities(
    *,
    text: str,
    tokens: Sequence[str],
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    special_tokens_mask: Sequence[int],
    logits: Any,
    labels: Sequence[str],
    strategy: str = "simple",
    ignore_labels: Sequence[str] = ("O",),
    tokens_to_string: TokensToString,
    unk_token: str = "[UNK]",
    word_aware: bool = True,
    scores: Sequence[Sequence[float]] | None = None,
    unk_id: int | None = None,
) -> list[dict[str, Any]]:
    """One text's token logits ``[T, num_labels]`` -> the entities transformers would return.

    Keys: ``entity`` (with ``index``) for "none", ``entity_group`` otherwise, plus
    ``score`` (a Python float), ``word``, ``start``, ``end`` (character offsets in
    ``text``). ``tokens_to_string`` is the tokenizer's ``convert_tokens_to_string``
    (it builds ``word``). ``ids`` are only checked for length: the [UNK] test uses
    ``unk_token``, which names the same vocabulary entry as transformers' id test.
    ``word_aware``: the tokenizer has a continuing-subword prefix (WordPiece's
    ``##``), which is how transformers tells subwords apart (see step 2 above).
    ``logits``: [T, num_labels] as anything with ``tolist`` (a float32 memoryview, a
    numpy array) or nested sequences; ``scores``, when given, are their softmax
    already (``Heads.token_scores``, on the native kernels) and ``logits`` is unused.
    """
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown aggregation_strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}"
        )
    if scores is None:
        rows = logits.tolist() if hasattr(logits, "tolist") else [list(r) for r in logits]
        scores = [softmax(row) for row in rows]
    n = len(tokens)
    shape = (len(scores), len(scores[0]) if len(scores) else len(labels))
    if shape != (n, len(labels)) or not (len(ids) == len(offsets) == len(special_tokens_mask) == n):
        raise InputError(
            f"token classification inputs disagree: {n} tokens, {len(ids)} ids, {len(offsets)} "
            f"offsets, {len(special_tokens_mask)} mask entries, logits {shape} "
            f"for {len(labels)} labels"
        )
    unknown = [i == unk_id for i in ids] if unk_id is not None else [t == unk_token for t in tokens]
    pre = _gather_pre_entities(
        text, tokens, offsets, special_tokens_mask, scores, unknown, word_aware
    )
    if strategy in ("none", "simple"):
        entities = [_token_entity(p, labels) for p in pre]
    else:
        entities = _aggregate_words(pre, strategy, labels, tokens_to_string)
    if strategy != "none":
        entities = _group_entities(entities, tokens_to_string)
    ignored = set(ignore_labels)
    kept = [
        e
        for e in entities
        if e.get("entity") not in ignored and e.get("entity_group") not in ignored
    ]
    for e in kept:
        e["score"] = float(e["score"])
    return kept


def _argmax(row: Sequence[float]) -> int:
    """Index of the first maximum (numpy's argmax)."""
    return max(range(len(row)), key=row.__getitem__)


def _gather_pre_entities(
    text: str,
    tokens: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    special_tokens_mask: Sequence[int],
    scores: Sequence[Sequence[float]],
    unknown: Sequence[bool],
    word_aware: bool,
) -> list[dict[str, Any]]:
    pre = []
    for idx, token_scores in enumerate(scores):
        if special_tokens_mask[idx]:
            continue
        word = tokens[idx]
        start, end = (int(o) for o in offsets[idx])
        word_ref = text[start:end]
        if word_aware:
            is_subword = len(word) != len(word_ref)
        else:  # transformers' fallback heuristic for tokenizers without word boundaries
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if unknown[idx]:
            word = word_ref
            is_subword = False
        pre.append(
            {
                "word": word,
                "scores": token_scores,
                "start": start,
                "end": end,
                "index": idx,
                "is_subword": is_subword,
            }
        )
    return pre


def _token_entity(pre: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    idx = _argmax(pre["scores"])
    return {
        "entity": labels[idx],
        "score": pre["scores"][idx],
        "index": pre["index"],
        "word": pre["word"],
        "start": pre["start"],
        "end": pre["end"],
    }


def _aggregate_words(
    pre: list[dict[str, Any]],
    strategy: str,
    labels: Sequence[str],
    tokens_to_string: TokensToString,
) -> list[dict[str, Any]]:
    """Merge each word's subword tokens into one entity (a word opens on a non-subword token)."""
    words: list[list[dict[str, Any]]] = []
    for p in pre:
        if words and p["is_subword"]:
            words[-1].append(p)
        else:
            words.append([p])
    return [_aggregate_word(w, strategy, labels, tokens_to_string) for w in words]


def _aggregate_word(
    parts: list[dict[str, Any]],
    strategy: str,
    labels: Sequence[str],
    tokens_to_string: TokensToString,
) -> dict[str, Any]:
    if strategy == "first":
        scores = parts[0]["scores"]
    elif strategy == "max":
        scores = max(parts, key=lambda p: max(p["scores"]))["scores"]  # first maximum wins ties
    else:  # average (transformers' nanmean: the scores hold no NaN, the route checked)
        scores = [sum(col) / len(parts) for col in zip(*(p["scores"] for p in parts), strict=True)]
    idx = _argmax(scores)
    return {
        "entity": labels[idx],
        "score": scores[idx],
        "word": tokens_to_string([p["word"] for p in parts]),
        "start": parts[0]["start"],
        "end": parts[-1]["end"],
    }


def _tag(label: str) -> tuple[str, str]:
    """("B" | "I", tag); a label without a B-/I- prefix continues like an I- label."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group_entities(
    entities: list[dict[str, Any]], tokens_to_string: TokensToString
) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for entity in entities:
        if current:
            bi, tag = _tag(entity["entity"])
            if tag == _tag(current[-1]["entity"])[1] and bi != "B":
                current.append(entity)
                continue
            groups.append(_group(current, tokens_to_string))
        current = [entity]
    if current:
        groups.append(_group(current, tokens_to_string))
    return groups


def _group(parts: list[dict[str, Any]], tokens_to_string: TokensToString) -> dict[str, Any]:
    return {
        "entity_group": parts[0]["entity"].split("-", 1)[-1],
        "score": sum(p["score"] for p in parts) / len(parts),
        "word": tokens_to_string([p["word"] for p in parts]),
        "start": parts[0]["start"],
        "end": parts[-1]["end"],
    }
