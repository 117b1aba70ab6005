"""ModernBERT folders converted and served by a real worker, answering as transformers does.

Three seeded random-weight models share the ModernBERT-layout byte-level BPE
tokenizer trained by tests/bpe_tokenizers.py (``[CLS] A [SEP] B [SEP]``,
40,005 tokens): a sentence-transformers ``ModernBertModel`` with mean pooling
(/embed), a three-label ``ModernBertForSequenceClassification`` with
``classifier_pooling: mean`` (/predict) and a one-label cross-encoder (/rerank).
A 16-token window (8 each side) so every text but the shortest crosses it.
References: `tokenizers` on the same tokenizer.json for the ids, PyTorch +
transformers fp32 eager for the numbers. The worker serves from the native
kernels: numpy never loads (the import pin of tests/unit/test_serve_imports.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server_robustness import Worker

from bpe_tokenizers import trained
from modernbert_models import build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serve_imports import FORBIDDEN, WORKER_ALLOWED

pytestmark = [pytest.mark.integration, pytest.mark.parity]

TOLERANCE = 1e-4
TEXTS = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.",
    "Grüße aus Köln, naïve café — 東京 👍🏽 Привет مرحبا नमस्ते",
    "x",
    "def f(x):\n    return x  *  2  # spaces    and tabs\t",
)
QUERY = "where does the fox run?"
SPECIALS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "unk_token": "[UNK]", "mask_token": "[MASK]"}  # fmt: skip
IDS = {
    "pad_token_id": 3,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "cls_token_id": 1,
    "sep_token_id": 2,
}
WRAPPER = """
import atexit, json, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv[0] = "zerostart.serve"
runpy.run_module("zerostart.serve", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tokenizers")
    shared = tmp_path_factory.getbasetemp() / "bpe-tokenizer"  # trained once per session
    shared.mkdir(exist_ok=True)
    return trained("modernbert", shared)


def _folder(out: Path, task: str, tokenizer_json: Path, **kwargs: Any) -> Path:
    import tokenizers

    vocab = tokenizers.Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    build(
        out, task, vocab_size=vocab, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=96, local_attention=16, max_position_embeddings=8192, **IDS, **kwargs,
    )  # fmt: skip
    (out / "vocab.txt").unlink()
    (out / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    config = {**SPECIALS, "model_max_length": 8192}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _encode(tokenizer_json: Path, inputs: list[Any]) -> tuple[Any, Any]:
    import tokenizers
    import torch

    ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    ref.enable_padding(pad_id=ref.token_to_id("[PAD]"), pad_token="[PAD]")
    encs = ref.encode_batch(inputs)
    return torch.tensor([e.ids for e in encs]), torch.tensor([e.attention_mask for e in encs])


def _model(folder: Path, cls: str) -> Any:
    import torch
    import transformers

    torch.set_num_threads(1)
    model_class = getattr(transformers, cls)
    return model_class.from_pretrained(str(folder), attn_implementation="eager").eval()


def _served_scores(
    bundle: Path, classifier: Path, tokenizer_json: Path, labels: int
) -> tuple[Any, Any]:
    """transformers' logits for TEXTS, and the pinned worker's /predict raw scores [texts,
    labels] for them; asserts the worker mapped no numpy (nor anything forbidden)."""
    import torch

    ids, mask = _encode(tokenizer_json, list(TEXTS))
    with torch.inference_mode():
        logits = _model(classifier, "ModernBertForSequenceClassification")(
            input_ids=ids, attention_mask=mask
        ).logits.numpy()
    with Worker(bundle, entry=["-c", WRAPPER]) as w:
        status, got = w.request(
            "POST", "/predict", {"inputs": [[t] for t in TEXTS], "raw_scores": True}
        )
        assert status == 200
        w.terminate()
        assert w.wait() == 0
    found = re.search(r"^MODULES (.*)$", w.stderr_text(), re.M)
    assert found, w.stderr_text()
    top = {name.split(".")[0] for name in json.loads(found.group(1))}
    assert "numpy" not in top and not top & FORBIDDEN
    assert not top - WORKER_ALLOWED - {"runpy"}, sorted(top - WORKER_ALLOWED)
    scores = [
        [{r["label"]: r["score"] for r in row}[f"L{i}"] for i in range(labels)] for row in got
    ]
    return logits, np.array(scores)


@pytest.fixture(scope="module")
def embed_worker(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_json: Path
) -> Iterator[tuple[Worker, Path]]:
    from zerostart.model.convert import convert

    src = _folder(tmp_path_factory.mktemp("mb-embed"), "embeddings", tokenizer_json)
    (src / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )  # fmt: skip
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    out = tmp_path_factory.mktemp("bundles") / "mb-embed"
    m = convert(src, out)
    assert (m.architecture, m.task, m.pooling.mode, m.tokenizer.model) == (
        "modernbert", "embeddings", "mean", "BPE",
    )  # fmt: skip
    with Worker(out) as worker:
        yield worker, src
        worker.terminate()
        assert worker.wait() == 0


def test_embed_matches_transformers(
    embed_worker: tuple[Worker, Path], tokenizer_json: Path
) -> None:
    import torch

    w, src = embed_worker
    ids, mask = _encode(tokenizer_json, list(TEXTS))
    assert ids.shape[1] > 16  # the batch crosses the window
    with torch.inference_mode():
        hidden = _model(src, "ModernBertModel")(
            input_ids=ids, attention_mask=mask
        ).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    mean = (hidden * weights).sum(1) / weights.sum(1)
    want = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
    status, got = w.request("POST", "/embed", {"inputs": list(TEXTS)})
    assert status == 200
    worst = float(np.abs(np.array(got) - want).max())
    assert worst <= TOLERANCE, f"max |diff| {worst:.2e}"
    status, raw = w.request("POST", "/embed", {"inputs": list(TEXTS), "normalize": False})
    assert status == 200 and float(np.abs(np.array(raw) - mean.numpy()).max()) <= TOLERANCE
    status, info = w.request("GET", "/info")
    assert status == 200 and info["architecture"] == "modernbert"
    assert info["cpu_kernel_build"] is not None  # served on the native kernels


def test_predict_and_rerank_match_transformers_without_numpy(
    tmp_path: Path, tokenizer_json: Path
) -> None:
    """A classifier (/predict) and a one-label cross-encoder (/rerank), by the pinned worker."""
    import torch

    from zerostart.model.convert import convert

    classifier = _folder(
        tmp_path / "cls",
        "sequence-classification",
        tokenizer_json,
        classifier_pooling="mean",
        labels=3,
        seed=1,
    )
    reranker = _folder(tmp_path / "rr", "sequence-classification", tokenizer_json, labels=1, seed=2)
    convert(classifier, tmp_path / "cls-bundle")
    convert(reranker, tmp_path / "rr-bundle")
    logits, scores = _served_scores(tmp_path / "cls-bundle", classifier, tokenizer_json, 3)
    assert np.abs(scores - logits).max() <= TOLERANCE, (scores, logits)

    pair_ids, pair_mask = _encode(tokenizer_json, [(QUERY, t) for t in TEXTS])
    with torch.inference_mode():
        scores = _model(reranker, "ModernBertForSequenceClassification")(
            input_ids=pair_ids, attention_mask=pair_mask
        ).logits[:, 0]
    with Worker(tmp_path / "rr-bundle") as w:
        status, ranks = w.request(
            "POST", "/rerank", {"query": QUERY, "texts": list(TEXTS), "raw_scores": True}
        )
        assert status == 200
        assert [r["index"] for r in ranks] == torch.argsort(scores, descending=True).tolist()
        for r in ranks:
            assert abs(r["score"] - float(scores[r["index"]])) <= TOLERANCE
        w.terminate()
        assert w.wait() == 0


def test_served_ner_matches_the_transformers_pipeline(tmp_path: Path, tokenizer_json: Path) -> None:
    """/tokens of a ModernBERT tagger against transformers' token-classification pipeline."""
    import transformers

    from zerostart.model.convert import convert

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    src = _folder(tmp_path / "ner", "token-classification", tokenizer_json, labels=5, seed=3)
    edit = json.loads((src / "config.json").read_text())
    edit["id2label"] = dict(enumerate(labels))
    edit["label2id"] = {v: k for k, v in enumerate(labels)}
    (src / "config.json").write_text(json.dumps(edit))
    convert(src, tmp_path / "ner-bundle")
    model = _model(src, "ModernBertForTokenClassification")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), **SPECIALS)
    text = "Angela Merkel visited Paris and Zürich; unaffable Smith-Jones in São Paulo"
    with Worker(tmp_path / "ner-bundle") as w:
        for strategy in ("none", "simple", "first", "average", "max"):
            nlp = transformers.pipeline(
                "token-classification", model=model, tokenizer=fast, aggregation_strategy=strategy
            )
            want = nlp(text)
            status, got = w.request(
                "POST", "/tokens", {"inputs": text, "aggregation_strategy": strategy}
            )
            assert status == 200 and len(got) == len(want), (strategy, got, want)
            key = "entity" if strategy == "none" else "entity_group"
            for a, b in zip(got, want, strict=True):
                assert (a[key], a["word"], a["start"], a["end"]) == (
                    b[key], b["word"], b["start"], b["end"],
                ), strategy  # fmt: skip
                assert abs(a["score"] - float(b["score"])) <= TOLERANCE
        w.terminate()
        assert w.wait() == 0


def test_int8_bundle_is_served_without_numpy(tmp_path: Path, tokenizer_json: Path) -> None:
    """An int8 classifier (``convert --precision int8``; AVX-512 VNNI or AVX2 products) served
    by the pinned worker: transformers' labels, scores within 2 % of its largest logit."""

    from zerostart.engine.native import cpu_flags
    from zerostart.model.convert import convert

    classifier = _folder(
        tmp_path / "cls", "sequence-classification", tokenizer_json, labels=3, seed=4
    )
    m = convert(classifier, tmp_path / "q8", precision="int8")
    if not any(set(b.features) <= cpu_flags() for b in m.cpu_kernels.values()):
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: no int8 products")
    logits, scores = _served_scores(tmp_path / "q8", classifier, tokenizer_json, 3)
    assert np.abs(scores - logits).max() <= 0.02 * np.abs(logits).max(), (scores, logits)
    np.testing.assert_array_equal(scores.argmax(1), logits.argmax(1))
