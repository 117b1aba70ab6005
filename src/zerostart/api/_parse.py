"""Reading request bodies: fields, inputs, truncation options, and TEI's error classes.

TEI's error classes (``router/src/lib.rs`` ``ErrorType`` and its status map in
``router/src/http/server.rs``): ``Empty`` -> 400 (an empty text, batch or id
list), ``Validation`` -> 422 (wrong types, too many inputs, a text over the
model's length without ``truncate``), ``Tokenizer`` -> 422, ``Backend`` -> 424
(the model cannot do this, or produced no usable number), ``Overloaded`` -> 429,
``Unhealthy`` -> 503. Every refusal here is an :class:`InputError` carrying the
status and class, so the server answers exactly what TEI answers.

Runtime module: standard library only.
"""

from __future__ import annotations

from typing import Any

from zerostart._records import Frozen
from zerostart.errors import InputError
from zerostart.tokenize import Encoding

TRUNCATION_DIRECTIONS = {"right": "right", "Right": "right", "left": "left", "Left": "left"}


def invalid(message: str) -> InputError:
    """TEI's ``Validation`` class: HTTP 422."""
    return InputError(message, status=422, error_type="Validation")


def empty(message: str) -> InputError:
    """TEI's ``Empty`` class: HTTP 400."""
    return InputError(message, status=400, error_type="Empty")


def backend(message: str) -> InputError:
    """TEI's ``Backend`` class, HTTP 424: this model cannot answer this route."""
    return InputError(message, status=424, error_type="Backend")


def body_object(body: Any, example: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object such as {example}")
    return body


def required(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise invalid(f"missing field `{name}`")
    return body[name]


def flag(body: dict[str, Any], name: str, default: bool, *, nullable: bool = False) -> bool:
    """A boolean field; absent means ``default``.

    JSON null means the default only for ``nullable`` fields (TEI's
    ``Option<bool>``, such as ``truncate``); TEI's plain ``bool`` fields
    (``normalize``, ``raw_scores``, ...) refuse null with a 422, and so do we.
    """
    if name not in body:
        return default
    value = body[name]
    if value is None and nullable:
        return default
    if not isinstance(value, bool):
        got = "null" if value is None else type(value).__name__
        raise invalid(f"`{name}` must be true or false, got {got}")
    return value


def options(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a body, with the Inference API's ``parameters`` object merged in.

    huggingface_hub's InferenceClient sends task options inside ``parameters``
    (``{"inputs": ..., "parameters": {"top_k": 2}}``); TEI reads them at the top
    level. Both are accepted; a top-level field wins.
    """
    params = body.get("parameters")
    if params is None:
        return body
    if not isinstance(params, dict):
        raise invalid("`parameters` must be a JSON object")
    return {**params, **body}


class Truncation(Frozen):
    """``truncate`` and ``truncation_direction`` as TEI reads them.

    ``truncate`` absent or null means the server's ``--auto-truncate`` (TEI's
    ``req.truncate.unwrap_or(info.auto_truncate)``); ``truncation_direction``
    is ``right`` (keep the start, the default) or ``left`` (keep the end), any
    case TEI accepts, and never null (TEI's field is not an ``Option``).
    """

    __slots__ = ("enabled", "left")
    enabled: bool
    left: bool

    def __init__(self, enabled: bool, left: bool = False) -> None:
        object.__setattr__(self, "enabled", enabled)
        object.__setattr__(self, "left", left)

    @classmethod
    def read(cls, body: dict[str, Any], auto_truncate: bool) -> Truncation:
        enabled = flag(body, "truncate", auto_truncate, nullable=True)
        if "truncation_direction" not in body:
            return cls(enabled)
        direction = body["truncation_direction"]
        if not isinstance(direction, str) or direction not in TRUNCATION_DIRECTIONS:
            raise invalid("`truncation_direction` must be 'right' or 'left'")
        return cls(enabled, left=TRUNCATION_DIRECTIONS[direction] == "left")


def no_prompt(body: dict[str, Any]) -> None:
    """Refuse ``prompt_name``: no bundle carries sentence-transformers prompts (TEI: 422)."""
    name = body.get("prompt_name")
    if name is not None:
        raise invalid(
            f"`prompt_name` is set to {name!r} but this model has no prompts "
            "(no sentence-transformers `prompts` configuration); leave it out"
        )


# One input of an embedding route: a text, or the model's token ids (TEI's InputType).
Input = str | list[int]


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    )


def embedding_inputs(value: Any, field: str, max_batch: int) -> tuple[list[Input], bool]:
    """TEI's ``Input``: a text, a list of token ids, or a batch of either; (inputs, single).

    A list of integers is one input (token ids), as in TEI and the OpenAI API; a
    list of strings or of id lists is a batch.
    """
    if isinstance(value, str):
        return [nonempty_text(value, f"`{field}`")], True
    if _is_ids(value):
        if not value:
            raise empty(f"`{field}` cannot be empty")
        return [value], True
    if not isinstance(value, list):
        raise invalid(
            f"`{field}` must be a string, a list of token ids, or a list of those, "
            f"got {type(value).__name__}"
        )
    check_batch(len(value), field, max_batch)
    out: list[Input] = []
    for i, item in enumerate(value):
        where = f"`{field}[{i}]`"
        if isinstance(item, str):
            out.append(nonempty_text(item, where))
        elif _is_ids(item):
            if not item:
                raise empty(f"{where} cannot be empty")
            out.append(item)
        else:
            raise invalid(f"{where} must be a string or a list of token ids")
    return out, False


def string_inputs(value: Any, field: str, max_batch: int) -> tuple[list[str], bool]:
    """A text or a list of texts; (texts, single)."""
    if isinstance(value, str):
        return [nonempty_text(value, f"`{field}`")], True
    if not isinstance(value, list):
        raise invalid(f"`{field}` must be a string or a list of strings")
    check_batch(len(value), field, max_batch)
    return [nonempty_text(x, f"`{field}[{i}]`") for i, x in enumerate(value)], False


def check_batch(n: int, field: str, max_batch: int) -> None:
    if n == 0:
        raise empty(f"`{field}` cannot be empty")
    if n > max_batch:
        raise invalid(f"batch size {n} > maximum allowed batch size {max_batch}; split the request")


def nonempty_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string, got {type(value).__name__}")
    if not value:
        raise empty(f"{where} cannot be empty")
    return value


def text(value: Any, where: str) -> str:
    """A string that may be empty (the second text of a pair may be, as in TEI)."""
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string, got {type(value).__name__}")
    return value


def check_length(encodings: list[Encoding], limit: int, truncate: Truncation) -> None:
    """TEI: a sequence over ``max_input_length`` without ``truncate`` is a 422."""
    if truncate.enabled:
        return
    for i, enc in enumerate(encodings):
        if enc.truncated or len(enc.ids) > limit:
            given = max(enc.untruncated_length, len(enc.ids))
            raise invalid(
                f"input {i} has {given} tokens, over this model's limit of {limit}; "
                'shorten it or send "truncate": true'
            )
