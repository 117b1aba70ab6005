"""Build time: a ``tokenizer.json`` other than WordPiece -> manifest spec + ``tokenizer.bin``.

``zerostart convert`` calls ``compile_tokenizer_json``. It keeps the small
parts of the file (normaliser, pre-tokeniser, post-processor, decoder, added
tokens) as a JSON spec for the manifest, moves the big ones (the model's
vocabulary, the Precompiled charsmap) into ``tokenizer.bin``
(``_compiled.py``), and refuses, naming the part, whatever the worker's
tokenizer would not reproduce exactly. It then loads the result with the
worker's own code, so a bundle that converts is one that loads.

A model kind plugs in with one ``MODEL_COMPILERS`` entry: model entry of
tokenizer.json -> (meta, sections) for ``tokenizer.bin``.

Needs only the standard library.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zerostart.bundle.manifest import TokenizerSettings
from zerostart.errors import TokenizerError
from zerostart.tokenize._bpe import compile_bpe
from zerostart.tokenize._compiled import NATIVE_LIB_NAME, Section, write
from zerostart.tokenize._pipeline import (
    DECODERS,
    MODELS,
    NATIVE_MODELS,
    PRE_TOKENIZERS,
    TABLES_NAME,
    Tokenizer,
)
from zerostart.tokenize._serde_float import serde_float
from zerostart.tokenize._unigram import compile_unigram

ModelCompiler = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Section]]]
NORMALIZERS = (
    *("Sequence", "Precompiled", "Replace", "Lowercase", "Strip"),
    *("NFC", "NFD", "NFKC", "NFKD"),
)
POST_PROCESSORS = ("TemplateProcessing", "RobertaProcessing", "BertProcessing")


def _unigram(model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Section]]:
    vocab = model.get("vocab")
    if not isinstance(vocab, list) or not all(
        isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) for v in vocab
    ):
        raise TokenizerError("a Unigram model whose vocab is not a list of [piece, score]")
    unk = model.get("unk_id")
    meta, sections = compile_unigram(
        [(p, float(s)) for p, s in vocab],
        unk_id=None if unk is None else int(unk),
        byte_fallback=bool(model.get("byte_fallback", False)),
    )
    return {"type": "Unigram", **meta}, sections


# BPE options that change tokenisation and that the worker does not implement
# (tokenizer.json's defaults: what they must be).
_BPE_UNSUPPORTED = {
    "dropout": (None, 0, 0.0),
    "continuing_subword_prefix": (None, ""),
    "end_of_word_suffix": (None, ""),
    "byte_fallback": (None, False),
}


def _bpe(model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Section]]:
    """A byte-level BPE model entry; the ByteLevel pre-tokenizer is checked by the caller."""
    for option, allowed in _BPE_UNSUPPORTED.items():
        if model.get(option) not in allowed:
            raise TokenizerError(f"BPE option {option}={model.get(option)!r}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(isinstance(k, str) for k in vocab):
        raise TokenizerError("a BPE model whose vocab is not an object of token: id")
    merges: list[tuple[str, str]] = []
    for m in model.get("merges") or []:
        # tokenizers writes ["a", "b"] since 0.20 and "a b" before
        pair = m.split(" ") if isinstance(m, str) else m
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        ):
            raise TokenizerError(f"a BPE merge {m!r} that is not two tokens")
        merges.append((pair[0], pair[1]))
    meta, sections = compile_bpe(vocab, merges, ignore_merges=bool(model.get("ignore_merges")))
    return {"type": "BPE", **meta}, sections


log = logging.getLogger("zerostart.convert")

MODEL_COMPILERS: dict[str, ModelCompiler] = {"Unigram": _unigram, "BPE": _bpe}
# The pre-tokenizer each model kind needs: BPE runs over ByteLevel's byte characters.
_MODEL_PRE_TOKENIZERS = {"BPE": ("ByteLevel",), "Unigram": (None, "Metaspace", "WhitespaceSplit")}


def _single_pre_tokenizer(pre: Any, refuse: Callable[[str], TokenizerError]) -> Any:
    """A ``Sequence`` of one pre-tokenizer is that pre-tokenizer (transformers writes
    DeBERTa-v2/v3's Metaspace so); a longer one (``split_by_punct``: Punctuation first) is refused."""
    if not isinstance(pre, dict) or pre.get("type") != "Sequence":
        return pre
    parts = pre.get("pretokenizers")
    if not isinstance(parts, list) or len(parts) != 1:
        kinds = [p.get("type") if isinstance(p, dict) else p for p in parts or []]
        raise refuse(f"a Sequence of pre-tokenizers {kinds}")
    return parts[0]


def model_type(path: str | os.PathLike[str]) -> str | None:
    """The ``model.type`` of a tokenizer.json (None if unreadable: the caller reports it)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return str(data["model"]["type"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compile_tokenizer_json(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    special_tokens: dict[str, str],
    native: bool = True,
) -> TokenizerSettings:
    """Write ``out_dir/tokenizer.bin`` for ``path``; return the settings for the manifest.

    ``special_tokens``: role -> token from tokenizer_config.json / special_tokens_map.json
    (``unk_token``, ``pad_token``, ``cls_token``, ``sep_token``, ``mask_token``),
    recorded for the worker (padding id, NER's unknown token). ``native``: also
    write ``out_dir/tokenizer.so`` (Unigram models), the inner loops in C
    (``zerostart.kernels.tok_build``); without a C compiler a warning is logged
    and the worker runs them in Python. Raises TokenizerError naming the file
    and the part it cannot serve.
    """
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:  # floats (Unigram scores) as tokenizers reads them
            data = json.load(f, parse_float=serde_float)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{where}: cannot read tokenizer.json: {exc}") from exc

    def refuse(what: str) -> TokenizerError:
        return TokenizerError(
            f"{where}: {what} is not supported",
            hint="zerostart serves WordPiece; Unigram with Precompiled/Replace/Lowercase/"
            "Strip/NFC/NFD/NFKC/NFKD normalizers and Metaspace/WhitespaceSplit pre-tokenizers; byte-level BPE "
            "(the ByteLevel pre-tokenizer and decoder); with TemplateProcessing/"
            "RobertaProcessing (see docs/tokenizer.md)",
        )

    model = data.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind not in MODEL_COMPILERS or kind not in MODELS:
        raise refuse(f"model type {kind!r}")
    sections: dict[str, Section] = {}
    normalizer = _normalizer(data.get("normalizer"), sections, refuse)
    pre = _single_pre_tokenizer(data.get("pre_tokenizer"), refuse)
    if pre is not None and (not isinstance(pre, dict) or pre.get("type") not in PRE_TOKENIZERS):
        raise refuse(f"pre_tokenizer {pre.get('type') if isinstance(pre, dict) else pre!r}")
    pre_kind = pre.get("type") if isinstance(pre, dict) else None
    if pre_kind not in _MODEL_PRE_TOKENIZERS[kind]:
        raise refuse(f"a {kind} model with the pre_tokenizer {pre_kind!r}")
    dec = data.get("decoder")
    if dec is not None and (not isinstance(dec, dict) or dec.get("type") not in DECODERS):
        raise refuse(f"decoder {dec.get('type') if isinstance(dec, dict) else dec!r}")
    post = data.get("post_processor")
    if post is None:
        post = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}  # fmt: skip
    elif not isinstance(post, dict) or post.get("type") not in POST_PROCESSORS:
        raise refuse(f"post_processor {post.get('type') if isinstance(post, dict) else post!r}")
    added = []
    for token in data.get("added_tokens") or []:
        content = token.get("content")
        if token.get("single_word"):
            raise refuse(f"added token {content!r} with single_word=true")
        # tokenizers' default: special tokens match the raw text, others the normalised one
        normalized = bool(token.get("normalized", not token.get("special")))
        if normalized and normalizer is not None:
            raise refuse(f"added token {content!r} matched after normalisation (normalized=true)")
        entry = {k: token.get(k) for k in ("id", "content", "lstrip", "rstrip", "special")}
        added.append({**entry, "normalized": normalized})
    truncation = data.get("truncation") or {}
    try:
        meta, model_sections = MODEL_COMPILERS[kind](model)
    except (TypeError, ValueError) as exc:
        raise refuse(f"a malformed {kind} model ({exc})") from exc
    except TokenizerError as exc:
        raise refuse(str(exc.args[0])) from exc
    sections.update(model_sections)
    padding = data.get("padding") or {}
    pad_token = str(padding.get("pad_token") or special_tokens.get("pad_token", "<pad>"))
    unk_token = special_tokens.get("unk_token", "<unk>")
    spec: dict[str, Any] = {
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": dec,
        "added_tokens": added,
        "truncation_direction": str(truncation.get("direction", "Right")).lower(),
        "pad_token": pad_token,
        "unk_token": unk_token,
    }
    out = Path(out_dir) / TABLES_NAME
    write(out, {"model": meta}, sections)
    lib = Path(out_dir) / NATIVE_LIB_NAME
    lib.unlink(missing_ok=True)
    if native and kind in NATIVE_MODELS:
        _write_native(lib)
    try:
        Tokenizer.from_bundle(out_dir, spec)  # the worker's own loading, library included
    except TokenizerError as exc:
        out.unlink()
        lib.unlink(missing_ok=True)
        raise refuse(str(exc.args[0]).removeprefix(f"{out}: ")) from exc
    except (KeyError, TypeError, ValueError) as exc:
        out.unlink()
        lib.unlink(missing_ok=True)
        raise refuse(f"a malformed part ({exc!r})") from exc
    return TokenizerSettings(
        model=str(kind),
        spec=spec,
        unk_token=unk_token,
        pad_token=pad_token,
        cls_token=special_tokens.get("cls_token", "<s>"),
        sep_token=special_tokens.get("sep_token", "</s>"),
        mask_token=special_tokens.get("mask_token", "<mask>"),
    )


def _write_native(lib: Path) -> None:
    """Copy the compiled inner loops to ``lib``; a warning instead when they cannot be built."""
    from zerostart.errors import ConvertError
    from zerostart.kernels.tok_build import build_tokenizer_library

    try:
        shutil.copyfile(build_tokenizer_library(), lib)
    except ConvertError as exc:
        log.warning("the tokenizer will run in Python, slower: %s", exc)


def _normalizer(
    spec: Any, sections: dict[str, Section], refuse: Callable[[str], TokenizerError]
) -> dict[str, Any] | None:
    """The normaliser spec without its charsmap (moved to ``sections``); refuses unknown kinds."""
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else spec
    if kind not in NORMALIZERS:
        raise refuse(f"normalizer {kind!r}")
    if kind == "Sequence":
        parts = [_normalizer(s, sections, refuse) for s in spec.get("normalizers", [])]
        return {"type": "Sequence", "normalizers": [p for p in parts if p is not None]}
    if kind == "Precompiled":
        if "charsmap" in sections:
            raise refuse("two Precompiled normalizers")
        raw = spec.get("precompiled_charsmap")
        try:
            sections["charsmap"] = base64.b64decode(raw or "", validate=True)
        except (binascii.Error, TypeError) as exc:
            raise refuse(f"a Precompiled charsmap that is not base64 ({exc})") from exc
        if not sections["charsmap"]:
            return None  # an empty charsmap normalises nothing (tokenizers: the identity)
        return {"type": "Precompiled"}
    return dict(spec)
