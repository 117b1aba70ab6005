"""DeBERTa-v2/v3 folders built here, offline: random weights from a config, a trained tokenizer.

* ``tiny_deberta``: transformers builds a ``DebertaV2*`` model from a config
  shaped like deberta-v3 (relative attention, c2p + p2c, shared key, a
  LayerNorm on the relative embeddings, no absolute positions, no token
  types) at a tiny size, every parameter perturbed (the default init leaves
  LayerNorms at 1/0 and biases at 0, which would hide mistakes), and saves it.
* ``deberta_tokenizer``: a Unigram model trained by `tokenizers` on the parity
  corpus, laid out by transformers' own ``DebertaV2Tokenizer`` with the
  ``nmt_nfkc`` charsmap of sentencepiece's wheel: the tokenizer.json a
  deberta-v3 checkpoint carries (Precompiled + Strip + Replace normalizers,
  ``Sequence[Metaspace]``, ``[CLS] A [SEP] B [SEP]`` with type ids 0/1).

Importable from every test folder: pytest puts tests/ on sys.path for its conftest.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest

TASK_CLASSES = {
    "sequence-classification": "DebertaV2ForSequenceClassification",
    "token-classification": "DebertaV2ForTokenClassification",
    "embeddings": "DebertaV2Model",
}
V3_SHAPE: dict[str, Any] = {
    "relative_attention": True,
    "position_buckets": 16,  # 256 in deberta-v3; 16 puts log buckets inside 512 tokens
    "max_relative_positions": -1,
    "pos_att_type": ["p2c", "c2p"],
    "share_att_key": True,
    "norm_rel_ebd": "layer_norm",
    "position_biased_input": False,
    "type_vocab_size": 0,
    "layer_norm_eps": 1e-7,
    "max_position_embeddings": 512,
    "hidden_act": "gelu",
}
TOKENIZER_VOCAB = 3000  # pieces asked of the trainer


def tiny_deberta(
    folder: Path,
    task: str,
    *,
    vocab_size: int = 99,
    labels: int = 3,
    seed: int = 0,
    safetensors: bool = True,
    **overrides: Any,
) -> Any:
    """Save a perturbed random ``DebertaV2*`` for ``task`` into ``folder``; return the model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    shape = {
        **V3_SHAPE,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "pad_token_id": 0,
        **overrides,
    }
    if task != "embeddings":
        shape.setdefault("id2label", {i: f"L{i}" for i in range(labels)})
    config = transformers.DebertaV2Config(**shape)
    model = getattr(transformers, TASK_CLASSES[task])(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    if (
        not safetensors
    ):  # the older pytorch_model.bin checkpoint (transformers 5 writes safetensors)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    # a placeholder WordPiece vocabulary (the engine tests feed ids); deberta_tokenizer's
    # files replace it where text goes in
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + [f"t{i}" for i in range(len(specials), vocab_size)]
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in words))
    return model


def _charsmap() -> bytes:
    spec = importlib.util.find_spec("sentencepiece")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sentencepiece is not installed (its wheel carries the nmt_nfkc charsmap)")
    path = Path(spec.submodule_search_locations[0]) / "package_data" / "nmt_nfkc.bin"
    if not path.is_file():
        pytest.skip("this sentencepiece has no package_data/nmt_nfkc.bin")
    return path.read_bytes()


def _corpus() -> list[str]:
    path = Path(__file__).parent / "unit" / "tokenizer_corpus.py"
    spec = importlib.util.spec_from_file_location("tokenizer_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts: list[str] = list(module.corpus())
    return texts


def deberta_tokenizer(folder: Path) -> int:
    """Write a deberta-v3-layout tokenizer (tokenizer.json + configs) into ``folder``;
    return its vocabulary size. Cached: a folder that has one keeps it."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    if not (folder / "tokenizer.json").is_file():
        corpus = _corpus()
        rng = random.Random(11)
        words = " ".join(corpus).split()
        texts = corpus + [" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)]
        tok = tokenizers.Tokenizer(tokenizers.models.Unigram())
        tok.normalizer = tokenizers.normalizers.Precompiled(_charsmap())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
        trainer = tokenizers.trainers.UnigramTrainer(
            vocab_size=TOKENIZER_VOCAB,
            special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]"],
            unk_token="[UNK]",
            max_piece_length=12,
        )
        tok.train_from_iterator(texts, trainer)
        vocab = [(p, s) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
        ours = transformers.DebertaV2Tokenizer(
            vocab=vocab, unk_id=3, _spm_precompiled_charsmap=_charsmap()
        )
        ours.save_pretrained(folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return len(data["model"]["vocab"]) + sum(
        1 for t in data["added_tokens"] if t["id"] >= len(data["model"]["vocab"])
    )
