"""Build time: read a Hugging Face `tokenizer.json` into our settings and vocabulary.

Some packages ship only `tokenizer.json` (quire's DistilBERT has no vocab.txt),
so `zerostart convert` takes the vocabulary and settings from it. We accept only
configurations that the worker's tokenizer reproduces exactly: a WordPiece model,
a BertNormalizer (or none), the BertPreTokenizer, the BERT template, and added
tokens that are the usual special tokens. Anything else is refused with the file
and the unsupported part named, rather than tokenised differently at run time.

Needs only json and the standard library.
"""

from __future__ import annotations

import json
import os
from typing import Any

from zerostart.bundle.manifest import TokenizerSettings
from zerostart.errors import TokenizerError


def _load(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise TokenizerError(f"{os.fspath(path)}: cannot read tokenizer.json: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{os.fspath(path)}: tokenizer.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{os.fspath(path)}: tokenizer.json must hold a JSON object")
    return data


def _unsupported(path: str | os.PathLike[str], what: str) -> TokenizerError:
    return TokenizerError(
        f"{os.fspath(path)}: {what} is not supported by zerostart's WordPiece tokenizer",
        hint="zerostart serves BERT-style WordPiece tokenizers (BertNormalizer, BertPreTokenizer)",
    )


def _model(path: str | os.PathLike[str], data: dict[str, Any]) -> dict[str, Any]:
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else model
        raise _unsupported(path, f"model type {kind!r} (only WordPiece)")
    if not isinstance(model.get("vocab"), dict):
        raise _unsupported(path, "a WordPiece model without a vocab object")
    return model


def vocab_from_tokenizer_json(path: str | os.PathLike[str]) -> list[str]:
    """The WordPiece vocabulary as a list indexed by id (what vocab.txt holds)."""
    vocab: dict[str, Any] = _model(path, _load(path))["vocab"]
    by_id: dict[int, str] = {}
    for token, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{os.fspath(path)}: token {token!r} has a bad id {i!r}")
        if i in by_id:
            raise TokenizerError(
                f"{os.fspath(path)}: id {i} is used by both {by_id[i]!r} and {token!r}"
            )
        if "\n" in token or token.endswith("\r"):
            raise TokenizerError(
                f"{os.fspath(path)}: token {token!r} cannot be written one per line in vocab.txt"
            )
        by_id[i] = token
    if sorted(by_id) != list(range(len(by_id))):
        missing = next(i for i in range(len(by_id)) if i not in by_id)
        raise TokenizerError(
            f"{os.fspath(path)}: vocabulary ids are not contiguous (no id {missing})"
        )
    return [by_id[i] for i in range(len(by_id))]


def settings_from_tokenizer_json(path: str | os.PathLike[str]) -> TokenizerSettings:
    """TokenizerSettings equivalent to this tokenizer.json, or TokenizerError saying why not.

    Truncation and padding recorded in the file are ignored: the worker decides
    max_length per request and the caller pads.
    """
    data = _load(path)
    model = _model(path, data)

    normalizer = data.get("normalizer")
    if normalizer is None:  # no normaliser: a BertNormalizer with every option off
        norm = {
            "clean_text": False,
            "handle_chinese_chars": False,
            "strip_accents": False,
            "lowercase": False,
        }
    elif isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        norm = normalizer
    else:
        kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
        raise _unsupported(path, f"normalizer {kind!r} (only BertNormalizer or none)")

    pre = data.get("pre_tokenizer")
    if not (isinstance(pre, dict) and pre.get("type") == "BertPreTokenizer"):
        kind = pre.get("type") if isinstance(pre, dict) else pre
        raise _unsupported(path, f"pre_tokenizer {kind!r} (only BertPreTokenizer)")

    cls_token, sep_token, template_ids = _template_specials(path, data.get("post_processor"))
    for token, ids in template_ids.items():
        if ids is not None and ids != [model["vocab"].get(token)]:
            raise _unsupported(
                path, f"template token {token!r} with ids {ids} unlike the vocabulary"
            )
    unk_token = str(model.get("unk_token", "[UNK]"))

    added = data.get("added_tokens") or []
    added_contents = {str(t.get("content")) for t in added if isinstance(t, dict)}
    padding = data.get("padding")
    pad_token = str(padding.get("pad_token", "[PAD]")) if isinstance(padding, dict) else "[PAD]"
    mask_token = TokenizerSettings().mask_token  # BERT's; another name fails the check below
    known = {unk_token, cls_token, sep_token, pad_token, mask_token}
    for token in added:
        content = token.get("content") if isinstance(token, dict) else token
        if content not in known:
            raise _unsupported(
                path, f"added token {content!r} (only the special tokens {sorted(known)})"
            )
        for flag in ("single_word", "lstrip", "rstrip", "normalized"):
            if token.get(flag):
                raise _unsupported(path, f"added token {content!r} with {flag}=true")
        if not token.get("special", False):
            raise _unsupported(path, f"non-special added token {content!r}")
        if model["vocab"].get(content) != token.get("id"):
            raise _unsupported(
                path, f"added token {content!r} with id {token.get('id')} outside the vocabulary"
            )
    # Special tokens present in the vocabulary are matched in raw text by the worker;
    # tokenizers does that only for added tokens, so all of them must be added ones.
    for content in sorted(known):
        if content in model["vocab"] and content not in added_contents:
            raise _unsupported(
                path, f"{content!r} in the vocabulary but not declared as an added special token"
            )

    strip = norm.get("strip_accents")
    max_chars = model.get("max_input_chars_per_word", 100)
    return TokenizerSettings(
        lowercase=bool(norm.get("lowercase", True)),
        strip_accents=None if strip is None else bool(strip),
        handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        clean_text=bool(norm.get("clean_text", True)),
        unk_token=unk_token,
        cls_token=cls_token,
        sep_token=sep_token,
        pad_token=pad_token,
        mask_token=mask_token,
        continuing_subword_prefix=str(model.get("continuing_subword_prefix") or "##"),
        max_input_chars_per_word=int(max_chars),
    )


def _template_specials(
    path: str | os.PathLike[str], post: Any
) -> tuple[str, str, dict[str, list[int] | None]]:
    """(cls, sep) of a BERT template: [CLS] $A [SEP] and [CLS] $A [SEP] $B:1 [SEP]:1."""
    if isinstance(post, dict) and post.get("type") == "BertProcessing":
        cls_token, cls_id = post["cls"]
        sep_token, sep_id = post["sep"]
        return str(cls_token), str(sep_token), {str(cls_token): [cls_id], str(sep_token): [sep_id]}
    if not (isinstance(post, dict) and post.get("type") == "TemplateProcessing"):
        kind = post.get("type") if isinstance(post, dict) else post
        raise _unsupported(path, f"post_processor {kind!r} (only the BERT template)")

    def shape(items: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        out = []
        for item in items:
            ((kind, body),) = item.items()
            out.append((kind, str(body["id"]), int(body["type_id"])))
        return out

    try:
        single, pair = shape(post["single"]), shape(post["pair"])
        cls_token, sep_token = single[0][1], single[-1][1]
        want_single = [
            ("SpecialToken", cls_token, 0),
            ("Sequence", "A", 0),
            ("SpecialToken", sep_token, 0),
        ]
        want_pair = [*want_single, ("Sequence", "B", 1), ("SpecialToken", sep_token, 1)]
        special_ids = {k: v["ids"] for k, v in post.get("special_tokens", {}).items()}
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _unsupported(path, f"a malformed TemplateProcessing ({exc!r})") from exc
    if single != want_single or pair != want_pair:
        raise _unsupported(
            path, f"post_processor template {single} / {pair} (only [CLS] A [SEP] B [SEP])"
        )
    for token in (cls_token, sep_token):
        if len(special_ids.get(token, [])) != 1:
            raise _unsupported(path, f"template special token {token!r} that is not one id")
    return cls_token, sep_token, {t: list(special_ids[t]) for t in (cls_token, sep_token)}
