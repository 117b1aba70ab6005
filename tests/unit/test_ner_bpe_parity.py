"""NER aggregation over byte-level BPE tokens against transformers' token-classification pipeline.

A byte-level BPE tokenizer has no continuing-subword prefix, so transformers
tells subwords apart by its fallback heuristic (no space at or before the
token's start) instead of WordPiece's "##"; ``aggregate_entities(...,
word_aware=False)`` must do the same. Model: a seeded random
``RobertaForTokenClassification`` (BIO labels) with the RoBERTa-layout tokenizer
trained by tests/bpe_tokenizers.py; our head runs on `tokenizers`' tokens and
offsets and the model's logits, the reference is the pipeline itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bpe_tokenizers import trained
from zerostart.tasks import STRATEGIES, aggregate_entities

pytestmark = pytest.mark.parity

SCORE_TOLERANCE = 1e-5
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = [
    "Angela Merkel visited Paris and Zürich last week.",
    "unaffable preprocessing by Dr. Smith-Jones in São Paulo",
    "東京 and Köln, naïve café: e-mail first.last@example.com",
    "x",
]


def test_word_strategies_on_byte_level_bpe_match_the_pipeline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    shared = tmp_path_factory.getbasetemp() / "bpe-tokenizer"
    shared.mkdir(exist_ok=True)
    path = trained("roberta", shared)
    tok = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )  # fmt: skip
    torch.manual_seed(20261207)
    config = transformers.RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
        pad_token_id=1, id2label=dict(enumerate(LABELS)),
        label2id={v: k for k, v in enumerate(LABELS)},
    )  # fmt: skip
    model = transformers.RobertaForTokenClassification(config).eval()
    differs_if_word_aware = False
    for strategy in STRATEGIES:
        nlp = transformers.pipeline(
            "token-classification", model=model, tokenizer=fast, aggregation_strategy=strategy
        )
        for text in TEXTS:
            enc = tok.encode(text)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([enc.ids])).logits[0].numpy()

            def ours(
                word_aware: bool,
                text: str = text,
                strategy: str = strategy,
                enc: Any = enc,
                logits: np.ndarray = logits,
            ) -> Any:
                return aggregate_entities(
                    text=text,
                    tokens=enc.tokens,
                    ids=enc.ids,
                    offsets=enc.offsets,
                    special_tokens_mask=enc.special_tokens_mask,
                    logits=logits,
                    labels=LABELS,
                    strategy=strategy,
                    tokens_to_string=tok.decoder.decode,
                    unk_token="<unk>",
                    word_aware=word_aware,
                )

            got, want = ours(False), nlp(text)
            assert len(got) == len(want), f"{strategy} {text!r}:\n{got}\n{want}"
            for a, b in zip(got, want, strict=True):
                assert list(a) == list(b)
                for key in b:
                    if key == "score":
                        assert abs(a[key] - float(b[key])) <= SCORE_TOLERANCE, (a, b)
                    else:
                        assert a[key] == b[key], f"{strategy} {text!r} {key}: {a} vs {b}"
            differs_if_word_aware |= ours(True) != want
    assert differs_if_word_aware, "the corpus must tell the two subword rules apart"
