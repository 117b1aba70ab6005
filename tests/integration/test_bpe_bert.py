"""Encoders with a byte-level BPE tokenizer, converted and served by a real worker.

Two seeded random-weight models (mean pooling, a sentence-transformers layout)
whose tokenizer.json is the RoBERTa-layout byte-level BPE trained by
tests/bpe_tokenizers.py (40,005 tokens, so the embedding table has 40,005
rows): a ``BertModel``, and a ``RobertaModel`` (positions from padding_idx + 1,
which convert maps onto the BERT engine): a RoBERTa checkpoint end to end.
References: Hugging Face `tokenizers` on the same tokenizer.json for /tokenize
and /decode (TEI's own tokenizer), PyTorch + transformers' ``AutoModel`` on
`tokenizers`' ids for /embed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server_robustness import Worker

from bpe_tokenizers import trained

pytestmark = [pytest.mark.integration, pytest.mark.parity]

EMBED_TOLERANCE = 1e-4  # max |ours - reference| per embedding component
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello <mask> world, it's  two  spaces\tand\nlines",
    "Grüße aus Köln, naïve café — 東京 👍🏽 Привет مرحبا नमस्ते",
    "<s>written specials</s> and 3.14159 numbers 1,000,000",
    "x",
    "   ",
)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BertModel / RobertaModel folder with the trained RoBERTa-layout tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp(f"bpe-{request.param}")
    shared = tmp_path_factory.getbasetemp() / "bpe-tokenizer"  # trained once per session
    shared.mkdir(exist_ok=True)
    tokenizer_json = trained("roberta", shared)
    vocab_size = tokenizers.Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    torch.manual_seed(20261207)
    shape = {"vocab_size": vocab_size, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 128, "pad_token_id": 1}  # fmt: skip
    if request.param == "roberta":  # 2 position rows before position 0 (padding_idx + 1)
        config = transformers.RobertaConfig(**shape, max_position_embeddings=514, type_vocab_size=1)
        model = transformers.RobertaModel(config, add_pooling_layer=False).eval()
    else:
        config = transformers.BertConfig(**shape, max_position_embeddings=512)
        model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    specials = {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
                "unk_token": "<unk>", "mask_token": "<mask>"}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps({**specials, "model_max_length": 512}))
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )  # fmt: skip
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    return out


@pytest.fixture(scope="module")
def bundle(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zerostart.model.convert import convert

    out = tmp_path_factory.mktemp("bundles") / f"bpe-{folder.name}"
    manifest = convert(folder, out, device="cpu")
    assert manifest.tokenizer.model == "BPE"
    assert (out / "tokenizer.bin").is_file() and not (out / "vocab.txt").exists()
    return out


@pytest.fixture(scope="module")
def w(bundle: Path) -> Iterator[Worker]:
    with Worker(bundle) as worker:
        yield worker
        worker.terminate()
        assert worker.wait() == 0


def _reference_tokenizer(folder: Path) -> Any:
    import tokenizers

    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    return ref


def _reference_embeddings(folder: Path, texts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(normalised, unnormalised) mean-pooled BertModel states on `tokenizers`' padded ids."""
    import torch
    import transformers

    torch.set_num_threads(1)
    ref = _reference_tokenizer(folder)
    ref.enable_truncation(max_length=512)
    ref.enable_padding(pad_id=ref.token_to_id("<pad>"), pad_token="<pad>")
    encs = ref.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    types = torch.tensor([e.type_ids for e in encs])
    model = transformers.AutoModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    weights = mask.unsqueeze(-1).expand(hidden.size()).float()
    mean = (hidden * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy(), mean.numpy()


def test_embed_matches_transformers_on_tokenizers_ids(w: Worker, folder: Path) -> None:
    want, want_raw = _reference_embeddings(folder, TEXTS)
    status, got = w.request("POST", "/embed", {"inputs": list(TEXTS)})
    assert status == 200
    got_arr = np.array(got)
    assert got_arr.shape == want.shape == (len(TEXTS), 64)
    worst = float(np.abs(got_arr - want).max())
    assert worst <= EMBED_TOLERANCE, f"max |diff| {worst:.2e}"
    status, raw = w.request("POST", "/embed", {"inputs": list(TEXTS), "normalize": False})
    assert status == 200 and float(np.abs(np.array(raw) - want_raw).max()) <= EMBED_TOLERANCE


def test_embed_is_padding_invariant(w: Worker) -> None:
    """A text alone, and batched with a much longer one, gets the same vector."""
    long_text = " ".join(TEXTS) * 8
    for text in TEXTS[:3]:
        status, alone = w.request("POST", "/embed", {"inputs": text})
        assert status == 200
        status, batched = w.request("POST", "/embed", {"inputs": [long_text, text]})
        assert status == 200
        assert float(np.abs(np.array(alone[0]) - np.array(batched[1])).max()) <= 1e-5


def test_tokenize_matches_tokenizers_with_byte_offsets(w: Worker, folder: Path) -> None:
    ref = _reference_tokenizer(folder)
    for add_special in (True, False):
        status, got = w.request(
            "POST", "/tokenize", {"inputs": list(TEXTS), "add_special_tokens": add_special}
        )
        assert status == 200
        for text, tokens in zip(TEXTS, got, strict=True):
            want = ref.encode(text, add_special_tokens=add_special)
            assert [t["id"] for t in tokens] == want.ids, text
            data = text.encode()
            for tok, special, (a, b), piece in zip(
                tokens, want.special_tokens_mask, want.offsets, want.tokens, strict=True
            ):
                assert tok["special"] == bool(special)
                if special:
                    assert (tok["text"], tok["start"], tok["stop"]) == (piece, None, None)
                else:  # TEI's start/stop are UTF-8 byte offsets; text is the original span
                    start, stop = len(text[:a].encode()), len(text[:b].encode())
                    assert (tok["start"], tok["stop"]) == (start, stop), (text, piece)
                    assert tok["text"] == data[start:stop].decode() == text[a:b]


def test_decode_matches_tokenizers(w: Worker, folder: Path) -> None:
    ref = _reference_tokenizer(folder)
    for text in TEXTS:
        ids = ref.encode(text).ids
        for skip in (True, False):
            status, got = w.request("POST", "/decode", {"ids": ids, "skip_special_tokens": skip})
            assert (status, got) == (200, [ref.decode(ids, skip_special_tokens=skip)])
    # ids that cut a character's UTF-8 bytes: U+FFFD where Rust's from_utf8_lossy puts it
    cut = ref.encode("東京 👍🏽").ids[1:-1]
    status, got = w.request("POST", "/decode", {"ids": [cut[:1], cut[1:]]})
    assert (status, got) == (200, [ref.decode(cut[:1]), ref.decode(cut[1:])])
    status, got = w.request("POST", "/decode", {"ids": [ref.get_vocab_size() + 7]})
    assert status == 422 and "outside the vocabulary" in json.dumps(got)


def test_lone_surrogate_is_422_not_a_crash(w: Worker) -> None:
    """JSON's "\\ud800" escape parses to a lone surrogate, which has no UTF-8 bytes."""
    for route in ("/embed", "/tokenize"):
        status, got = w.request("POST", route, raw=b'{"inputs": "a\\ud800b"}')
        assert status == 422 and "not valid Unicode" in json.dumps(got), (route, got)
    status, _ = w.request("POST", "/embed", {"inputs": "still serving"})
    assert status == 200


def test_served_ner_on_byte_level_bpe_matches_the_pipeline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """/tokens of a RoBERTa tagger: transformers' fallback subword rule (no "##" in BPE)."""
    import torch
    import transformers

    from zerostart.model.convert import convert

    shared = tmp_path_factory.getbasetemp() / "bpe-tokenizer"
    shared.mkdir(exist_ok=True)
    tokenizer_json = trained("roberta", shared)
    src = tmp_path_factory.mktemp("bpe-ner")
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    torch.manual_seed(7)
    config = transformers.RobertaConfig(
        vocab_size=40_005, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1,
        id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)},
    )  # fmt: skip
    model = transformers.RobertaForTokenClassification(config).eval()
    model.save_pretrained(src, safe_serialization=True)
    (src / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    specials = {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
                "unk_token": "<unk>", "mask_token": "<mask>", "bos_token": "<s>",
                "eos_token": "</s>"}  # fmt: skip
    (src / "tokenizer_config.json").write_text(json.dumps({**specials, "model_max_length": 512}))
    out = tmp_path_factory.mktemp("bundles") / "bpe-ner"
    convert(src, out, device="cpu")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), **specials)
    text = "Angela Merkel visited Paris and Zürich; unaffable Smith-Jones in São Paulo"
    with Worker(out) as worker:
        for strategy in ("simple", "first", "average", "max"):
            nlp = transformers.pipeline(
                "token-classification", model=model, tokenizer=fast, aggregation_strategy=strategy
            )
            want = nlp(text)
            status, got = worker.request(
                "POST", "/tokens", {"inputs": text, "aggregation_strategy": strategy}
            )
            assert status == 200 and len(got) == len(want), (strategy, got, want)
            for a, b in zip(got, want, strict=True):
                assert (a["entity_group"], a["word"], a["start"], a["end"]) == (
                    b["entity_group"], b["word"], b["start"], b["end"],
                ), strategy  # fmt: skip
                assert abs(a["score"] - float(b["score"])) <= 1e-4
        worker.terminate()
        assert worker.wait() == 0
