"""The task heads against transformers on real models (this checks the heads only).

Each test feeds our head the model's own outputs, computed by transformers, plus
tokens/offsets from the ``tokenizers`` library, and compares with what the
transformers pipeline returns for the same text: entities, labels, words and
spans must be identical, scores within 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.tasks import aggregate_entities, classify, normalize, pool

pytestmark = pytest.mark.parity

SCORE_TOLERANCE = 1e-5
STRATEGIES = ("none", "simple", "first", "average", "max")

# Names, cities, emails, phone numbers, street addresses, and some with nothing personal.
NER_CORPUS = (
    "My name is Sarah Johnson and I live at 42 Baker Street, Springfield, IL 62704.",
    "Please email john.doe@example.com or call (555) 123-4567 before Friday.",
    "Contact Maria Garcia at maria.garcia@mailbox.org, phone +1 415 555 0199.",
    "Ship the package to 1600 Pennsylvania Avenue NW, Washington, DC 20500.",
    "Dr. Wei Zhang moved from Seattle to Boston last spring.",
    "The invoice was sent to Olivia Brown, 77 Elm Road, Apt 5B, Austin, TX 73301.",
    "Reach me on 020 7946 0958 or at jamie_smith99@gmail.com anytime.",
    "Hello, I'm Ahmed Hassan from Cairo, and my number is 555-867-5309.",
    "Our office is at 221B Baker St, London NW1 6XE.",
    "Kevin O'Brien and Siobhan Murphy live in Dublin.",
    "Send the contract to legal@acme-corp.co.uk by Monday.",
    "José Álvarez lives at Calle Mayor 10, Madrid.",
    "Call Priya Patel at 312-555-0147 about the Chicago apartment.",
    "Tom Müller, Hauptstraße 5, 10115 Berlin.",
    "The meeting with Emily Chen is in San Francisco at 500 Market Street.",
    "My SSN is 123-45-6789 and my passport number is X12345678.",
    "Visit https://www.example.org/contact or write to info@example.org.",
    "Anne-Marie Dupont habite 12 rue de Rivoli, Paris.",
    "Jean-Luc Picard can be reached at captain@enterprise.space.",
    "Liam Wilson, 9 Queen Street, Auckland 1010, New Zealand, +64 9 555 0100.",
    "Noah and Emma Thompson moved to 350 Fifth Avenue, New York, NY 10118.",
    "İstanbul is where Elif Şahin was born.",
    "Yuki Tanaka's email is yuki.tanaka@example.jp and she lives in Osaka.",
    "Forward this to Michael Rodriguez at mrodriguez@company.com, ext. 4421.",
    "Call 1-800-555-0199 to reach Customer Service in Denver, Colorado.",
    "Robert Kowalski lives at 18 Oak Lane, Portland, OR 97201.",
    "The weather was lovely and the train arrived on time.",
    "Nothing personal in this sentence at all.",
    "We shipped three boxes of apples yesterday.",
    "Please review the quarterly report before the meeting.",
    "Grace Lee (grace.lee@uni.edu, 617-555-0123) lives in Cambridge, MA 02139.",
    "Deliver to Fatima Zahra, 5 Avenue Mohammed V, Rabat ☃ 10000.",
    "Carlos Santana's number: +34 612 345 678, Barcelona.",
    # Decomposed accents: a token is shorter than the text it covers, so transformers calls
    # a word-initial token a subword ("is_subword = len(word) != len(word_ref)").
    "My friend Rene\u0301e Dubois moved to Montre\u0301al, Que\u0301bec.",
)
GRAMMAR_CORPUS = (
    "Their going too the store tomorow.",
    "She dont like apples, and he don't neither.",
    "i has three cat's and a dog named Rex.",
    "The weather in Paris was lovely, though their was too much traffic.",
    "We was planning to visit Montreal but it were cancelled.",
    "Everything in this sentence is fine.",
)
TEXT_CORPUS = (
    "I loved this film, it was wonderful.",
    "Terrible service and a rude waiter.",
    "The package arrived on Tuesday.",
    "You are an idiot and I will find you.",
    "Buy cheap watches now!!! Click here.",
    "",
    "a " * 40,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """The references run on a small shared box: one torch thread avoids oversubscription."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ner_reference(model_dir: Path) -> tuple[Any, Any, Any]:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return transformers, model, tok


def _logits(model: Any, ids: list[int], mask: list[int] | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        ids_t = torch.tensor([ids])
        mask_t = torch.tensor([mask if mask is not None else [1] * len(ids)])
        return np.asarray(model(input_ids=ids_t, attention_mask=mask_t).logits[0].numpy())


def _assert_same_entities(
    ours: list[dict[str, Any]], ref: list[dict[str, Any]], where: str
) -> None:
    assert len(ours) == len(ref), f"{where}: {len(ours)} entities vs {len(ref)}:\n{ours}\n{ref}"
    for a, b in zip(ours, ref, strict=True):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for key in b:
            if key == "score":
                assert type(a[key]) is float
                assert abs(a[key] - float(b[key])) <= SCORE_TOLERANCE, f"{where}: {a} vs {b}"
            else:
                assert a[key] == b[key], f"{where}: {key}: {a} vs {b}"


def _ours(
    text: str, enc: Any, logits: np.ndarray, labels: list[str], tok: Any, **options: Any
) -> list[dict[str, Any]]:
    """Our head on the reference's tokens/offsets and logits."""
    return aggregate_entities(
        text=text,
        tokens=enc.tokens,
        ids=enc.ids,
        offsets=enc.offsets,
        special_tokens_mask=enc.special_tokens_mask,
        logits=logits,
        labels=labels,
        tokens_to_string=tok.decoder.decode,
        **options,
    )


def test_aggregate_entities_matches_token_classification_pipeline(rampart_ner_dir: Path) -> None:
    transformers, model, tok = _ner_reference(rampart_ner_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    encoded = [(text, tok.encode(text)) for text in NER_CORPUS]
    logits = [_logits(model, enc.ids) for _, enc in encoded]
    per_strategy: dict[str, list[Any]] = {}
    for strategy in STRATEGIES:
        nlp = transformers.pipeline(
            "token-classification",
            model=model,
            tokenizer=str(rampart_ner_dir),
            aggregation_strategy=strategy,
        )
        results = []
        for (text, enc), text_logits in zip(encoded, logits, strict=True):
            ours = _ours(text, enc, text_logits, labels, tok, strategy=strategy)
            _assert_same_entities(ours, nlp(text), f"{strategy} {text!r}")
            results.append(
                [(e.get("entity_group") or e["entity"], e["word"], e["start"]) for e in ours]
            )
        per_strategy[strategy] = results
    # The corpus must exercise the code, or this test could not fail.
    found = {e[0].split("-")[-1] for row in per_strategy["simple"] for e in row}
    assert {"GIVEN_NAME", "SURNAME", "CITY", "EMAIL", "PHONE", "STREET_NAME"} <= found, found
    assert sum(map(len, per_strategy["none"])) >= 100
    assert any(not row for row in per_strategy["simple"]), "some sentences should have no entity"
    assert per_strategy["simple"] != per_strategy["first"], (
        "word strategies should differ somewhere"
    )


def test_aggregate_entities_on_a_cased_tagger_without_bio_labels(quire_tagger_dir: Path) -> None:
    """Quire's DistilBERT: cased WordPiece, 213 edit tags with no B-/I- prefixes."""
    transformers, model, tok = _ner_reference(quire_tagger_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    encoded = [(text, tok.encode(text)) for text in GRAMMAR_CORPUS]
    logits = [_logits(model, enc.ids) for _, enc in encoded]  # once, not once per strategy
    edits = 0
    for strategy in STRATEGIES:
        nlp = transformers.pipeline(
            "token-classification",
            model=model,
            tokenizer=str(quire_tagger_dir),
            aggregation_strategy=strategy,
        )
        for (text, enc), text_logits in zip(encoded, logits, strict=True):
            ours = _ours(
                text, enc, text_logits, labels, tok, strategy=strategy, ignore_labels=["$KEEP"]
            )
            _assert_same_entities(ours, nlp(text, ignore_labels=["$KEEP"]), f"{strategy} {text!r}")
            edits += len(ours)
    assert edits >= 20, "the grammar corpus should produce edits"


def test_aggregate_entities_with_custom_ignore_labels(rampart_ner_dir: Path) -> None:
    transformers, model, tok = _ner_reference(rampart_ner_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    nlp = transformers.pipeline(
        "token-classification",
        model=model,
        tokenizer=str(rampart_ner_dir),
        aggregation_strategy="simple",
    )
    for text in NER_CORPUS[:6]:
        enc = tok.encode(text)
        ours = _ours(text, enc, _logits(model, enc.ids), labels, tok, ignore_labels=["CITY"])
        _assert_same_entities(ours, nlp(text, ignore_labels=["CITY"]), f"ignore CITY {text!r}")
        assert any(e["entity_group"] == "O" for e in ours)


@pytest.mark.parametrize(
    ("model_fixture", "function_to_apply", "problem_type", "raw"),
    [
        ("minilm_sst2_dir", "softmax", "single_label_classification", False),
        ("minilm_sst2_dir", "none", "single_label_classification", True),
        ("minilm_multilabel_dir", "sigmoid", "multi_label_classification", False),
        ("minilm_multilabel_dir", "none", "regression", False),
    ],
)
def test_classify_matches_text_classification_pipeline(
    request: pytest.FixtureRequest,
    model_fixture: str,
    function_to_apply: str,
    problem_type: str,
    raw: bool,
) -> None:
    model_dir: Path = request.getfixturevalue(model_fixture)
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128; the pipeline does not pad one text
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    nlp = transformers.pipeline("text-classification", model=model, tokenizer=str(model_dir))
    orders = set()
    for text in TEXT_CORPUS:
        enc = tok.encode(text)
        ours = classify(_logits(model, enc.ids), labels, problem_type, raw_scores=raw)
        ref = nlp(text, top_k=None, function_to_apply=function_to_apply)
        assert [r["label"] for r in ours] == [r["label"] for r in ref], text
        for a, b in zip(ours, ref, strict=True):
            assert abs(a["score"] - b["score"]) <= SCORE_TOLERANCE, (text, ours, ref)
        orders.add(tuple(r["label"] for r in ours))
    assert len(orders) > 1, "the seeded head should rank labels differently across texts"


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_pool_and_normalize_match_sentence_transformers(minilm_embed_dir: Path, mode: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.AutoModel.from_pretrained(str(minilm_embed_dir)).eval()
    tok = tokenizers.Tokenizer.from_file(str(minilm_embed_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest: masking must hold
    encs = tok.encode_batch([*TEXT_CORPUS[:5], "short"])
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    assert int(mask.sum()) < mask.numel(), "the batch must contain padding"
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # sentence-transformers' Pooling (mean_tokens / cls_token) + Normalize, in torch
    if mode == "mean":
        weights = mask.unsqueeze(-1).expand(hidden.size()).float()
        ref = (hidden * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
    else:
        ref = hidden[:, 0]
    ref_norm = torch.nn.functional.normalize(ref, p=2, dim=1)

    ours = pool(hidden.numpy(), mask.numpy(), mode)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(normalize(ours), ref_norm.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normalize(ours), axis=1), 1.0, atol=1e-6)
