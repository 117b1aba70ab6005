"""``/tokens`` (token classification, ours), TEI's ``/tokenize`` and ``/decode``.

* ``/tokens``: ``inputs`` (a text or a list), ``aggregation_strategy``
  (``none|simple|first|average|max``), ``ignore_labels`` (default ``["O"]``),
  ``truncate`` -> what transformers' token-classification pipeline returns.
  huggingface_hub's ``InferenceClient.token_classification`` sends the options
  inside ``parameters`` (and ``stride``, which only pipelines that split long
  texts use: refused unless null or 0).
* ``/tokenize``: ``inputs`` (a text or a list), ``add_special_tokens`` (default
  true) -> ``[[{"id", "text", "special", "start", "stop"}]]``; ``start``/``stop``
  are UTF-8 byte offsets into the text (TEI's, from Rust `tokenizers`), null for
  special tokens, whose ``text`` is the token itself.
* ``/decode``: ``ids`` (a list, or a list of lists), ``skip_special_tokens``
  (default true) -> ``["text", ...]``.

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zerostart.api._classify import finite
from zerostart.api._encode import MAX_INPUT_CHARS_PER_TOKEN, byte_offsets, encode
from zerostart.api._job import Job
from zerostart.api._parse import (
    Truncation,
    body_object,
    check_batch,
    empty,
    flag,
    invalid,
    no_prompt,
    options,
    required,
    string_inputs,
)
from zerostart.tasks import STRATEGIES, aggregate_entities
from zerostart.tokenize import Encoding

if TYPE_CHECKING:
    from zerostart.api._model import Model


def prepare_tokens(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    opts = options(body)
    texts, single = string_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    truncate = Truncation.read(opts, pipe.auto_truncate)
    strategy = opts.get("aggregation_strategy") or "simple"
    if strategy not in STRATEGIES:
        raise invalid(f"`aggregation_strategy` must be one of {', '.join(STRATEGIES)}")
    ignore = opts.get("ignore_labels")
    if ignore is None:
        ignore = ["O"]
    if not (isinstance(ignore, list) and all(isinstance(x, str) for x in ignore)):
        raise invalid("`ignore_labels` must be a list of label names")
    if opts.get("stride") not in (None, 0):
        raise invalid(
            "`stride` is not supported: texts over the model's length are refused, "
            'or cut with "truncate": true'
        )
    encodings = encode(pipe, texts, truncate)
    m = pipe.manifest
    tok = pipe.tokenizer

    def finish(outputs: list[memoryview]) -> Any:
        rows = []
        for i, (text, enc, logits) in enumerate(zip(texts, encodings, outputs, strict=True)):
            finite(logits, "score", i)
            rows.append(
                aggregate_entities(
                    text=text,
                    tokens=enc.tokens,
                    ids=enc.ids,
                    offsets=enc.offsets,
                    special_tokens_mask=enc.special_tokens_mask,
                    logits=logits,
                    labels=m.labels,
                    strategy=strategy,
                    ignore_labels=ignore,
                    tokens_to_string=tok.convert_tokens_to_string,
                    unk_token=m.tokenizer.unk_token,
                    word_aware=m.tokenizer.model == "WordPiece",  # the only one with "##"
                    unk_id=getattr(tok, "unk_id", None),  # Unigram/BPE: by id, as transformers
                    scores=pipe.heads.token_scores(logits),
                )
            )
        return rows[0] if single else rows

    return Job(encodings, finish)


def _simple_tokens(text: str, enc: Encoding, add_special_tokens: bool) -> list[dict[str, Any]]:
    ids, tokens, offsets = enc.ids, enc.tokens, enc.offsets
    special = enc.special_tokens_mask
    if not add_special_tokens:  # the template's [CLS] ... [SEP] are the first and last
        ids, tokens, offsets, special = ids[1:-1], tokens[1:-1], offsets[1:-1], special[1:-1]
    spans = byte_offsets(text, offsets)
    out = []
    for i, token in enumerate(tokens):
        if special[i]:
            out.append({"id": ids[i], "text": token, "special": True, "start": None, "stop": None})
        else:
            a, b = offsets[i]
            start, stop = spans[i]
            out.append(
                {"id": ids[i], "text": text[a:b], "special": False, "start": start, "stop": stop}
            )
    return out


def prepare_tokenize(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"inputs": "some text"}')
    texts, _ = string_inputs(required(body, "inputs"), "inputs", pipe.max_client_batch_size)
    add_special = flag(body, "add_special_tokens", True)
    no_prompt(body)
    limit = pipe.manifest.max_length * MAX_INPUT_CHARS_PER_TOKEN
    for i, t in enumerate(texts):
        if len(t) > limit:
            raise invalid(f"input {i} has {len(t)} characters, over this model's limit of {limit}")
    # No truncation: /tokenize shows every token, as TEI's does.
    encodings = [pipe.tokenizer.encode(t) for t in texts]
    answer = [_simple_tokens(t, e, add_special) for t, e in zip(texts, encodings, strict=True)]
    return Job([], lambda _outputs: answer)


def _ids(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise invalid(f"{where} must be a list of token ids (integers)")
    if not value:
        raise empty("`input_ids` cannot be empty")
    return value


def prepare_decode(pipe: Model, body: Any) -> Job:
    body = body_object(body, '{"ids": [101, 7592, 102]}')
    ids = required(body, "ids")
    skip = flag(body, "skip_special_tokens", True)
    if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
        check_batch(len(ids), "ids", pipe.max_client_batch_size)
        batch = [_ids(x, f"`ids[{i}]`") for i, x in enumerate(ids)]
    elif isinstance(ids, list) and not ids:
        raise empty("`ids` cannot be empty")
    else:
        batch = [_ids(ids, "`ids`")]
    answer = [pipe.tokenizer.decode(x, skip_special_tokens=skip) for x in batch]
    return Job([], lambda _outputs: answer)
