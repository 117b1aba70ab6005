"""DeBERTa-v3 folders converted and served by a real worker: text in, transformers' answers out.

Two seeded random-weight models with the deberta-v3-layout tokenizer trained by
tests/deberta_models.py (SentencePiece Unigram, ``[CLS] A [SEP] B [SEP]``): an
NLI-style ``DebertaV2ForSequenceClassification`` behind ``/predict`` (single
texts and pairs), and a ``DebertaV2Model`` with sentence-transformers mean
pooling behind ``/embed``. The worker serves from the native kernels
(``NativeDebertaEngine``); the references are `tokenizers` on the same
tokenizer.json and transformers fp32 eager on its ids.
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
from test_server_imports import WRAPPER
from test_server_robustness import Worker

from deberta_models import deberta_tokenizer, tiny_deberta

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serve_imports import FORBIDDEN, WORKER_ALLOWED

pytestmark = [pytest.mark.integration, pytest.mark.parity]

TOLERANCE = 1e-4
TEXTS = (
    "A man is playing a guitar on stage.",
    "Grüße aus Köln, naïve café — 東京 👍🏽 Привет",
    "x",
    "The quick brown fox jumps over the lazy dog, and then it jumps again.",
)
PAIRS = [
    ["A man is playing a guitar.", "Someone is making music."],
    ["Paris is the capital of France.", "Berlin is in Germany."],
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    folder = tmp_path_factory.mktemp("deberta-tokenizer")
    return folder, deberta_tokenizer(folder)


def _folder(base: Path, task: str, tokenizer: tuple[Path, int]) -> tuple[Path, Any]:
    src = base / task
    model = tiny_deberta(src, task, vocab_size=tokenizer[1], seed=7)
    (src / "vocab.txt").unlink()
    for name in TOKENIZER_FILES:
        (src / name).write_bytes((tokenizer[0] / name).read_bytes())
    if task == "embeddings":
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
            json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
        )
    return src, model


@pytest.fixture(scope="module", params=["sequence-classification", "embeddings"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer_dir: tuple[Path, int],
) -> Iterator[tuple[Worker, Path, Any]]:
    """A worker that prints its sys.modules at exit (tests/integration/test_server_imports.py)."""
    from zerostart.model.convert import convert

    base = tmp_path_factory.mktemp("deberta")
    src, model = _folder(base, request.param, tokenizer_dir)
    manifest = convert(src, base / "bundle")
    assert manifest.architecture == "deberta-v2" and manifest.cpu_kernels
    with Worker(base / "bundle", entry=["-c", WRAPPER]) as worker:
        yield worker, src, model
        worker.terminate()
        worker.wait()


def _reference(src: Path, model: Any, items: list[Any]) -> tuple[Any, Any]:
    import tokenizers
    import torch

    ref = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    ref.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = ref.encode_batch(items)
    mask = torch.tensor([e.attention_mask for e in encs])
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([e.ids for e in encs]), attention_mask=mask)
    return out, mask


def test_answers_as_transformers_with_only_pinned_imports(
    served: tuple[Worker, Path, Any],
) -> None:
    """/predict (texts, pairs) or /embed as transformers; then, at exit, no numpy (nor
    anything unpinned) on the DeBERTa worker's path."""
    worker, src, model = served
    _check_answers(worker, src, model)
    worker.terminate()
    assert worker.wait() == 0
    found = re.search(r"^MODULES (.*)$", worker.stderr_text(), re.M)
    assert found, worker.stderr_text()
    top = {name.split(".")[0] for name in json.loads(found.group(1))}
    assert "numpy" not in top, "numpy is on the DeBERTa worker's path"
    assert not top & FORBIDDEN
    assert not top - WORKER_ALLOWED - {"runpy"}, sorted(top - WORKER_ALLOWED)


def _check_answers(worker: Worker, src: Path, model: Any) -> None:
    status, info = worker.request("GET", "/info")
    assert status == 200 and info["architecture"] == "deberta-v2"
    assert info["cpu_kernel_build"], "the worker must serve from the native kernels"
    if model.config.architectures[0].endswith("ForSequenceClassification"):
        for items in (list(TEXTS), [tuple(p) for p in PAIRS]):
            body = [[t] for t in items] if isinstance(items[0], str) else [list(p) for p in items]
            status, got = worker.request("POST", "/predict", {"inputs": body, "raw_scores": True})
            assert status == 200, got
            out, _ = _reference(src, model, list(items))
            want = out.logits.numpy()
            for row, logits in zip(got, want, strict=True):
                scores = {r["label"]: r["score"] for r in row}
                ours = np.array([scores[f"L{i}"] for i in range(len(logits))])
                assert float(np.abs(ours - logits).max()) <= TOLERANCE
                assert int(ours.argmax()) == int(logits.argmax())
        return
    status, got = worker.request("POST", "/embed", {"inputs": list(TEXTS), "normalize": False})
    assert status == 200, got
    out, mask = _reference(src, model, list(TEXTS))
    weights = mask.unsqueeze(-1).float()
    mean = ((out.last_hidden_state * weights).sum(1) / weights.sum(1)).numpy()
    worst = float(np.abs(np.array(got) - mean).max())
    assert worst <= TOLERANCE, f"max |diff| {worst:.2e}"
