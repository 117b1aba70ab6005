"""convert(): Hugging Face folder -> bundle, the engine layout, and every refusal.

Tiny folders are written here with numpy + the safetensors library (no torch)
in Hugging Face's own tensor naming; the real model folders come from
tests/conftest.py. Numerical parity with transformers is in test_engine_parity.py.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.layout import tensor_shapes
from zerostart.bundle.manifest import Manifest
from zerostart.bundle.weights import ALIGN_BYTES, map_weights
from zerostart.errors import ConvertError
from zerostart.model.convert import convert

st = pytest.importorskip("safetensors.numpy")

H, LAYERS, HEADS, FFN, VOCAB, POS = 32, 2, 4, 48, 40, 24


def hf_state(
    arch: str, task: str, n_labels: int = 3, *, prefixed: bool = True
) -> dict[str, np.ndarray]:
    """A random state dict named exactly as transformers names it."""
    rng = np.random.default_rng(1)

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    s: dict[str, np.ndarray] = {}
    if arch == "bert":
        p = "bert." if prefixed else ""
        s[p + "embeddings.word_embeddings.weight"] = r(VOCAB, H)
        s[p + "embeddings.position_embeddings.weight"] = r(POS, H)
        s[p + "embeddings.token_type_embeddings.weight"] = r(2, H)
        s[p + "embeddings.LayerNorm.weight"] = 1 + r(H)
        s[p + "embeddings.LayerNorm.bias"] = r(H)
        for i in range(LAYERS):
            q = f"{p}encoder.layer.{i}."
            for n in ("query", "key", "value"):
                s[q + f"attention.self.{n}.weight"], s[q + f"attention.self.{n}.bias"] = (
                    r(H, H),
                    r(H),
                )
            s[q + "attention.output.dense.weight"], s[q + "attention.output.dense.bias"] = (
                r(H, H),
                r(H),
            )
            s[q + "attention.output.LayerNorm.weight"] = 1 + r(H)
            s[q + "attention.output.LayerNorm.bias"] = r(H)
            s[q + "intermediate.dense.weight"], s[q + "intermediate.dense.bias"] = r(FFN, H), r(FFN)
            s[q + "output.dense.weight"], s[q + "output.dense.bias"] = r(H, FFN), r(H)
            s[q + "output.LayerNorm.weight"], s[q + "output.LayerNorm.bias"] = 1 + r(H), r(H)
        if task == "sequence-classification":
            s[p + "pooler.dense.weight"], s[p + "pooler.dense.bias"] = r(H, H), r(H)
    else:
        p = "distilbert." if prefixed else ""
        s[p + "embeddings.word_embeddings.weight"] = r(VOCAB, H)
        s[p + "embeddings.position_embeddings.weight"] = r(POS, H)
        s[p + "embeddings.LayerNorm.weight"] = 1 + r(H)
        s[p + "embeddings.LayerNorm.bias"] = r(H)
        for i in range(LAYERS):
            q = f"{p}transformer.layer.{i}."
            for n in ("q_lin", "k_lin", "v_lin", "out_lin"):
                s[q + f"attention.{n}.weight"], s[q + f"attention.{n}.bias"] = r(H, H), r(H)
            s[q + "sa_layer_norm.weight"], s[q + "sa_layer_norm.bias"] = 1 + r(H), r(H)
            s[q + "ffn.lin1.weight"], s[q + "ffn.lin1.bias"] = r(FFN, H), r(FFN)
            s[q + "ffn.lin2.weight"], s[q + "ffn.lin2.bias"] = r(H, FFN), r(H)
            s[q + "output_layer_norm.weight"], s[q + "output_layer_norm.bias"] = 1 + r(H), r(H)
        if task == "sequence-classification":
            s["pre_classifier.weight"], s["pre_classifier.bias"] = r(H, H), r(H)
    if task != "embeddings":
        s["classifier.weight"], s["classifier.bias"] = r(n_labels, H), r(n_labels)
    return s


def hf_config(arch: str, task: str, n_labels: int = 3) -> dict:
    suffix = {
        "sequence-classification": "ForSequenceClassification",
        "token-classification": "ForTokenClassification",
        "embeddings": "Model",
    }[task]
    if arch == "bert":
        cfg = {
            "model_type": "bert",
            "architectures": [f"Bert{suffix}"],
            "hidden_size": H,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": FFN,
            "vocab_size": VOCAB,
            "max_position_embeddings": POS,
            "type_vocab_size": 2,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
        }
    else:
        cfg = {
            "model_type": "distilbert",
            "architectures": [f"DistilBert{suffix}"],
            "dim": H,
            "n_layers": LAYERS,
            "n_heads": HEADS,
            "hidden_dim": FFN,
            "vocab_size": VOCAB,
            "max_position_embeddings": POS,
            "activation": "gelu",
        }
    if task != "embeddings":
        cfg["id2label"] = {str(i): f"L{i}" for i in range(n_labels)}
    return cfg


def make_folder(
    root: Path, arch: str = "bert", task: str = "sequence-classification", *, prefixed: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(hf_config(arch, task)))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (root / "vocab.txt").write_text(
        "".join(t + "\n" for t in special + [f"w{i}" for i in range(VOCAB - 5)])
    )
    (root / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": False, "model_max_length": 16})
    )
    st.save_file(hf_state(arch, task, prefixed=prefixed), str(root / "model.safetensors"))
    return root


@pytest.fixture
def bert_cls(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "tiny-bert")


# -- the happy path -------------------------------------------------------------


def test_bert_bundle_manifest_files_and_layout(bert_cls: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    m = convert(bert_cls, tmp_path / "out", progress=lambda s, f: seen.append((s, f)))
    assert (m.architecture, m.task, m.labels) == (
        "bert",
        "sequence-classification",
        ("L0", "L1", "L2"),
    )
    assert (m.dtype, m.device, m.max_length) == ("float32", "cpu", 16)  # tokenizer_config's length
    assert m.tokenizer.lowercase is False
    assert m == Manifest.load(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "kernels",  # the native CPU kernels, one per default target (test_cpu_arch.py)
        "manifest.json",
        "tokenizer.bin",  # the vocabulary again, as the mapped tables the worker reads
        "vocab.txt",
        "weights.safetensors",
    ]
    from zerostart.engine.cpu_tuning import BUNDLE_TABLE

    assert sorted(m.files) == sorted(
        [
            "tokenizer.bin",
            "vocab.txt",
            "weights.safetensors",
            BUNDLE_TABLE,  # the CPU GEMM tuning table the worker picks its row from
            *(b.file for b in m.cpu_kernels.values()),
        ]
    )
    import hashlib

    for name, entry in m.files.items():
        data = (tmp_path / "out" / name).read_bytes()
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    source = bert_cls / "model.safetensors"
    assert m.source["weights_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert m.source["folder"] == "tiny-bert" and m.source["architectures"] == [
        "BertForSequenceClassification"
    ]
    w = map_weights(tmp_path / "out" / "weights.safetensors")
    assert {k: v.shape for k, v in w.items()} == tensor_shapes(m)
    assert list(w) == list(tensor_shapes(m))  # file order is access order
    assert seen[-1] == ("done", 1.0) and [f for _, f in seen] == sorted(f for _, f in seen)


def test_qkv_is_fused_transposed_and_query_prescaled(bert_cls: Path, tmp_path: Path) -> None:
    m = convert(bert_cls, tmp_path / "out")
    w = map_weights(tmp_path / "out" / "weights.safetensors")
    s = hf_state("bert", "sequence-classification")
    p = "bert.encoder.layer.1.attention."
    qkv, bias = w["layer.1.attn.qkv.weight"], w["layer.1.attn.qkv.bias"]
    scale = 1 / math.sqrt(H // HEADS)
    np.testing.assert_allclose(qkv[:, :H], s[p + "self.query.weight"].T * scale, rtol=1e-6)
    np.testing.assert_array_equal(qkv[:, H : 2 * H], s[p + "self.key.weight"].T)
    np.testing.assert_array_equal(qkv[:, 2 * H :], s[p + "self.value.weight"].T)
    np.testing.assert_allclose(bias[:H], s[p + "self.query.bias"] * scale, rtol=1e-6)
    np.testing.assert_array_equal(
        w["layer.1.ffn.down.weight"], s["bert.encoder.layer.1.output.dense.weight"].T
    )
    np.testing.assert_array_equal(w["head.classifier.weight"], s["classifier.weight"].T)
    assert m.config.num_layers == LAYERS


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_every_architecture_and_task_converts(tmp_path: Path, arch: str, task: str) -> None:
    m = convert(make_folder(tmp_path / "src", arch, task), tmp_path / "out")
    assert (m.architecture, m.task) == (arch, task)
    assert m.config.type_vocab_size == (2 if arch == "bert" else 0)
    assert set(map_weights(tmp_path / "out" / "weights.safetensors")) == set(tensor_shapes(m))


def test_unprefixed_keys_convert_to_the_same_weights(tmp_path: Path) -> None:
    convert(make_folder(tmp_path / "a", "bert", "embeddings", prefixed=True), tmp_path / "oa")
    convert(make_folder(tmp_path / "b", "bert", "embeddings", prefixed=False), tmp_path / "ob")
    assert (tmp_path / "oa/weights.safetensors").read_bytes() == (
        tmp_path / "ob/weights.safetensors"
    ).read_bytes()


def test_task_override_and_cuda_fp16(bert_cls: Path, tmp_path: Path) -> None:
    m = convert(bert_cls, tmp_path / "emb", task="embeddings", max_length=20)
    assert (m.task, m.labels, m.max_length) == ("embeddings", (), 20)
    m = convert(bert_cls, tmp_path / "gpu", device="cuda")
    assert (m.device, m.dtype) == ("cuda", "float16")
    w = map_weights(tmp_path / "gpu" / "weights.safetensors")
    assert {a.dtype for a in w.values()} == {np.dtype(np.float16)}


def test_existing_bundle_is_replaced_and_no_temporaries_are_left(
    bert_cls: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    convert(bert_cls, out, task="embeddings")
    m = convert(bert_cls, out)
    assert Manifest.load(out).task == m.task == "sequence-classification"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-bert"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(bert_cls: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ConvertError, match="not a zerostart bundle"):
        convert(bert_cls, precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ConvertError, match="not a zerostart bundle"):
        convert(bert_cls, bert_cls)  # converting a folder onto itself


def test_failed_conversion_leaves_the_old_bundle_and_no_temporaries(
    bert_cls: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    before = convert(bert_cls, out)
    (bert_cls / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConvertError):
        convert(bert_cls, out)
    assert Manifest.load(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-bert"]


# -- refusals ---------------------------------------------------------------------


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder: Path, **changes: np.ndarray | None) -> None:
    state = dict(st.load_file(str(folder / "model.safetensors")))
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del state[k]
        else:
            state[k] = v
    st.save_file(state, str(folder / "model.safetensors"))


def test_missing_files(bert_cls: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="model folder not found"):
        convert(tmp_path / "nowhere", tmp_path / "o1")
    vocab = (bert_cls / "vocab.txt").read_bytes()
    (bert_cls / "vocab.txt").unlink()
    with pytest.raises(ConvertError, match="no tokenizer") as info:
        convert(bert_cls, tmp_path / "o2")
    assert info.value.path == str(bert_cls)
    (bert_cls / "vocab.txt").write_bytes(vocab)
    (bert_cls / "model.safetensors").unlink()
    with pytest.raises(ConvertError, match="no weights"):
        convert(bert_cls, tmp_path / "o3")
    (bert_cls / "config.json").unlink()
    with pytest.raises(ConvertError, match="file not found") as info:
        convert(bert_cls, tmp_path / "o4")
    assert info.value.path.endswith("config.json")
    assert not (tmp_path / "o4").exists()


def test_unknown_model_type_and_architecture(bert_cls: Path, tmp_path: Path) -> None:
    _edit_config(bert_cls, architectures=["BertForMaskedLM"])
    with pytest.raises(ConvertError, match="cannot tell the task"):
        convert(bert_cls, tmp_path / "o1")
    assert convert(bert_cls, tmp_path / "o2", task="embeddings").task == "embeddings"
    _edit_config(bert_cls, model_type="gpt2")
    with pytest.raises(ConvertError, match="model_type 'gpt2' is not supported"):
        convert(bert_cls, tmp_path / "o3")
    _edit_config(bert_cls, model_type="bert", hidden_act="swish")
    with pytest.raises(ConvertError, match="activation 'swish'"):
        convert(bert_cls, tmp_path / "o4", task="embeddings")


def test_missing_tensor_names_it(bert_cls: Path, tmp_path: Path) -> None:
    _edit_weights(bert_cls, **{"bert__encoder__layer__1__output__dense__bias": None})
    with pytest.raises(
        ConvertError, match=re.escape("missing tensor 'bert.encoder.layer.1.output.dense.bias'")
    ) as info:
        convert(bert_cls, tmp_path / "out")
    assert info.value.path.endswith("model.safetensors")


def test_embeddings_folder_cannot_be_forced_into_a_classifier(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "emb", "bert", "embeddings")
    _edit_config(folder, id2label={"0": "a", "1": "b"})
    with pytest.raises(ConvertError, match=re.escape("missing tensor 'classifier.weight'")):
        convert(folder, tmp_path / "out", task="token-classification")


def test_shape_mismatch_names_tensor_expected_and_actual(bert_cls: Path, tmp_path: Path) -> None:
    _edit_weights(
        bert_cls,
        **{
            "bert__encoder__layer__0__intermediate__dense__weight": np.zeros(
                (FFN + 1, H), np.float32
            )
        },
    )
    with pytest.raises(ConvertError) as info:
        convert(bert_cls, tmp_path / "out")
    msg = str(info.value)
    assert "bert.encoder.layer.0.intermediate.dense.weight" in msg
    assert f"[{FFN + 1}, {H}]" in msg and f"expected [{FFN}, {H}]" in msg


def test_num_labels_mismatches(bert_cls: Path, tmp_path: Path) -> None:
    _edit_config(bert_cls, num_labels=5)
    with pytest.raises(ConvertError, match="num_labels is 5 but id2label has 3"):
        convert(bert_cls, tmp_path / "o1")
    _edit_config(bert_cls, num_labels=None, id2label={"0": "a", "1": "b"})
    with pytest.raises(
        ConvertError, match=r"'classifier.weight' has shape \[3, 32\], expected \[2, 32\]"
    ):
        convert(bert_cls, tmp_path / "o2")
    _edit_config(bert_cls, id2label={"0": "a", "2": "b"})
    with pytest.raises(ConvertError, match="id2label ids must be"):
        convert(bert_cls, tmp_path / "o3")


def test_vocab_size_mismatch(bert_cls: Path, tmp_path: Path) -> None:
    with (bert_cls / "vocab.txt").open("a") as f:
        f.write("extra\n")
    with pytest.raises(
        ConvertError, match=f"{VOCAB + 1} tokens but config.json says vocab_size={VOCAB}"
    ):
        convert(bert_cls, tmp_path / "out")


@pytest.mark.parametrize("cut", [-7, 100, 4])
def test_truncated_or_corrupt_safetensors(bert_cls: Path, tmp_path: Path, cut: int) -> None:
    path = bert_cls / "model.safetensors"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ConvertError) as info:
        convert(bert_cls, tmp_path / "out")
    assert info.value.path == str(path)


def test_bad_max_length_and_device(bert_cls: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="max_length 999"):
        convert(bert_cls, tmp_path / "o1", max_length=999)
    with pytest.raises(ConvertError, match="device 'tpu'"):
        convert(bert_cls, tmp_path / "o2", device="tpu")


# -- pytorch_model.bin ---------------------------------------------------------


def _torch_zip(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)


class _RunsShell:
    """Pickles as a call to os.system: what a malicious checkpoint contains."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)


def test_bin_with_a_disallowed_global_is_refused_without_running_it(
    bert_cls: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _RunsShell(f"touch {marker}")}, protocol=2)
    (bert_cls / "model.safetensors").unlink()
    _torch_zip(bert_cls / "pytorch_model.bin", payload)
    with pytest.raises(
        ConvertError, match=r"refusing to unpickle global (os|posix)\.system"
    ) as info:
        convert(bert_cls, tmp_path / "out")
    assert info.value.path.endswith("pytorch_model.bin")
    assert not marker.exists()


def test_bin_that_is_not_a_zip_is_refused(bert_cls: Path, tmp_path: Path) -> None:
    (bert_cls / "model.safetensors").unlink()
    (bert_cls / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConvertError, match="not a zip archive"):
        convert(bert_cls, tmp_path / "out")


@pytest.mark.parity
def test_torch_bin_reader_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from zerostart.model.torchbin import BF16Array, load_torch_bin

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "plain": base,
        "transposed": base.t(),  # non-contiguous view
        "slice": base[1:3, 2:],  # offset view sharing base's storage
        "half": base.half(),
        "bf16": (base / 7).bfloat16(),
        "ids": torch.arange(5),
    }
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    got = load_torch_bin(path)
    assert set(got) == set(state)
    for name in ("plain", "transposed", "slice", "half", "ids"):
        np.testing.assert_array_equal(got[name], state[name].numpy())
        assert got[name].flags.c_contiguous
    assert isinstance(got["bf16"], BF16Array)
    widened = (np.asarray(got["bf16"], np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, state["bf16"].float().numpy())

    # The same archive with its storage cut short: the tensor view no longer fits.
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    storage = next(n for n in members if "/data/" in n and len(members[n]) == 24 * 4)
    members[storage] = members[storage][:40]
    with zipfile.ZipFile(path, "w") as z:
        for n, raw in members.items():
            z.writestr(n, raw)
    with pytest.raises(ConvertError, match="outside its storage"):
        load_torch_bin(path)


# -- real folders (tests/conftest.py) ------------------------------------------------


def test_real_bin_and_safetensors_folders_give_identical_weights(
    minilm_sst2_dir: Path, minilm_sst2_bin_dir: Path, tmp_path: Path
) -> None:
    a = convert(minilm_sst2_dir, tmp_path / "st")
    b = convert(minilm_sst2_bin_dir, tmp_path / "bin")
    assert a.files["weights.safetensors"] == b.files["weights.safetensors"]
    assert b.source["weights_files"] == ["pytorch_model.bin"]


def test_real_sentence_transformers_folder(minilm_embed_dir: Path, tmp_path: Path) -> None:
    m = convert(minilm_embed_dir, tmp_path / "out")
    assert m.task == "embeddings"
    assert (m.pooling.mode, m.pooling.normalize) == ("mean", True)
    assert m.max_length == 256  # sentence_bert_config.json, not tokenizer_config's 512
    assert m.tokenizer.lowercase is True
    assert (tmp_path / "out" / "vocab.txt").read_text().splitlines() == (
        minilm_embed_dir / "vocab.txt"
    ).read_text().splitlines()


def test_real_tokenizer_json_only_folder(quire_tagger_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "quire-no-vocab"  # the folder as quire ships it: tokenizer.json, no vocab.txt
    src.mkdir()
    for f in quire_tagger_dir.iterdir():
        if f.name != "vocab.txt":
            (src / f.name).symlink_to(f)
    m = convert(src, tmp_path / "out")
    assert (m.architecture, m.task, len(m.labels)) == ("distilbert", "token-classification", 213)
    assert m.tokenizer.lowercase is False  # cased DistilBERT
    vocab = (tmp_path / "out" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == m.config.vocab_size and all(vocab[i] == t for t, i in tokens.items())


def test_real_weights_are_aligned(rampart_ner_dir: Path, tmp_path: Path) -> None:
    m = convert(rampart_ner_dir, tmp_path / "out")
    assert len(m.labels) == 35
    w = map_weights(tmp_path / "out" / "weights.safetensors")
    base = np.frombuffer(w.buffer, np.uint8).ctypes.data
    assert all((a.ctypes.data - base) % ALIGN_BYTES == 0 for a in w.values())


def test_the_model_name_clients_see_is_recorded_and_survives_a_move(
    bert_cls: Path, tmp_path: Path
) -> None:
    from zerostart.pipeline import Pipeline

    convert(bert_cls, tmp_path / "my-classifier")
    assert Manifest.load(tmp_path / "my-classifier").source["name"] == "my-classifier"
    convert(bert_cls, tmp_path / "b", name="sentiment-v2")
    (tmp_path / "b").rename(tmp_path / "model")  # as inside an image: the folder is /model
    assert Pipeline.load(tmp_path / "model").model_id == "sentiment-v2"
