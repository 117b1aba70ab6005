"""``zerostart convert``: a Hugging Face model folder -> a zerostart bundle.

Everything that is slow, fragile or needs a big library happens here, once, at
build time, so the worker only maps a file and reads one small JSON:

* the config is normalised (BERT and DistilBERT spell the same sizes differently);
* the task, labels, tokenizer settings, maximum length and pooling are decided
  and written into the manifest;
* the weights are rewritten into the engine layout (``zerostart.engine.layout``):
  linear weights transposed to ``[in, out]``, Q/K/V fused, the query pre-scaled,
  every shape checked against the config, and saved aligned for ``mmap``;
* every file's sha256 is recorded so a tampered bundle is refused at start.

A ``pytorch_model.bin`` is read by ``torchbin`` (a restricted unpickler), never
by torch. Build-time module: may use numpy and the tokenizer helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.engine.layout import LAYOUT_VERSION, SUPPORTED_ACTS, layer_prefix, tensor_shapes
from zerostart.errors import BundleError, ConvertError, TokenizerError
from zerostart.model.manifest import (
    MANIFEST_NAME,
    PROBLEM_TYPES,
    TASKS,
    VOCAB_NAME,
    WEIGHTS_NAME,
    FileEntry,
    Manifest,
    ModelConfig,
    Pooling,
    TokenizerSettings,
)
from zerostart.model.weights import map_safetensors, write_weights

Progress = Callable[[str, float], None]

DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT
HASH_CHUNK_BYTES = 8 * 1024 * 1024
_DEVICE_DTYPES = {"cpu": "float32", "cuda": "float16"}
_ARCH_TASKS = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
}
_EMBEDDING_ARCHS = ("BertModel", "DistilBertModel")


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    device: str = "cpu",
    task: str | None = None,
    max_length: int | None = None,
    progress: Progress | None = None,
    archs: Sequence[str] = (),
) -> Manifest:
    """Convert the Hugging Face folder ``src`` into a bundle at ``dst`` and return its manifest.

    ``dst`` is replaced atomically if it is already a bundle; any other
    non-empty folder is refused rather than overwritten.
    """
    report: Progress = progress or (lambda _stage, _fraction: None)
    src, dst = Path(src), Path(dst)
    if device not in _DEVICE_DTYPES:
        raise ConvertError(dst, f"device {device!r} is not one of {tuple(_DEVICE_DTYPES)}")
    if task is not None and task not in TASKS:
        raise ConvertError(src, f"task {task!r} is not one of {TASKS}")
    _check_destination(dst)
    if not src.is_dir():
        raise ConvertError(src, "model folder not found")
    model_dir, pooling, st_max_length = _sentence_transformers(src)
    report("config", 0.0)
    cfg_path = model_dir / "config.json"
    config = _read_json(cfg_path, required=True)
    architecture, model_config = _model_config(config, cfg_path)
    the_task = task or _infer_task(
        config, cfg_path, is_sentence_transformer=st_max_length is not None
    )
    labels, problem_type = _labels(config, cfg_path, the_task)
    settings, vocab, vocab_source = _tokenizer(model_dir)
    if len(vocab) != model_config.vocab_size:
        raise ConvertError(
            vocab_source,
            f"vocabulary has {len(vocab)} tokens but config.json says vocab_size={model_config.vocab_size}",
        )
    length = _max_length(model_dir, model_config, max_length, st_max_length)

    report("read weights", 0.1)
    source, weights_files = _read_source_weights(model_dir)
    manifest = Manifest(
        architecture=architecture,
        task=the_task,
        config=model_config,
        tokenizer=settings,
        max_length=length,
        dtype=_DEVICE_DTYPES[device],
        device=device,
        labels=labels,
        problem_type=problem_type,
        pooling=pooling,
        source={
            "folder": src.resolve().name,
            "model_type": architecture,
            "architectures": list(config.get("architectures") or []),
            "weights_files": [p.name for p in weights_files],
            "weights_sha256": _sha256_files(weights_files),
        },
    )
    try:
        manifest.validate(cfg_path)
    except BundleError as exc:
        raise ConvertError(exc.path, exc.problem) from exc
    report("layout", 0.4)
    dtype = np.float16 if device == "cuda" else np.float32
    tensors = _engine_tensors(source, manifest, weights_files[0], dtype)
    report("write", 0.6)
    if archs and device != "cuda":
        raise ConvertError(dst, "--arch needs --device cuda")
    _write_bundle(dst, manifest, tensors, vocab, report, archs)
    report("done", 1.0)
    return Manifest.load(dst)


# -- reading the Hugging Face folder ----------------------------------------------


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
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


def _sentence_transformers(src: Path) -> tuple[Path, Pooling, int | None]:
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
            mode = _pooling_mode(sub / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConvertError(
                modules_path, f"sentence-transformers module {kind!r} is not supported"
            )
    st_config = _read_json(model_dir / "sentence_bert_config.json")
    st_max = st_config.get("max_seq_length")
    return model_dir, Pooling(mode=mode, normalize=normalize), int(st_max) if st_max else 0


def _pooling_mode(path: Path) -> str:
    cfg = _read_json(path, required=True)
    on = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
    modes = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
    if len(on) != 1 or on[0] not in modes:
        raise ConvertError(
            path, f"pooling {on} is not supported: use exactly one of {sorted(modes)}"
        )
    return modes[on[0]]


def _model_config(config: dict[str, Any], path: Path) -> tuple[str, ModelConfig]:
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
        else:
            raise ConvertError(
                path, f"model_type {model_type!r} is not supported (bert, distilbert)"
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
    return str(model_type), mc


def _infer_task(config: dict[str, Any], path: Path, *, is_sentence_transformer: bool) -> str:
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


def _labels(config: dict[str, Any], path: Path, task: str) -> tuple[tuple[str, ...], str]:
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
    problem_type = config.get("problem_type")
    if problem_type is None:
        regression = task == "sequence-classification" and len(labels) == 1
        problem_type = "regression" if regression else "single_label_classification"
    if problem_type not in PROBLEM_TYPES:
        raise ConvertError(path, f"problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
    return labels, str(problem_type)


def _tokenizer(model_dir: Path) -> tuple[TokenizerSettings, list[str], Path]:
    """Settings and vocabulary: tokenizer.json wins when present, else vocab.txt + tokenizer_config."""
    tj = model_dir / "tokenizer.json"
    vt = model_dir / VOCAB_NAME
    if tj.is_file():
        from zerostart.tokenize.hf import settings_from_tokenizer_json, vocab_from_tokenizer_json

        try:
            return settings_from_tokenizer_json(tj), vocab_from_tokenizer_json(tj), tj
        except TokenizerError as exc:
            message = str(exc.args[0]).removeprefix(f"{tj}: ")  # ConvertError adds the path
            raise ConvertError(tj, message, hint=exc.hint) from exc
    if not vt.is_file():
        raise ConvertError(model_dir, "no tokenizer: expected tokenizer.json or vocab.txt")
    try:
        vocab = vt.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConvertError(vt, f"not UTF-8: {exc}") from exc
    tc = _read_json(model_dir / "tokenizer_config.json")

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
    return settings, vocab, vt


def _max_length(model_dir: Path, mc: ModelConfig, requested: int | None, st_max: int | None) -> int:
    limit = mc.max_position_embeddings
    if requested is not None:
        if not 2 < requested <= limit:
            raise ConvertError(model_dir, f"max_length {requested} must be in 3..{limit}")
        return requested
    if st_max:
        return min(st_max, limit)
    declared = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    # transformers writes a huge sentinel (1e30) when the length is unknown.
    if isinstance(declared, int | float) and 2 < declared <= limit:
        return int(declared)
    return limit


def _read_source_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    st = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    binf = model_dir / "pytorch_model.bin"
    if st.is_file():
        files = [st]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(index, "has no weight_map")
        files = [model_dir / name for name in sorted(set(map(str, weight_map.values())))]
    elif binf.is_file():
        from zerostart.model.torchbin import BF16Array, load_torch_bin

        raw = load_torch_bin(binf)
        return {k: _to_float32(v, isinstance(v, BF16Array)) for k, v in raw.items()}, [binf]
    else:
        raise ConvertError(model_dir, "no weights: expected model.safetensors or pytorch_model.bin")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        w = map_safetensors(f, error=ConvertError)
        for name, arr in w.items():
            tensors[name] = _to_float32(arr, w.dtypes[name] == "BF16")
    return tensors, files


def _to_float32(arr: np.ndarray, bf16: bool) -> np.ndarray:
    if bf16:
        return (np.asarray(arr, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(arr)


# -- the engine layout -------------------------------------------------------------


def _engine_tensors(
    source: Mapping[str, np.ndarray], manifest: Manifest, path: Path, dtype: type[np.floating[Any]]
) -> dict[str, np.ndarray]:
    """Map Hugging Face tensor names to the engine layout, checking every shape."""
    bert = manifest.architecture == "bert"
    prefix = "bert." if bert else "distilbert."
    c = manifest.config
    h = c.hidden_size

    def get(name: str, shape: tuple[int, ...], *, prefixed: bool = True) -> np.ndarray:
        names = [prefix + name, name] if prefixed else [name]
        if name.endswith("LayerNorm.weight"):
            names += [n[: -len("weight")] + "gamma" for n in names]
        elif name.endswith("LayerNorm.bias"):
            names += [n[: -len("bias")] + "beta" for n in names]
        for n in names:
            if n in source:
                arr = source[n]
                if arr.shape != shape:
                    raise ConvertError(
                        path,
                        f"tensor {n!r} has shape {list(arr.shape)}, expected {list(shape)} from config.json",
                    )
                return arr
        raise ConvertError(path, f"missing tensor {names[0]!r}")

    def linear(
        name: str, n_in: int, n_out: int, *, prefixed: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        w = get(name + ".weight", (n_out, n_in), prefixed=prefixed)  # torch Linear: [out, in]
        return w.T, get(name + ".bias", (n_out,), prefixed=prefixed)

    out: dict[str, np.ndarray] = {}
    out["embed.word"] = get("embeddings.word_embeddings.weight", (c.vocab_size, h))
    out["embed.position"] = _positions(source, prefix, manifest, path, get)
    if bert:
        out["embed.token_type"] = get(
            "embeddings.token_type_embeddings.weight", (c.type_vocab_size, h)
        )
    out["embed.norm.weight"] = get("embeddings.LayerNorm.weight", (h,))
    out["embed.norm.bias"] = get("embeddings.LayerNorm.bias", (h,))
    scale = 1.0 / math.sqrt(h // c.num_heads)
    for i in range(c.num_layers):
        p = layer_prefix(i)
        if bert:
            s = f"encoder.layer.{i}."
            q, k, v = (linear(s + f"attention.self.{n}", h, h) for n in ("query", "key", "value"))
            o = linear(s + "attention.output.dense", h, h)
            n1 = s + "attention.output.LayerNorm"
            up = linear(s + "intermediate.dense", h, c.intermediate_size)
            down = linear(s + "output.dense", c.intermediate_size, h)
            n2 = s + "output.LayerNorm"
        else:
            s = f"transformer.layer.{i}."
            q, k, v = (linear(s + f"attention.{n}", h, h) for n in ("q_lin", "k_lin", "v_lin"))
            o = linear(s + "attention.out_lin", h, h)
            n1 = s + "sa_layer_norm"
            up = linear(s + "ffn.lin1", h, c.intermediate_size)
            down = linear(s + "ffn.lin2", c.intermediate_size, h)
            n2 = s + "output_layer_norm"
        # Scale in float64 so the only rounding is the final cast.
        out[p + "attn.qkv.weight"] = np.concatenate([q[0] * np.float64(scale), k[0], v[0]], axis=1)
        out[p + "attn.qkv.bias"] = np.concatenate([q[1] * np.float64(scale), k[1], v[1]])
        out[p + "attn.out.weight"], out[p + "attn.out.bias"] = o
        out[p + "attn.norm.weight"] = get(n1 + ".weight", (h,))
        out[p + "attn.norm.bias"] = get(n1 + ".bias", (h,))
        out[p + "ffn.up.weight"], out[p + "ffn.up.bias"] = up
        out[p + "ffn.down.weight"], out[p + "ffn.down.bias"] = down
        out[p + "ffn.norm.weight"] = get(n2 + ".weight", (h,))
        out[p + "ffn.norm.bias"] = get(n2 + ".bias", (h,))
    n_labels = len(manifest.labels)
    if manifest.task == "sequence-classification":
        if bert:
            out["head.pooler.weight"], out["head.pooler.bias"] = linear("pooler.dense", h, h)
        else:
            pre = linear("pre_classifier", h, h, prefixed=False)
            out["head.pre_classifier.weight"], out["head.pre_classifier.bias"] = pre
    if manifest.task != "embeddings":
        cls = linear("classifier", h, n_labels, prefixed=False)
        out["head.classifier.weight"], out["head.classifier.bias"] = cls
    # File order = the engine's access order (see layout.tensor_shapes).
    return {name: np.ascontiguousarray(out[name], dtype=dtype) for name in tensor_shapes(manifest)}


def _positions(
    source: Mapping[str, np.ndarray],
    prefix: str,
    manifest: Manifest,
    path: Path,
    get: Callable[..., np.ndarray],
) -> np.ndarray:
    c = manifest.config
    name = "embeddings.position_embeddings.weight"
    if manifest.architecture == "distilbert" and prefix + name not in source and name not in source:
        # A DistilBERT trained with sinusoidal_pos_embds may omit the (frozen) table.
        pos = np.arange(c.max_position_embeddings, dtype=np.float64)[:, None]
        j = np.arange(c.hidden_size)
        angle = pos / np.power(10000.0, 2 * (j // 2) / c.hidden_size)
        table = np.empty_like(angle)
        table[:, 0::2] = np.sin(angle[:, 0::2])
        table[:, 1::2] = np.cos(angle[:, 1::2])
        return table
    return get(name, (c.max_position_embeddings, c.hidden_size))


# -- writing the bundle --------------------------------------------------------------


def _check_destination(dst: Path) -> None:
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ConvertError(dst, "destination exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / MANIFEST_NAME).is_file():
        raise ConvertError(
            dst,
            "destination is a non-empty folder that is not a zerostart bundle: refusing to overwrite it",
            hint="choose a new folder, or remove this one yourself",
        )


def _write_bundle(
    dst: Path,
    manifest: Manifest,
    tensors: Mapping[str, np.ndarray],
    vocab: list[str],
    report: Progress,
    archs: Sequence[str] = (),
) -> None:
    """Write into a temporary sibling folder, then rename it into place."""
    if any("\n" in t or "\r" in t for t in vocab):
        raise ConvertError(
            dst, "a vocabulary token contains a line break; vocab.txt cannot hold it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    old: Path | None = None
    try:
        weights_path = tmp / WEIGHTS_NAME
        write_weights(weights_path, tensors, {"format": "np", "zerostart.layout": LAYOUT_VERSION})
        (tmp / VOCAB_NAME).write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        names = [WEIGHTS_NAME, VOCAB_NAME]
        if archs:  # GPU kernels, compiled ahead of time (Triton, build time only)
            from zerostart.kernels.aot import compile_for_bundle

            compile_for_bundle(manifest, tmp, list(archs), report)
            names += sorted(p.relative_to(tmp).as_posix() for p in (tmp / "kernels").iterdir())
        report("hash", 0.8)
        files = {name: _file_entry(tmp / name) for name in names}
        (tmp / MANIFEST_NAME).write_text(manifest.with_files(files).to_json(), encoding="utf-8")
        for name in (WEIGHTS_NAME, VOCAB_NAME, MANIFEST_NAME):
            _fsync(tmp / name)
        if dst.exists():
            _check_destination(dst)  # re-check: it may have changed while we wrote
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / "bundle")
        os.replace(tmp, dst)
        _fsync(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            os.replace(old / "bundle", dst)  # put the previous bundle back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _file_entry(path: Path) -> FileEntry:
    header = ""
    if path.name.endswith(".safetensors"):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(0)
            header = hashlib.sha256(f.read(8 + n)).hexdigest()
    return FileEntry(sha256=_sha256_files([path]), size=path.stat().st_size, header_sha256=header)


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
