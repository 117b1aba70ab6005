"""Reading a Hugging Face model folder: config, task, labels, tokenizer, pooling, weights.

The half of ``zerostart convert`` that understands Hugging Face's files (and
sentence-transformers' extra ones); ``convert`` turns what it returns into a
bundle. Every problem is a ConvertError naming the file. Build-time module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.bundle.layout import SUPPORTED_ACTS
from zerostart.bundle.manifest import (
    PROBLEM_TYPES,
    VOCAB_NAME,
    ModelConfig,
    Pooling,
    TokenizerSettings,
)
from zerostart.bundle.weights import map_safetensors
from zerostart.errors import ConvertError, TokenizerError
from zerostart.model import deberta

DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT
_ARCH_TASKS = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
}
_EMBEDDING_ARCHS = (
    "BertModel",
    "DistilBertModel",
    "RobertaModel",
    "XLMRobertaModel",
    "CamembertModel",
    "DebertaV2Model",
    "ModernBertModel",
)
# Post-LN BERTs with RoBERTa's embeddings: the engine runs them as "bert" (see position_offset).
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
# Families TEI serves that convert does not yet, and the nearest one that converts.
_NOT_YET = {
    "deberta": "deberta-v2",
    "mpnet": "bert",
    "nomic_bert": "bert",
    "new": "bert",  # gte-base-en-v1.5 / Alibaba-NLP "NewModel"
    "qwen2": "bert",
    "mistral": "bert",
    "gemma3_text": "bert",
}


def read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        if required:
            raise ConvertError(
                path, "file not found: is this a Hugging Face model folder?"
            ) from None
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConvertError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConvertError(path, "expected a JSON object")
    return data


def sentence_transformers(src: Path) -> tuple[Path, Pooling, int | None]:
    """The encoder folder, pooling and max_seq_length of a sentence-transformers folder.

    A plain Hugging Face folder gives (src, default pooling, None).
    """
    modules_path = src / "modules.json"
    if not modules_path.is_file():
        return src, Pooling(), None
    try:
        modules = json.loads(modules_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConvertError(modules_path, f"not valid JSON: {exc}") from exc
    if not isinstance(modules, list):
        raise ConvertError(modules_path, "expected a JSON list of modules")
    model_dir, mode, normalize = src, "cls", False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = src / str(module.get("path", ""))
        if kind == "Transformer":
            model_dir = sub
        elif kind == "Pooling":
            mode = pooling_mode(sub / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConvertError(
                modules_path, f"sentence-transformers module {kind!r} is not supported"
            )
    st_config = read_json(model_dir / "sentence_bert_config.json")
    st_max = st_config.get("max_seq_length")
    return model_dir, Pooling(mode=mode, normalize=normalize), int(st_max) if st_max else 0


def pooling_mode(path: Path) -> str:
    cfg = read_json(path, required=True)
    on = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
    modes = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
    if len(on) != 1 or on[0] not in modes:
        raise ConvertError(
            path, f"pooling {on} is not supported: use exactly one of {sorted(modes)}"
        )
    return modes[on[0]]


def model_config(config: dict[str, Any], path: Path) -> tuple[str, ModelConfig]:
    model_type = config.get("model_type")
    try:
        if model_type == "bert":
            if config.get("position_embedding_type", "absolute") != "absolute":
                raise ConvertError(path, "only absolute position embeddings are supported")
            mc = ModelConfig(
                hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                max_position_embeddings=int(config["max_position_embeddings"]),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                hidden_act=str(config.get("hidden_act", "gelu")),
                pad_token_id=int(config.get("pad_token_id") or 0),
            )
        elif model_type == "distilbert":
            mc = ModelConfig(
                hidden_size=int(config["dim"]),
                num_layers=int(config["n_layers"]),
                num_heads=int(config["n_heads"]),
                intermediate_size=int(config["hidden_dim"]),
                vocab_size=int(config["vocab_size"]),
                max_position_embeddings=int(config["max_position_embeddings"]),
                type_vocab_size=0,
                layer_norm_eps=DISTILBERT_LAYER_NORM_EPS,
                hidden_act=str(config.get("activation", "gelu")),
                pad_token_id=int(config.get("pad_token_id") or 0),
            )
        elif model_type in ROBERTA_TYPES:
            mc = _roberta_config(config, path)
        elif model_type in (deberta.MODEL_TYPE, "deberta"):
            mc = deberta.model_config(config, path)
        elif model_type == "modernbert":
            from zerostart.model.modernbert import modernbert_config

            mc = modernbert_config(config, path)
        else:
            supported = ", ".join(
                ("bert", "distilbert", *ROBERTA_TYPES, deberta.MODEL_TYPE, "modernbert")
            )
            nearest = _NOT_YET.get(str(model_type))
            raise ConvertError(
                path,
                f"model_type {model_type!r} is not supported yet ({supported})",
                hint=(
                    f"{model_type} is planned (docs/models.md); today the nearest family that "
                    f"converts is {nearest}"
                    if nearest
                    else None
                ),
            )
    except KeyError as exc:
        raise ConvertError(path, f"config has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ConvertError(path, f"config has an invalid size: {exc}") from exc
    if mc.hidden_act not in SUPPORTED_ACTS:
        raise ConvertError(
            path, f"activation {mc.hidden_act!r} is not supported ({SUPPORTED_ACTS})"
        )
    if mc.hidden_size % mc.num_heads:
        raise ConvertError(
            path, f"hidden size {mc.hidden_size} is not a multiple of {mc.num_heads} heads"
        )
    engine_arch = "bert" if model_type in ROBERTA_TYPES else str(model_type)
    return engine_arch, mc


def position_offset(model_type: str, config: dict[str, Any]) -> int:
    """Rows of the source position table that precede position 0 of a sequence.

    RoBERTa numbers positions from ``padding_idx + 1`` (transformers'
    ``create_position_ids_from_input_ids``: ``cumsum(mask) * mask + padding_idx``),
    so a 514-row table serves 512 tokens; convert drops those first rows and the
    engine counts from 0 as for BERT. Like TEI, a literal pad token inside the
    text does not shift the positions after it (transformers would).
    """
    if model_type not in ROBERTA_TYPES:
        return 0
    pad = config.get("pad_token_id")
    return (1 if pad is None else int(pad)) + 1


def _roberta_config(config: dict[str, Any], path: Path) -> ModelConfig:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConvertError(path, "only absolute position embeddings are supported")
    offset = position_offset(str(config.get("model_type")), config)
    table = int(config["max_position_embeddings"])
    if table <= offset + 2:
        raise ConvertError(
            path, f"max_position_embeddings {table} leaves no positions after padding_idx + 1"
        )
    return ModelConfig(
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=table - offset,
        type_vocab_size=int(config.get("type_vocab_size", 1)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
        hidden_act=str(config.get("hidden_act", "gelu")),
        pad_token_id=offset - 1,
    )


def infer_task(config: dict[str, Any], path: Path, *, is_sentence_transformer: bool) -> str:
    archs = config.get("architectures") or []
    for arch in archs:
        for suffix, task in _ARCH_TASKS.items():
            if str(arch).endswith(suffix):
                return task
        if arch in _EMBEDDING_ARCHS:
            return "embeddings"
    if is_sentence_transformer:
        return "embeddings"
    raise ConvertError(
        path,
        f"cannot tell the task from architectures {archs}",
        hint="pass --task sequence-classification, token-classification or embeddings",
    )


def read_labels(config: dict[str, Any], path: Path, task: str) -> tuple[tuple[str, ...], str]:
    if task == "embeddings":
        return (), "single_label_classification"
    id2label = config.get("id2label")
    declared = config.get("num_labels", config.get("_num_labels"))
    if id2label:
        try:
            by_index = {int(k): str(v) for k, v in id2label.items()}
        except (AttributeError, ValueError) as exc:
            raise ConvertError(path, f"id2label must map integer ids to names: {exc}") from exc
        if sorted(by_index) != list(range(len(by_index))):
            raise ConvertError(
                path, f"id2label ids must be 0..{len(by_index) - 1}, got {sorted(by_index)}"
            )
        labels = tuple(by_index[i] for i in range(len(by_index)))
    else:
        labels = tuple(f"LABEL_{i}" for i in range(int(declared or 2)))
    if declared is not None and int(declared) != len(labels):
        raise ConvertError(path, f"num_labels is {declared} but id2label has {len(labels)} entries")
    # No problem_type: transformers' text-classification pipeline (and TEI) apply a
    # sigmoid to a single logit and a softmax to several; only an explicit
    # "regression" means the raw value. classify() does the one-logit sigmoid.
    problem_type = config.get("problem_type") or "single_label_classification"
    if problem_type not in PROBLEM_TYPES:
        raise ConvertError(path, f"problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
    return labels, str(problem_type)


def read_tokenizer(
    model_dir: Path, tables_dir: Path
) -> tuple[TokenizerSettings, list[str], Path, int]:
    """(settings, vocab.txt lines, source file, vocabulary size) of a model folder.

    tokenizer.json wins when present, else vocab.txt + tokenizer_config.json.
    A WordPiece tokenizer gives its vocabulary as vocab.txt lines; any other kind
    (Unigram) is compiled into ``tables_dir/tokenizer.bin`` and gives no lines.
    """
    tj = model_dir / "tokenizer.json"
    vt = model_dir / VOCAB_NAME
    if tj.is_file():
        from zerostart.tokenize.compile import compile_tokenizer_json, model_type
        from zerostart.tokenize.hf import settings_from_tokenizer_json, vocab_from_tokenizer_json

        try:
            if model_type(tj) in (None, "WordPiece"):
                vocab = vocab_from_tokenizer_json(tj)
                return settings_from_tokenizer_json(tj), vocab, tj, len(vocab)
            settings = compile_tokenizer_json(
                tj, tables_dir, special_tokens=_special_tokens(model_dir)
            )
        except TokenizerError as exc:
            message = str(exc.args[0]).removeprefix(f"{tj}: ")  # ConvertError adds the path
            raise ConvertError(tj, message, hint=exc.hint) from exc
        from zerostart.tokenize import Tokenizer

        size = Tokenizer.from_bundle(tables_dir, settings.spec).vocab_size
        return settings, [], tj, size
    if not vt.is_file():
        raise ConvertError(model_dir, "no tokenizer: expected tokenizer.json or vocab.txt")
    try:
        vocab = vt.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConvertError(vt, f"not UTF-8: {exc}") from exc
    tc = read_json(model_dir / "tokenizer_config.json")

    def token(key: str, default: str) -> str:
        value = tc.get(key, default)
        return str(value.get("content", default) if isinstance(value, dict) else value)

    settings = TokenizerSettings(
        lowercase=bool(tc.get("do_lower_case", True)),
        strip_accents=tc.get("strip_accents"),
        handle_chinese_chars=bool(tc.get("tokenize_chinese_chars", True)),
        unk_token=token("unk_token", "[UNK]"),
        cls_token=token("cls_token", "[CLS]"),
        sep_token=token("sep_token", "[SEP]"),
        pad_token=token("pad_token", "[PAD]"),
        mask_token=token("mask_token", "[MASK]"),
    )
    return settings, vocab, vt, len(vocab)


def _special_tokens(model_dir: Path) -> dict[str, str]:
    """Role -> token from special_tokens_map.json and tokenizer_config.json (the latter wins)."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = read_json(model_dir / name)
        for role in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token"):
            value = data.get(role)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[role] = value
    return out


def choose_max_length(
    model_dir: Path, mc: ModelConfig, requested: int | None, st_max: int | None
) -> int:
    limit = mc.max_position_embeddings
    if requested is not None:
        if not 2 < requested <= limit:
            raise ConvertError(model_dir, f"max_length {requested} must be in 3..{limit}")
        return requested
    if st_max:
        return min(st_max, limit)
    declared = read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    # transformers writes a huge sentinel (1e30) when the length is unknown.
    if isinstance(declared, int | float) and 2 < declared <= limit:
        return int(declared)
    return limit


def read_source_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    st = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    binf = model_dir / "pytorch_model.bin"
    if st.is_file():
        files = [st]
    elif index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(index, "has no weight_map")
        files = [model_dir / name for name in sorted(set(map(str, weight_map.values())))]
    elif binf.is_file():
        from zerostart.model.torchbin import BF16Array, load_torch_bin

        raw = load_torch_bin(binf)
        return {k: to_float32(v, isinstance(v, BF16Array)) for k, v in raw.items()}, [binf]
    else:
        raise ConvertError(model_dir, "no weights: expected model.safetensors or pytorch_model.bin")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        w = map_safetensors(f, error=ConvertError)
        for name, arr in w.items():
            tensors[name] = to_float32(arr, w.dtypes[name] == "BF16")
    return tensors, files


def to_float32(arr: np.ndarray, bf16: bool) -> np.ndarray:
    if bf16:
        return (np.asarray(arr, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(arr)


# -- the engine layout -------------------------------------------------------------
